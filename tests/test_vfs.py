"""The namespace and the file reader without a mount (the tier between units and FUSE).

Real store, real LMDB; `Vfs` and `FileReader` called directly: inode numbers, the two paths
to one job, reads across chunk boundaries, the copier's hooks, and the errors a damaged or
silent store gives (typed, naming the path).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trees import rand_bytes, write_file

from c3fs.errors import BlobCorrupt, BlobMissing, BlobUnavailable, NotADirectory, NotFound
from c3fs.index import Location
from c3fs.jobs.push import push_dir
from c3fs.repo import Repo
from c3fs.store.backend import BackendError
from c3fs.store.store import Store
from c3fs.vfs import ROOT_INO, ROOT_KEY, Vfs, child_inos, child_key, ino_from_key, ino_of

KiB, MiB = 1024, 1024 * 1024
BIG = rand_bytes(3 * MiB, 7)  # many chunks


@pytest.fixture
def vfs(repo: Repo, tmp_path: Path) -> Vfs:
    src = tmp_path / "src"
    for sub in ("sub", "other"):
        (src / sub).mkdir(parents=True)
    write_file(src / "weights.bin", BIG)
    write_file(src / "sub" / "metrics.json", b'{"loss": 0.5}\n')
    write_file(src / "other" / "metrics.json", b'{"loss": 0.7}\n')
    push_dir(repo, src, "vision", "job_a")
    push_dir(repo, src, "nlp", "job_b")  # the same content under another job
    return Vfs(repo)


def test_one_node_on_both_paths_has_one_inode(vfs: Vfs, repo: Repo) -> None:
    for path in ("", "/weights.bin", "/sub", "/sub/metrics.json"):
        direct = vfs.resolve(f"/jobs/job_a{path}")
        listed = vfs.resolve(f"/projects/vision/jobs/job_a{path}")
        assert direct == listed, path
    again = Vfs(repo)  # a remount
    assert again.resolve("/jobs/job_a/sub/metrics.json").ino == vfs.resolve(
        "/jobs/job_a/sub/metrics.json").ino


def test_inodes_are_distinct_per_path(vfs: Vfs) -> None:
    paths = ["/", "/jobs", "/projects", "/projects/vision", "/jobs/job_a", "/jobs/job_b",
             "/jobs/job_a/sub/metrics.json", "/jobs/job_a/other/metrics.json",
             "/jobs/job_b/sub/metrics.json"]
    inos = [vfs.resolve(p).ino for p in paths]
    assert inos[0] == ROOT_INO and len(set(inos)) == len(inos)


def test_listings(vfs: Vfs) -> None:
    names = lambda path: [name for name, _ in vfs.children(vfs.resolve(path))]  # noqa: E731
    assert names("/") == [b"datasets", b"jobs", b"projects"]
    assert names("/jobs") == [b"job_a", b"job_b"]
    assert sorted(names("/projects")) == [b"nlp", b"vision"]
    assert names("/projects/nlp/jobs") == [b"job_b", b"latest"]  # latest: a symlink to job_b
    assert names("/jobs/job_a") == [b"other", b"sub", b"weights.bin"]
    walked = [node.display for node in vfs.walk(vfs.resolve("/jobs/job_a"))]
    assert walked == ["/jobs/job_a", "/jobs/job_a/other", "/jobs/job_a/other/metrics.json",
                      "/jobs/job_a/sub", "/jobs/job_a/sub/metrics.json", "/jobs/job_a/weights.bin"]


def test_record_listings_stream_and_page(vfs: Vfs, repo: Repo,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A /jobs/-like directory read a batch of records at a time: the same entries as
    `children`, in name order, the links among them; a page of it (the web view) holds the
    page only; a held listing's nodes carry no record (a mount of 100,000 jobs)."""
    import c3fs.repo as repomod

    monkeypatch.setattr(repomod, "RECORD_BATCH", 1)  # a seam between every two records
    for path in ("/jobs", "/projects/nlp/jobs", "/projects/vision/jobs", "/datasets"):
        node = vfs.resolve(path)
        held = vfs.children(node)
        assert [n for n, _ in vfs.iter_record_children(node)] == [n for n, _ in held]
        assert all(child.record is None for _, child in held)
        for start, stop in ((0, 1), (1, 2), (0, 5), (2, 9)):
            total, shown = vfs.children_slice(node, start, stop)
            assert (total, [n for n, _ in shown]) == (len(held), [n for n, _ in held[start:stop]])
    assert [n for n, _ in vfs.iter_record_children(vfs.resolve("/projects/nlp/jobs"))] == [
        b"job_b", b"latest"]
    assert [c.record.project for _, c in vfs.iter_record_children(vfs.resolve("/jobs"))] == [
        "vision", "nlp"]


