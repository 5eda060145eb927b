"""Ingest and read round trips: `c3fs push` then `c3fs cp -r` must give back the same tree.

Compared entry by entry: bytes (sha256), permission bits, mtime_ns, symlink targets. Also
random-offset reads through Vfs/FileReader, and dedup measured from `push --json`.
"""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import pytest
import trees
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trees import KiB, Meta, MiB

from c3fs.jobs.push import push_dir
from c3fs.objects.job import JOB
from c3fs.reader import BlobSource
from c3fs.repo import Repo
from c3fs.vfs import Vfs


def push(run_cli, src: Path | str, *extra: str, project: str = "proj") -> dict:
    result = run_cli(["push", str(src), "-p", project, "--json", *extra])
    assert result.code == 0, result.err
    return json.loads(result.out)


def copy_out(run_cli, job_id: str, dst: Path, sub: str = "") -> object:
    result = run_cli(["cp", "-r", "--keep-setuid", f"/jobs/{job_id}{sub}", str(dst)])
    assert result.code == 0, result.err
    return result


def assert_same_tree(src: Path | bytes, dst: Path | bytes, link_mtimes: bool = True,
                     setuid: bool = True) -> dict:
    """`setuid=False`: as a copy without --keep-setuid makes it (no setuid, setgid, sticky)."""
    snap = trees.snapshot(src, link_mtimes)
    want = trees.without_special(snap) if setuid else trees.as_copied(snap)
    got = trees.snapshot(dst, link_mtimes)
    assert trees.diff(want, got) == []
    return want


def regular_files(snap: dict[bytes, Meta]) -> list[Meta]:
    return [m for m in snap.values() if m.kind == "file"]


