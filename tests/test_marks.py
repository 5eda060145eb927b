"""The mark set of gc and verify (c3fs/index/marks.py): a set of blob ids that moves to a
hash table in an unnamed file past a threshold, so their memory does not grow with the
store (issue 16). The 200,000-file bound: tests/test_scale.py."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from c3fs.index import marks
from c3fs.index.marks import MarkSet


def ids(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


@pytest.mark.parametrize("first", [marks._FIRST, 16])
def test_a_mark_set_is_a_set_before_and_after_it_moves_to_a_file(tmp_path: Path, monkeypatch,
                                                                 first: int) -> None:
    """(A first table of 16 slots: made 4x larger 6 times on the way to 20,000 ids.)"""
    monkeypatch.setattr(marks, "_FIRST", first)
    kept = ids(20_000, 1)
    with MarkSet(spill=100, where=tmp_path) as seen:
        assert seen.mark(bytes(32)) and not seen.mark(bytes(32))  # the zero id: kept apart
        for n, blob_id in enumerate(kept):
            assert seen.mark(blob_id)
            if n == 100:
                assert seen.spilled and not seen.mark(kept[0])
        assert seen.spilled and len(seen) == 20_001
        assert all(blob_id in seen for blob_id in kept) and bytes(32) in seen
        assert not any(blob_id in seen for blob_id in ids(20_000, 2))
        assert not any(seen.mark(blob_id) for blob_id in kept[::7])
        assert len(seen) == 20_001 and sorted(seen) == sorted([bytes(32), *kept])
        assert os.listdir(tmp_path) == []  # the table's file has no name


def test_ids_that_collide_in_the_table_are_each_found(tmp_path: Path) -> None:
    """Ids with the same first 8 bytes (the hash) probe the next slots, across the end."""
    top = (marks._FIRST - 1).to_bytes(8, "little")
    same = [top + bytes([n]) * 24 for n in range(1, 50)]
    with MarkSet(spill=0, where=tmp_path) as seen:
        assert all(seen.mark(blob_id) for blob_id in same)
        assert all(blob_id in seen for blob_id in same)
        assert top + bytes(24) not in seen and len(seen) == 49


def test_threads_mark_each_id_once(tmp_path: Path) -> None:
    shared = ids(30_000, 3)
    new = [0] * 4

    def work(n: int) -> None:
        new[n] = sum(seen.mark(blob_id) for blob_id in shared)

    with MarkSet(spill=1_000, where=tmp_path) as seen:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(new) == 30_000 and len(seen) == 30_000


def test_a_mark_is_a_blob_id(tmp_path: Path) -> None:
    with MarkSet(where=tmp_path) as seen, pytest.raises(ValueError, match="32-byte id"):
        seen.mark(b"short")


def test_gc_and_verify_with_their_marks_on_disk(repo, tmp_path: Path, monkeypatch) -> None:
    """gc keeps every blob a job reaches and drops the rest, verify checks each blob once,
    whether the marks are a set or a table on disk."""
    from c3fs.jobs.maintenance import gc, verify
    from c3fs.jobs.push import push_dir

    for name in ("a", "b"):
        src = tmp_path / name
        for d in range(4):
            (src / f"d{d}").mkdir(parents=True)
            for i in range(50):
                (src / f"d{d}" / f"f{i}").write_bytes(b"%s %d %d" % (name.encode(), d, i))
        (src / "d0" / "shared").write_bytes(b"in both")
        push_dir(repo, src, "p", f"job_{name}")
    in_memory = verify(repo)
    assert in_memory.ok and in_memory.blobs == 2 * (1 + 4 + 200) + 1
    monkeypatch.setattr(marks, "SPILL", 8)
    on_disk = verify(repo)
    assert on_disk.ok and (on_disk.blobs, on_disk.bytes) == (in_memory.blobs, in_memory.bytes)
    repo.store.delete_ref("job", "job_b")
    report = gc(repo)
    assert report.packs_deleted + report.packs_repacked >= 1
    after = verify(repo)
    assert after.ok and after.blobs == 1 + 4 + 200 + 1 and after.bytes < in_memory.bytes


def test_gc_repacks_with_its_marks_on_disk(repo, store_env, monkeypatch) -> None:
    """A pack of 60 chunks, 30 of them in no tree: gc copies the live ones and the tree
    (listed again from the index when the pack is repacked) and drops the others."""
    import msgspec
    from crafted import craft_job

    from c3fs.jobs.maintenance import gc, verify
    from c3fs.objects.pack import CHUNK, TREE
    from c3fs.objects.tree import FILE

    live: list[bytes] = []
    dead: list[bytes] = []

    def build(add) -> bytes:
        entries = []
        for n in range(60):
            plain = b"chunk %d" % n
            (live if n % 2 else dead).append(add(CHUNK, plain))
            if n % 2:
                entries.append([b"f%02d" % n, FILE, 0o644, len(plain), 0, b"", live[-1],
                                [len(plain)]])
        return add(TREE, msgspec.msgpack.encode([1, entries]))

    craft_job(store_env.store, "half", build, project="p")
    monkeypatch.setattr(marks, "SPILL", 8)
    report = gc(repo)
    assert (report.packs_repacked, report.packs_written, report.packs_deleted) == (1, 1, 0)
    assert all(repo.index.lookup(blob_id) is None for blob_id in dead)
    assert all(repo.index.lookup(blob_id) is not None for blob_id in live)
    after = verify(repo)
    assert after.ok and after.blobs == 31