def test_lookup_errors(vfs: Vfs) -> None:
    with pytest.raises(NotFound):
        vfs.resolve("/jobs/job_a/nope")
    with pytest.raises(NotFound):
        vfs.resolve("/projects/nlp/jobs/job_a")  # job_a is of project vision
    with pytest.raises(NotADirectory):
        vfs.resolve("/jobs/job_a/weights.bin/x")
    with pytest.raises(NotFound):
        vfs.open(vfs.resolve("/jobs/job_a/sub"))
    with pytest.raises(NotFound, match="'..' is not allowed"):
        vfs.resolve("/jobs/job_a/../job_b")


def test_reads_across_chunk_boundaries(vfs: Vfs) -> None:
    reader = vfs.open(vfs.resolve("/jobs/job_a/weights.bin"))
    assert len(reader.ids) > 4 and reader.size == len(BIG)
    for start in reader.starts[1:4]:
        assert reader.read(start - 10, 20) == BIG[start - 10 : start + 10]
    assert reader.read(0, len(BIG) + 100) == BIG
    assert reader.read(len(BIG), 10) == b""
    assert b"".join(reader.chunk(i) for i in range(len(reader.ids))) == BIG


def test_read_cached_never_fetches(vfs: Vfs) -> None:
    reader = vfs.open(vfs.resolve("/jobs/job_a/sub/metrics.json"))
    assert reader.read_cached(0, 100) is None
    assert reader.read(0, 100) == b'{"loss": 0.5}\n'
    assert reader.read_cached(0, 100) == b'{"loss": 0.5}\n'


def test_the_next_step_of_a_series_finds_its_shared_chunks_cached(
        store_env, tmp_path: Path) -> None:
    """Two steps of a checkpoint series (the second the first with one region rewritten),
    read one after the other through a cache smaller than one step: most of the second's
    chunks are the first's, and a good part of them are still cached. With an LRU none
    were: each miss evicted the oldest chunk, the one wanted next."""
    step = rand_bytes(6 * MiB, 11)
    src = tmp_path / "series"
    src.mkdir()
    write_file(src / "step_0.bin", step)
    write_file(src / "step_1.bin", step[: 3 * MiB] + rand_bytes(256 * KiB, 12) + step[3 * MiB + 256 * KiB :])
    repo = Repo.open(str(store_env.store), cache_bytes=5 * MiB)
    try:
        push_dir(repo, src, "vision", "job_series")
        vfs = Vfs(repo)
        first = vfs.open(vfs.resolve("/jobs/job_series/step_0.bin"), readahead=0)
        second = vfs.open(vfs.resolve("/jobs/job_series/step_1.bin"), readahead=0)
        assert first.read(0, len(step)) == step
        shared = [i for i, c in enumerate(second.ids) if c in set(first.ids)]
        assert len(shared) > 0.8 * len(second.ids) > 20
        found = 0
        for i in range(len(second.ids)):
            found += i in shared and repo.blobs.peek(second.ids[i]) is not None
            second.chunk(i)
        assert found > 0.25 * len(shared)
    finally:
        repo.close()