# ---- round trips -----------------------------------------------------------------------------
def test_roundtrip_odd_names_modes_mtimes_and_links(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    record = push(run_cli, src)
    copy_out(run_cli, record["id"], tmp_path / "dst")
    snap = assert_same_tree(src, tmp_path / "dst")
    files = regular_files(snap)
    assert record["files"] == len(files)
    assert record["logical_bytes"] == sum(m.size for m in files)  # /etc/passwd not included
    assert os.path.islink(tmp_path / "dst" / "links" / "to-dir")
    assert os.readlink(tmp_path / "dst" / "links" / "slash") == "/"


def test_symlink_mtimes_are_restored(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.make_symlink("target", src / "link", trees.BASE_NS + 5)
    trees.make_symlink("/etc", src / "abs", trees.BASE_NS + 6)
    record = push(run_cli, src)
    copy_out(run_cli, record["id"], tmp_path / "dst")
    assert_same_tree(src, tmp_path / "dst", link_mtimes=True)


def test_ls_shows_metadata_as_stored(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    record = push(run_cli, src)
    result = run_cli(["ls", "--json", f"/jobs/{record['id']}/links"])
    assert result.code == 0, result.err
    items = {item["name"]: item for item in json.loads(result.out)["entries"]}
    assert items["absolute-outside"]["type"] == "symlink"
    assert items["absolute-outside"]["target"] == "/etc/passwd"
    assert items["dangling"]["target"] == "does/not/exist"
    assert items["non-utf8-target"]["target"] == "\\xfe\\xff target"
    result = run_cli(["ls", "--json", f"/jobs/{record['id']}"])
    items = {item["name"]: item for item in json.loads(result.out)["entries"]}
    assert items["exec.sh"]["mode"] == 0o755 and items["exec.sh"]["type"] == "file"
    assert items["before-1970"]["mtime_ns"] == -1_500_000_000_123
    assert items["year-2096"]["mtime_ns"] == 4_000_000_000_123_456_789
    assert items["\\xff\\xfe-not-utf8-\\x80"]["size"] == 3 * len(b"\xff\xfe-not-utf8-\x80")
    assert items["x" * 255]["size"] == 255 * 3
    assert items["empty"]["size"] == 0 and items["empty-dir"]["type"] == "dir"
    result = run_cli(["ls", f"/jobs/{record['id']}"])
    assert "-rf" in result.out.splitlines() and "ro-dir/" in result.out.splitlines()


def test_copy_of_one_file_and_of_a_subdir(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    job = push(run_cli, src)["id"]
    (tmp_path / "one").mkdir()
    result = run_cli(["cp", f"/jobs/{job}/exec.sh", str(tmp_path / "one")])
    assert result.code == 0, result.err
    copied = (tmp_path / "one" / "exec.sh").stat()
    assert (copied.st_mode & 0o7777, copied.st_mtime_ns) == (0o755, trees.BASE_NS + 7)
    assert (tmp_path / "one" / "exec.sh").read_bytes() == (src / "exec.sh").read_bytes()
    sub = os.fsdecode(b"/odd dir \xff")
    copy_out(run_cli, job, tmp_path / "sub", sub)
    assert_same_tree(os.path.join(os.fsencode(src), b"odd dir \xff"), tmp_path / "sub")
    result = run_cli(["cp", f"/projects/proj/jobs/{job}/random.bin", str(tmp_path / "r.bin")])
    assert result.code == 0, result.err
    assert (tmp_path / "r.bin").read_bytes() == (src / "random.bin").read_bytes()


def test_copy_again_skips_unchanged_files(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    job = push(run_cli, src)["id"]
    copy_out(run_cli, job, tmp_path / "dst")
    (tmp_path / "dst" / "exec.sh").write_bytes(b"changed locally")
    result = copy_out(run_cli, job, tmp_path / "dst")
    files = len(regular_files(trees.snapshot(src)))
    assert "1 file copied" in result.err and f"{files - 1} unchanged" in result.err
    assert_same_tree(src, tmp_path / "dst")


@pytest.mark.logs("not a regular file")
def test_special_files_are_skipped_with_a_warning(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / "kept", b"kept")
    special = trees.add_special_files(src)
    result = run_cli(["push", str(src), "-p", "proj", "--json"])
    assert result.code == 0, result.err
    warnings = [line for line in result.err_lines if line.startswith("c3fs: warning: skipping")]
    assert len(warnings) == len(special), result.err
    for name in special:
        assert any(name.decode() in line for line in warnings)
    record = json.loads(result.out)
    assert record["files"] == 1
    copy_out(run_cli, record["id"], tmp_path / "dst")
    assert sorted(os.listdir(tmp_path / "dst")) == ["kept"]


def test_empty_job(run_cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    record = push(run_cli, tmp_path / "empty", "-j", "empty_job")
    assert (record["files"], record["logical_bytes"]) == (0, 0)
    result = run_cli(["ls", "/jobs/empty_job"])
    assert result.code == 0 and result.out == ""
    copy_out(run_cli, "empty_job", tmp_path / "dst")
    assert os.listdir(tmp_path / "dst") == []
    again = push(run_cli, tmp_path / "empty", "-j", "empty_job_2")
    assert again["stored_delta"] == 0 and again["root"] == record["root"]


def test_empty_files_only(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    for name in ("z", "a/y", "a/b/x"):
        trees.write_file(src / name, b"", 0o600, trees.BASE_NS)
    trees.set_dir_mtimes(src)
    record = push(run_cli, src)
    assert (record["files"], record["logical_bytes"]) == (3, 0)
    copy_out(run_cli, record["id"], tmp_path / "dst")
    assert_same_tree(src, tmp_path / "dst")


def test_deep_nesting(run_cli, tmp_path: Path) -> None:
    depth = 300
    src = tmp_path / "src"
    deepest = trees.deep_tree(src, depth)
    record = push(run_cli, src)
    assert record["files"] == depth
    copy_out(run_cli, record["id"], tmp_path / "dst")
    assert_same_tree(src, tmp_path / "dst")
    rel = os.fsdecode(os.path.relpath(deepest, os.fsencode(src)))
    result = run_cli(["ls", "-l", f"/jobs/{record['id']}/{rel}"])
    assert result.code == 0, result.err
    assert result.out.split()[-1] == "f"


def test_roundtrip_through_the_installed_command(c3fs_bin, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    trees.add_special_files(src / "links")
    pushed = c3fs_bin("push", str(src), "-p", "proj", "-j", "e2e")
    assert pushed.code == 0, pushed.err
    assert pushed.out.strip() == "e2e"
    assert "Traceback" not in pushed.err
    copied = c3fs_bin("cp", "-r", "/jobs/e2e/", str(tmp_path / "dst"))
    assert copied.code == 0, copied.err
    assert_same_tree(src, tmp_path / "dst", setuid=False)


@pytest.mark.slow
def test_large_file_over_100_mib(c3fs_bin, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_random_file(src / "weights.bin", 110 * MiB + 12345, seed=3)
    trees.write_file(src / "checkpoint.txt", b"epoch 1\n" * (2 * MiB), 0o644, trees.BASE_NS)
    pushed = c3fs_bin("push", str(src), "-p", "proj", "-j", "big", "--json")
    assert pushed.code == 0, pushed.err
    record = json.loads(pushed.out)
    assert record["logical_bytes"] == 110 * MiB + 12345 + 16 * MiB
    assert record["stored_delta"] < 110 * MiB + 12345 + 2 * MiB  # random: raw; text: zstd
    copied = c3fs_bin("cp", "-r", "/jobs/big", str(tmp_path / "dst"))
    assert copied.code == 0, copied.err
    assert_same_tree(src, tmp_path / "dst")


@pytest.mark.slow
def test_ten_thousand_small_files(run_cli, store_env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.many_files(src, 10_000)
    record = push(run_cli, src)
    assert record["files"] == 10_000
    packs = list((store_env.store / "packs").rglob("*"))
    assert len([p for p in packs if p.is_file()]) <= 4  # a handful of objects, not 10,000
    copy_out(run_cli, record["id"], tmp_path / "dst")
    assert_same_tree(src, tmp_path / "dst")


# ---- random reads through Vfs / FileReader -----------------------------------------------
@pytest.fixture(scope="module")
def pushed_file(tmp_path_factory: pytest.TempPathFactory):
    """A ~5 MiB file (random and repetitive regions) pushed into a store of its own."""
    root = tmp_path_factory.mktemp("reads")
    rng = random.Random(11)
    parts = [rng.randbytes(1536 * KiB), b"loss=0.25\n" * 150_000, rng.randbytes(2 * MiB + 7)]
    data = b"".join(parts)
    (root / "src").mkdir()
    trees.write_file(root / "src" / "model.bin", data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("C3FS_CACHE_DIR", str(root / "cache"))
        repo = Repo.open(str(root / "store"))
        push_dir(repo, root / "src", "proj", "reads")
    vfs = Vfs(repo)
    node = vfs.resolve("/jobs/reads/model.bin")
    assert len(node.entry.sizes) > 10, "want many chunks"
    yield vfs, node, data
    repo.close()


READS = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@READS
@given(st.data())
def test_random_offset_reads_match_source(pushed_file, draw: st.DataObject) -> None:
    vfs, node, data = pushed_file
    reader = vfs.open(node)
    for _ in range(draw.draw(st.integers(1, 4))):
        offset = draw.draw(st.integers(0, len(data) + 100))
        size = draw.draw(st.integers(0, 2 * MiB))
        assert reader.read(offset, size) == data[offset : offset + size]


@READS
@given(st.data())
def test_reads_as_views_match_source(pushed_file, draw: st.DataObject) -> None:
    """`view=True` (the mount's replies): a range inside one chunk is a memoryview of the
    decoded chunk, not a copy; any range has the same bytes as a plain read."""
    vfs, node, data = pushed_file
    reader = vfs.open(node)
    offset = draw.draw(st.integers(0, len(data) + 100))
    size = draw.draw(st.integers(0, 2 * MiB))
    got = reader.read(offset, size, view=True)
    assert bytes(got) == data[offset : offset + size]
    cached = reader.read_cached(offset, size, view=True)
    assert cached is None or bytes(cached) == data[offset : offset + size]


def test_a_read_inside_one_chunk_is_not_copied(pushed_file) -> None:
    vfs, node, data = pushed_file
    reader = vfs.open(node)
    start, end = reader.starts[1], reader.starts[2]
    view = reader.read(start + 10, end - start - 20, view=True)
    assert isinstance(view, memoryview) and view.obj is reader.chunk(1)
    assert bytes(view) == data[start + 10 : end - 10]
    assert isinstance(reader.read(start + 10, 5), bytes)  # callers that want bytes get bytes


@READS
@given(st.integers(1, 300 * KiB))
def test_sequential_reads_with_readahead(pushed_file, step: int) -> None:
    vfs, node, data = pushed_file
    reader = vfs.open(node, readahead=4)
    pieces, offset = [], 0
    while offset < len(data) and len(pieces) < 60:
        pieces.append(reader.read(offset, step))
        offset += step
    assert b"".join(pieces) == data[:offset]


def test_chunk_boundaries_and_whole_file(pushed_file) -> None:
    vfs, node, data = pushed_file
    reader = vfs.open(node)
    assert b"".join(reader.chunk(i) for i in range(len(reader.ids))) == data
    for start in reader.starts:
        for delta in (-1, 0, 1):
            offset = max(start + delta, 0)
            assert reader.read(offset, 3) == data[offset : offset + 3]
    assert reader.read(len(data), 10) == b"" and reader.read(0, 0) == b""


def test_concurrent_reads_with_a_tiny_cache(pushed_file) -> None:
    """Many threads, a cache smaller than two chunks: merged fetches and eviction stay right."""
    vfs, node, data = pushed_file
    repo = vfs.repo
    blobs = BlobSource(repo.store, repo.index, cache_bytes=256 * KiB, workers=3)
    small = Vfs(Repo(repo.store, repo.index, blobs))
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        reader = small.open(node, readahead=2)
        for _ in range(40):
            offset, size = rng.randrange(len(data)), rng.randrange(1, 400 * KiB)
            if reader.read(offset, size) != data[offset : offset + size]:
                errors.append(f"seed {seed}: read({offset}, {size}) differs")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blobs.close()
    assert errors == []


# ---- chunking -----------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 5 * MiB), block=st.sampled_from([1, 3, 8]), seed=st.integers(0, 2**16))
def test_cuts_are_fastcdc_stream_cuts_whatever_the_read_block(repo, monkeypatch, tmp_path: Path,
                                                              size: int, block: int, seed: int) -> None:
    """Push reads large files in blocks and carries the undecided tail over; the chunks must
    be exactly those of FastCDC's stream cutter, or stores written before would stop deduping."""
    import pyfastcdc

    import c3fs.ingest as ingest

    monkeypatch.setattr(ingest, "READ_BLOCK", block * MiB)
    rng = random.Random(seed)
    data = b"".join(rng.randbytes(300 * KiB) + b"epoch=1 loss=0.5\n" * rng.randrange(1, 9000)
                    for _ in range(1 + size // (400 * KiB)))[:size]
    src = tmp_path / f"src{seed}-{size}-{block}"
    src.mkdir()
    trees.write_file(src / "weights.bin", data)
    record = push_dir(repo, src, "proj", f"cut{seed}-{size}-{block}")
    entry = Vfs(repo).resolve(f"/jobs/{record.id}/weights.bin").entry
    c = repo.store.config
    with open(src / "weights.bin", "rb") as f:
        want = [chunk.length for chunk in pyfastcdc.FastCDC(
            c.chunk_avg, min_size=c.chunk_min, max_size=c.chunk_max).cut_stream(f)]
    assert list(entry.sizes) == want
    assert Vfs(repo).open(Vfs(repo).resolve(f"/jobs/{record.id}/weights.bin")).read(0, size + 1) == data


# ---- dedup ------------------------------------------------------------------------------------
def test_same_tree_twice_adds_almost_nothing(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    trees.odd_tree(src)
    trees.write_random_file(src / "weights.bin", 3 * MiB, seed=5)
    first = push(run_cli, src)
    assert first["stored_delta"] > 3 * MiB
    second = push(run_cli, src)
    assert second["stored_delta"] <= 4 * KiB
    assert second["root"] == first["root"]
    os.utime(src / "links", ns=(trees.BASE_NS + 777, trees.BASE_NS + 777))  # a tree changes
    third = push(run_cli, src)
    assert third["root"] != first["root"]
    assert 0 < third["stored_delta"] <= 16 * KiB


def test_ten_percent_changed_regions_add_about_ten_percent(run_cli, tmp_path: Path) -> None:
    size, region = 20 * MiB, MiB
    rng = random.Random(21)
    data = bytearray(rng.randbytes(size))
    (tmp_path / "v1").mkdir()
    trees.write_file(tmp_path / "v1" / "ckpt.bin", bytes(data))
    first = push(run_cli, tmp_path / "v1")
    assert first["stored_delta"] >= size  # random bytes do not compress
    for index in rng.sample(range(size // region), size // region // 10):
        data[index * region : (index + 1) * region] = rng.randbytes(region)
    (tmp_path / "v2").mkdir()
    trees.write_file(tmp_path / "v2" / "ckpt.bin", bytes(data))
    second = push(run_cli, tmp_path / "v2")
    ratio = second["stored_delta"] / size
    assert 0.09 < ratio < 0.25, f"10% of regions changed, {ratio:.1%} newly stored"
    copy_out(run_cli, second["id"], tmp_path / "back")
    assert (tmp_path / "back" / "ckpt.bin").read_bytes() == bytes(data)
    copy_out(run_cli, first["id"], tmp_path / "back1")
    assert (tmp_path / "back1" / "ckpt.bin").read_bytes() == (tmp_path / "v1" / "ckpt.bin").read_bytes()


def test_identical_files_within_one_push_are_stored_once(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    blob = trees.rand_bytes(2 * MiB, 9)
    for i in range(5):
        (src / f"d{i}").mkdir()
        trees.write_file(src / f"d{i}" / "same.bin", blob)
    record = push(run_cli, src)
    assert record["logical_bytes"] == 10 * MiB
    assert record["stored_delta"] < 2 * MiB + 64 * KiB


def test_small_files_stored_a_batch_at_a_time_and_large_files_one_ring(repo, monkeypatch,
                                                                       tmp_path: Path) -> None:
    """Small files are hashed, looked up and compressed a batch at a time: copies within one
    batch are stored once, empty files not at all. Large files of one thread reuse its read
    buffers from file to file (smaller, then bigger, with carries of every size) and hash
    their digest in another thread: every file must come back whole, with its digest."""
    import blake3

    import c3fs.ingest as ingest

    monkeypatch.setattr(ingest, "READ_BLOCK", 2 * MiB)  # many blocks, and carries, per file
    src = tmp_path / "src"
    (src / "small").mkdir(parents=True)
    (src / "large").mkdir()
    rng = random.Random(4)
    same = b"epoch=1 loss=0.5\n" * 200
    contents = {}
    for i in range(150):  # (over two batches of SMALL_BATCH)
        data = same if i % 10 == 0 else b"" if i % 17 == 0 else rng.randbytes(rng.randrange(1, 60 * KiB))
        contents[f"small/f{i:03d}"] = data
    for i, size in enumerate((9 * MiB + 7, 3 * MiB, 13 * MiB + 1, 100 * KiB, 6 * MiB)):
        contents[f"large/g{i}"] = b"".join(rng.randbytes(200 * KiB) + b"\0" * rng.randrange(1, 300 * KiB)
                                           for _ in range(size // (200 * KiB) + 1))[:size]
    for name, data in contents.items():
        trees.write_file(src / name, data)
    record = push_dir(repo, src, "proj", "batches")
    packed = [e.id for pack_id, size in repo.store.list_packs()
              for e in repo.store.pack_entries(pack_id, size)]
    assert len(packed) == len(set(packed))  # no blob stored twice
    vfs = Vfs(repo)
    stored_ids = set()
    for name, data in contents.items():
        node = vfs.resolve(f"/jobs/{record.id}/{name}")
        assert vfs.open(node).read(0, len(data) + 1) == data, name
        entry = node.entry
        assert file_digest_of(entry) == blake3.blake3(data).digest(), name
        if name.startswith("small/"):
            stored_ids.add(entry.chunks)
    small = [d for n, d in contents.items() if n.startswith("small/")]
    assert len(stored_ids - {b""}) == len({d for d in small if d})  # one chunk per content
    assert stored_ids - {b""} <= set(packed)
    assert record.files == len(contents)
    assert record.logical_bytes == sum(map(len, contents.values()))


def test_small_files_whose_blobs_cannot_be_stored_fail_the_push(repo, monkeypatch,
                                                                tmp_path: Path) -> None:
    """The small files' blobs are compressed and packed in a thread of their own, after the
    files' entries are made: an error there must still fail the push, and register nothing."""
    import errno

    from c3fs.errors import NotFound
    from c3fs.objects import codec

    src = tmp_path / "src"
    src.mkdir()
    for i in range(300):  # (several batches)
        (src / f"f{i:03d}").write_bytes(b"step %d\n" % i * 50)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(codec, "encode_many", full)
    with pytest.raises(OSError, match="No space"):
        push_dir(repo, src, "proj", "never")
    with pytest.raises(NotFound):
        repo.store.get_ref(JOB, "never")


def file_digest_of(entry) -> bytes:
    from c3fs.objects.tree import file_digest

    return file_digest(entry)


def test_push_records_are_listed_per_project(run_cli, tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    trees.write_file(tmp_path / "s" / "f", b"x")
    a = push(run_cli, tmp_path / "s", project="vision")
    b = push(run_cli, tmp_path / "s", project="nlp")
    result = run_cli(["ls", "/projects/vision/jobs/"])
    assert result.out.split() == [a["id"] + "/", "latest"]  # (a symlink to the newest)
    result = run_cli(["ls", "--json", "/jobs/"])
    listed = {item["record"]["id"]: item["record"] for item in json.loads(result.out)["entries"]}
    assert listed == {a["id"]: a, b["id"]: b}
    assert all(r["kind"] == JOB for r in listed.values())
    result = run_cli(["ls", "/projects/"])
    assert sorted(result.out.split()) == ["nlp/", "vision/"]