def test_the_copiers_hooks(vfs: Vfs, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reuse` is asked first; `remember=False` leaves fetched chunks out of the LRU."""
    node = vfs.resolve("/jobs/job_a/weights.bin")
    fetched: list[bytes] = []
    real_fetch = repo.blobs._fetch
    monkeypatch.setattr(repo.blobs, "_fetch", lambda b: fetched.append(b) or real_fetch(b))
    first = vfs.open(node, readahead=0, remember=False)
    wanted = {first.ids[0]: first.chunk(0)}
    assert repo.blobs.peek(first.ids[0]) is None and fetched == [first.ids[0]]
    reused = vfs.open(node, readahead=0, remember=False, reuse=wanted.get)
    assert reused.chunk(0) == BIG[: reused.starts[1]] and len(fetched) == 1
    assert reused.chunk(1) == BIG[reused.starts[1] : reused.starts[2]] and len(fetched) == 2


def test_a_corrupt_chunk_is_typed_and_names_the_path(vfs: Vfs, repo: Repo,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reader = vfs.open(vfs.resolve("/jobs/job_a/weights.bin"))
    bad = reader.ids[1]
    real_read = Store.read

    def flipped(store: Store, pack_id: str, offset: int, length: int) -> bytes:
        data = real_read(store, pack_id, offset, length)
        loc = repo.index.lookup(bad)
        return bytes([data[0] ^ 1]) + data[1:] if (pack_id, offset) == (loc.pack_id, loc.offset) else data

    monkeypatch.setattr(Store, "read", flipped)
    with pytest.raises(BlobCorrupt) as info:
        reader.read(reader.starts[1], 10)
    assert info.value.blob_id == bad and info.value.pack_id == repo.index.lookup(bad).pack_id
    named = info.value.reading("/jobs/job_a/weights.bin")
    assert isinstance(named, BlobCorrupt) and named.blob_id == bad
    assert str(named).startswith(f"cannot read /jobs/job_a/weights.bin: blob {bad.hex()} is corrupt")
    assert named.reading("/jobs/job_a") is named  # the deepest path stays
    assert info.value.path is None  # the original is unchanged (other readers share it)


def test_a_store_that_does_not_answer_is_unavailable(vfs: Vfs, repo: Repo,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Not missing, not repaired: the index is not touched, the error says the store."""
    reader = vfs.open(vfs.resolve("/jobs/job_a/weights.bin"), readahead=0)

    def silent(store: Store, pack_id: str, offset: int, length: int) -> bytes:
        raise BackendError("connection refused")

    monkeypatch.setattr(Store, "read", silent)
    repaired: list[bytes] = []
    monkeypatch.setattr(repo.blobs, "_repair", lambda b: repaired.append(b) or False)
    with pytest.raises(BlobUnavailable, match="is unavailable in pack .*: connection refused"):
        reader.read(0, 10)
    assert repaired == []


@pytest.mark.logs("the index had a wrong entry")
def test_a_blob_the_index_does_not_know_is_missing(vfs: Vfs, repo: Repo,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    reader = vfs.open(vfs.resolve("/jobs/job_a/weights.bin"), readahead=0)
    real_lookup = repo.index.lookup
    gone = reader.ids[0]
    monkeypatch.setattr(repo.index, "lookup",
                        lambda b: None if b == gone else real_lookup(b))
    with pytest.raises(BlobMissing) as info:
        reader.read(0, 10)
    assert info.value.blob_id == gone and not isinstance(info.value, BlobUnavailable)
    assert isinstance(real_lookup(gone), Location)


def test_a_lookup_in_a_big_directory_decodes_a_few_names_and_one_entry(
        repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree stays encoded: a lookup bisects its names (O(log n) small decodes) and
    decodes the entry it finds, never the whole directory (it did: 150 ms for the last entry
    of a directory of 100,000 once its tree had left a cache of decoded trees)."""
    from c3fs.objects import tree as tree_module

    src = tmp_path / "src" / "wide"
    src.mkdir(parents=True)
    for i in range(20_000):
        write_file(src / f"f{i:05d}", b"%d\n" % i)
    push_dir(repo, tmp_path / "src", "scale", "wide")
    counted = {"names": 0, "entries": 0, "runs": 0, "whole": 0}
    for method, key in (("name", "names"), ("_decode", "entries"), ("run", "runs")):
        real = getattr(tree_module.EncodedTree, method)
        monkeypatch.setattr(tree_module.EncodedTree, method,
                            lambda self, *a, _real=real, _key=key, **k: (
                                counted.__setitem__(_key, counted[_key] + 1), _real(self, *a, **k))[1])
    real_decode = tree_module.decode_tree
    monkeypatch.setattr(tree_module, "decode_tree", lambda data: (
        counted.__setitem__("whole", counted["whole"] + 1), real_decode(data))[1])
    vfs = Vfs(repo)
    wide = vfs.resolve("/jobs/wide/wide")
    repo.blobs._cache.clear()  # nothing cached: the tree is read again
    before = dict(counted)
    node = vfs.lookup(wide, b"f19999")
    assert node.size == 6 and vfs.open(node).read(0, 10) == b"19999\n"
    assert counted["names"] - before["names"] <= 16  # log2(20,000) + 1
    assert counted["entries"] - before["entries"] == 1
    assert counted["runs"] == before["runs"] and counted["whole"] == 0
    with pytest.raises(NotFound):
        vfs.lookup(wide, b"f20000")
    assert len(repo.blobs.cached_tree(wide.tree_id)) == 20_000  # kept, encoded


def test_inode_numbers_of_a_run_are_each_paths() -> None:
    """`child_inos` (readdir's run at once) gives what `ino_of` gives each path."""
    key = child_key(child_key(ROOT_KEY, b"jobs"), b"j")
    names = [b"a", b"b" * 255, "é".encode(), *(b"f%05d" % i for i in range(300))]
    assert child_inos(key, names) == [ino_of((b"jobs", b"j", name)) for name in names]
    assert child_inos(key, names) == [ino_from_key(child_key(key, name)) for name in names]
    assert child_inos(key, []) == []
