"""Reading from a remote store (a real moto server process): blobs fetched ahead of their
readers in merged ranged GETs, many at once, bounded, never wrong (c3fs/reader/ahead.py).

GETs are counted by a wrapper backend that only counts and passes every call on."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import blake3
import pytest
from fusehelp import force_unmount, wait_until
from test_s3_store import mixed_tree, same_tree
from trees import write_random_file

from c3fs.index import Location, open_index
from c3fs.jobs.download import Copier
from c3fs.objects.tree import FILE
from c3fs.reader import BlobSource, FileReader, trace
from c3fs.reader.ahead import BUDGET, SPAN, WIDE_GAP, spans_of
from c3fs.repo import Repo
from c3fs.store.cache import BlockCache
from c3fs.store.store import Store, open_backend
from c3fs.vfs import Vfs

pytestmark = pytest.mark.s3

KiB, MiB = 1024, 1024 * 1024
C3FS = Path(sys.executable).parent / "c3fs"
KEY = Store.pack_key("ab" + "7" * 62)


class Counting:
    """A backend wrapper that records every ranged GET of a pack (key, offset, length)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gets: list[tuple[str, int, int | None]] = []
        self._lock = threading.Lock()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if key.startswith("packs/"):
            with self._lock:
                self.gets.append((key, offset, length))
        return self.inner.get(key, offset, length)

    @property
    def direct(self):  # a copy's exact reads too go through here (as bytes)
        return self

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class SpoilOnce:
    """Flips one byte of the first pack GET longer than 2 MiB (a merged GET), once: the fault
    a real server does not produce."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.spoiled = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        if key.startswith("packs/") and (length or 0) > 2 * MiB and not self.spoiled:
            self.spoiled += 1
            return data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return data

    @property
    def direct(self):  # a copy's exact reads too go through here (as bytes)
        return self

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def remote_repo(url: str, home: Path) -> tuple[Repo, Counting]:
    """A fresh machine's repo on `url` (empty index and block cache), its pack GETs counted."""
    os.environ["C3FS_CACHE_DIR"] = str(home)
    plain = open_backend(url, cache=False)
    counting = Counting(plain)
    store = Store.open(BlockCache(counting, home / "blocks", 256 * MiB))
    index = open_index(store)
    index.sync(store)
    return Repo(store, index, BlobSource(store, index)), counting


def push(url: str, src: Path, job: str, home: Path) -> None:
    env = {**os.environ, "C3FS_CACHE_DIR": str(home)}
    subprocess.run([str(C3FS), "--store", url, "push", str(src), "-p", "p", "-j", job],
                   check=True, capture_output=True, env=env)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C3FS_CACHE_DIR", str(tmp_path / "reader-home"))
    return tmp_path / "reader-home"


def test_a_read_over_missing_blocks_is_one_get_per_run(s3_url: str, tmp_path: Path) -> None:
    data = os.urandom(2 * MiB + 5)
    counting = Counting(open_backend(s3_url, cache=False))
    cache = BlockCache(counting, tmp_path / "c", 64 * MiB, block_size=64 * KiB, memory_bytes=0)
    cache.put(KEY, data)
    assert cache.get(KEY, 10, 600 * KiB) == data[10 : 10 + 600 * KiB]
    assert counting.gets == [(KEY, 10, 600 * KiB)]  # 10 blocks, one ranged GET, exact
    assert cache.get(KEY, 300 * KiB, 20 * KiB) == data[300 * KiB : 320 * KiB]  # block 4: cached
    assert cache.stats.misses == 8  # blocks 1-8 were held whole, so cached; 0 and 9 were not
    assert cache.get(KEY, 500 * KiB, 400 * KiB) == data[500 * KiB : 900 * KiB]
    assert counting.gets[1:] == [(KEY, 576 * KiB, 384 * KiB)]  # only the run 9-14, at once
    assert cache.get(KEY, 2 * MiB - 100, 64 * KiB) == data[2 * MiB - 100 :]  # past the end


def test_sequential_read_of_a_remote_file_merges_chunks_into_few_gets(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    size = 24 * MiB + 12345
    src.mkdir()
    write_random_file(src / "big.bin", size, seed=3)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        assert repo.blobs.remote
        vfs = Vfs(repo, "/jobs/j1")
        node = vfs.lookup(vfs.root, b"big.bin")
        reader = FileReader(repo.blobs, node.entry, readahead=8)
        expected = (src / "big.bin").read_bytes()
        got = b"".join(reader.read(offset, MiB) for offset in range(0, size, MiB))
        assert got == expected
        chunks = len(reader.ids)
        assert chunks > 100  # ~128 KiB chunks: one GET each would be > 100
        assert len(counting.gets) <= 2 * size // SPAN + 8, counting.gets
        assert all(length is not None and length <= 16 * MiB for _, _, length in counting.gets)
        assert repo.blobs.ahead._ready.weight <= BUDGET
    finally:
        repo.close()


def test_reads_that_jump_forward_fetch_their_own_chunks_not_a_window(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    """4 KiB reads 2 MiB apart are random reads, not a sequential reader's: each fetches
    the chunk it lies in (a forward jump within the window counted as sequential and read
    ahead, so that 20 such reads 10 MB apart fetched 120 MiB). Reads that go on from there
    are sequential again and merge into few GETs. No disk cache: its GETs are the reader's."""
    src = tmp_path / "src"
    size = 32 * MiB
    src.mkdir()
    write_random_file(src / "big.bin", size, seed=5)
    push(s3_url, src, "j1", tmp_path / "pusher")
    counting = Counting(open_backend(s3_url, cache=False))
    store = Store.open(counting)
    index = open_index(store)
    index.sync(store)
    repo = Repo(store, index, BlobSource(store, index))
    try:
        vfs = Vfs(repo, "/jobs/j1")
        reader = FileReader(repo.blobs, vfs.lookup(vfs.root, b"big.bin").entry, readahead=8)
        expected = (src / "big.bin").read_bytes()
        offsets = range(MiB, size, 2 * MiB)
        counting.gets.clear()  # (the index's sync and the tree)
        for offset in offsets:
            assert reader.read(offset, 4 * KiB) == expected[offset : offset + 4 * KiB]
        repo.blobs.ahead._pool.shutdown(wait=True)  # (the GETs of anything asked ahead too)
        fetched = sum(length or 0 for _, _, length in counting.gets)
        assert len(counting.gets) <= len(offsets) + 2, counting.gets
        assert fetched <= 8 * MiB, fetched  # ~16 chunks of ~128 KiB (was the whole 32 MiB)
    finally:
        repo.close()


def test_a_parquet_footer_read_through_fsspec_fetches_about_the_footer(
        s3_url: str, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow's read_metadata of a c3fs:// URL on an S3 store reads the file's end: one
    GET of the footer's block (the disk cache's 1 MiB), not also the file's first chunks,
    which opening a file fetched (1-2 MiB more), nor a window after a jump."""
    import fsspec
    import pyarrow as pa
    import pyarrow.parquet as pq

    from c3fs import api
    from c3fs.filesystem import C3fsFileSystem
    from c3fs.store.s3 import S3Backend

    src = tmp_path / "src"
    src.mkdir()
    rows = 400_000
    rng = random.Random(6)
    table = pa.table({"a": [rng.random() for _ in range(rows)], "b": range(rows)})
    pq.write_table(table, src / "t.parquet", compression="none")
    size = (src / "t.parquet").stat().st_size
    assert size > 6 * MiB
    push(s3_url, src, "j1", tmp_path / "pusher")
    got: list[int] = []
    get = S3Backend.get
    monkeypatch.setattr(S3Backend, "get", lambda self, key, offset=0, length=None: (
        data := get(self, key, offset, length),
        got.append(len(data)) if key.startswith("packs/") else None)[0])
    C3fsFileSystem.clear_instance_cache()
    fs = fsspec.filesystem("c3fs", store=s3_url, skip_instance_cache=True)
    try:
        with fsspec.open("c3fs:///jobs/j1/t.parquet", store=s3_url) as f:
            assert pq.read_metadata(f).num_rows == rows
        fs.store.repo.blobs.ahead._pool.shutdown(wait=True)  # (anything asked ahead too)
        assert len(got) == 1 and got[0] <= MiB, got  # the footer's block (was 2-3 GETs)
    finally:
        fs.store.close()
        for store in list(api._shared.values()):
            store.close()
        api._shared.clear()


def test_fetching_ahead_can_be_turned_off(s3_url: str, tmp_path: Path, home: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("C3FS_READ_WINDOW", "0")
    src = tmp_path / "src"
    src.mkdir()
    write_random_file(src / "big.bin", 3 * MiB, seed=4)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        assert not repo.blobs.remote and repo.blobs.ahead is None
        vfs = Vfs(repo, "/jobs/j1")
        reader = FileReader(repo.blobs, vfs.lookup(vfs.root, b"big.bin").entry, readahead=8)
        assert reader.read(0, 3 * MiB) == (src / "big.bin").read_bytes()
        assert len(counting.gets) >= 3  # a GET per 1 MiB block
    finally:
        repo.close()


def test_copy_of_a_remote_job_fetches_every_pack_range_ahead(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    mixed_tree(src, seed=5, big=20 * MiB, small=400)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        vfs = Vfs(repo, "/jobs/j1")
        stats = Copier(vfs).copy(vfs.root, tmp_path / "out")
        assert stats.files == 400 + 6 + 1
        same_tree(src, tmp_path / "out")
        # ~160 chunks of the big file, 6 plots, 400 small files: merged GETs, not one per
        # blob (~570). Usually 30-40; up to 47 seen when a reader wanted blobs before the
        # GET ahead that covers them was queued (it then fetches them itself)
        assert len(counting.gets) <= 80, len(counting.gets)
        # fetched exactly, not rounded out to cache blocks (then: 1.47x the packs' bytes;
        # now ~1.0x, 1.18x once under heavy load: a reader that wants a blob before the GET
        # ahead that covers it is queued fetches it itself)
        fetched = sum(length or 0 for _, _, length in counting.gets)
        assert fetched <= 1.3 * sum(size for _, size in repo.store.list_packs()), fetched
    finally:
        repo.close()


@pytest.mark.logs("cached copy was damaged")
def test_a_blob_that_fails_ahead_is_fetched_and_checked_by_its_reader(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    """Bytes spoiled on the way for the merged GET are never served: the reader's own fetch
    gets the blob again (and verifies it)."""
    src = tmp_path / "src"
    src.mkdir()
    write_random_file(src / "big.bin", 4 * MiB, seed=6)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        counting.inner = SpoilOnce(counting.inner)
        vfs = Vfs(repo, "/jobs/j1")
        reader = FileReader(repo.blobs, vfs.lookup(vfs.root, b"big.bin").entry, readahead=8)
        repo.blobs.prefetch(reader.ids)  # one merged GET of the whole file, spoiled
        data = b"".join(reader.read(offset, MiB) for offset in range(0, 4 * MiB, MiB))
        assert data == (src / "big.bin").read_bytes()
        assert counting.inner.spoiled == 1
    finally:
        repo.close()


@pytest.mark.logs("cached copy was damaged")
def test_a_copys_blob_spoiled_ahead_is_fetched_again_by_its_writer(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    """A copy's compressed blobs wait in `Ahead` undecoded (views of their GET's buffer) and
    are decoded and verified by the writer that takes them: bytes spoiled on the way for the
    merged GET fail there, and the blob is fetched again, never written."""
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(7)  # digits: zstd stores them in about half their size
    (src / "big.txt").write_bytes(b"".join(b"%.6f\n" % rnd.random() for _ in range(900_000)))
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        counting.inner = SpoilOnce(counting.inner)
        vfs = Vfs(repo, "/jobs/j1")
        Copier(vfs).copy(vfs.root, tmp_path / "dst")
        assert (tmp_path / "dst" / "big.txt").read_bytes() == (src / "big.txt").read_bytes()
        assert counting.inner.spoiled == 1
    finally:
        repo.close()


# learned prefetch (c3fs/reader/trace.py) ------------------------------------------------------
def test_a_trace_round_trips_through_the_store_and_bad_ones_are_ignored(
        s3_url: str, tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.open(open_backend(s3_url, cache=False))
    assert trace.load(store, "job", "j1") == []
    recorder = trace.Recorder(limit=3)
    ids = [bytes([i]) * 32 for i in range(5)]
    recorder.add([ids[2], ids[0], ids[2]])
    recorder.add(ids)  # the limit: 3 ids, each once, in first-asked order
    key = trace.save(store, "job", "j1", recorder)
    assert key is not None and key.startswith("traces/job/j1/")
    assert trace.save(store, "job", "j1", recorder) == key  # content-addressed: one object
    assert trace.load(store, "job", "j1") == [ids[2], ids[0], ids[1]]
    store.backend.put("traces/job/j1/" + "0" * 64, b"C3TRACE1" + b"x" * 5000)  # bigger, bad
    assert trace.load(store, "job", "j1") == [ids[2], ids[0], ids[1]]
    assert "ignoring the access trace" in caplog.text
    for i in range(trace.MAX_TRACES):  # a job read many ways keeps a bounded number
        other = trace.Recorder()
        other.add([bytes([100 + i]) * 32])
        trace.save(store, "job", "j1", other)
    assert len(list(store.backend.list("traces/job/j1/"))) == trace.MAX_TRACES


def pushed_job(s3_url: str, tmp_path: Path, home: Path, seed: int, small: int,
               big: int = MiB) -> tuple[Path, Repo, Counting, Vfs]:
    """A job j1 pushed from a `mixed_tree`, and a fresh machine's repo and Vfs of it."""
    src = tmp_path / "src"
    mixed_tree(src, seed=seed, big=big, small=small)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    return src, repo, counting, Vfs(repo, "/jobs/j1")


def test_a_replayed_trace_is_fetched_in_its_order_in_merged_gets(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src, repo, counting, vfs = pushed_job(s3_url, tmp_path, home, seed=7, small=300)
    try:
        files = [n for n in vfs.walk(vfs.root) if n.kind == FILE and n.size < 64 * KiB]
        order = random.Random(1).sample(files, 100)
        recorder = trace.Recorder()
        for node in order:
            recorder.add(node.entry.chunk_ids())
        trace.save(repo.store, "job", "j1", recorder)
        ids = trace.load(repo.store, "job", "j1")
        assert ids == [c for node in order for c in node.entry.chunk_ids()]
        repo.blobs.prefetch(ids)
        for node in order:  # the second machine's readers, in the recorded order
            assert vfs.open(node, readahead=0).read(0, node.size) == (
                src / node_path(node)).read_bytes()
        # 100 small files in a few packs: a few merged GETs, not one per file or per block
        assert len(counting.gets) <= 6, counting.gets
        assert repo.blobs.ahead.gets >= 1
    finally:
        repo.close()


def test_a_small_blob_fetched_ahead_is_handed_over_decoded_without_waiting(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    """`peek` (what a READ on the event loop asks) decodes a small blob that arrived still
    encoded (ahead.DECODE_AHEAD): the READ needs no worker thread; never before it arrived."""
    src, repo, counting, vfs = pushed_job(s3_url, tmp_path, home, seed=9, small=40)
    try:
        files = [n for n in vfs.walk(vfs.root) if n.kind == FILE and 0 < n.size < 64 * KiB]
        ids = [n.entry.chunk_ids()[0] for n in files]
        trees = len(counting.gets)  # (the walk's)
        assert all(repo.blobs.peek(i) is None for i in ids)  # nothing fetched: never waits
        assert len(counting.gets) == trees
        repo.blobs.prefetch(ids)
        wait_until(lambda: all(i in repo.blobs.ahead._ready for i in ids), "the blobs fetched", 30)
        gets = len(counting.gets)
        for node, chunk in zip(files, ids, strict=True):
            data = repo.blobs.peek(chunk)
            assert data == (src / node_path(node)).read_bytes()
            assert repo.blobs.peek(chunk) == data  # kept in the chunk cache once decoded
        assert len(counting.gets) == gets  # nothing fetched again
    finally:
        repo.close()


def test_reading_a_small_file_whole_asks_for_nothing_ahead_but_a_big_one_does(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    """Reading a one-chunk file whole asks `Ahead` for no window after it (there is nothing
    after it: the call only cost every small file's READ a lock and a scan)."""
    src, repo, _, vfs = pushed_job(s3_url, tmp_path, home, seed=11, small=10, big=4 * MiB)
    try:
        asked: list[list[bytes]] = []
        prefetch = repo.blobs.prefetch
        repo.blobs.prefetch = lambda ids, *args, **kwargs: (asked.append(list(ids)),
                                                            prefetch(ids, *args, **kwargs))
        files = [n for n in vfs.walk(vfs.root) if n.kind == FILE]
        small = next(n for n in files if len(n.entry.chunk_ids()) == 1 and n.size < 64 * KiB)
        assert vfs.open(small).read(0, small.size) == (src / node_path(small)).read_bytes()
        assert asked == []
        big = next(n for n in files if len(n.entry.chunk_ids()) > 4)
        assert vfs.open(big).read(0, 128 * KiB) == (src / node_path(big)).read_bytes()[:128 * KiB]
        assert asked and asked[0][0] == big.entry.chunk_ids()[1]  # the window after it
    finally:
        repo.close()


def test_a_wave_of_more_spans_than_workers_reads_over_wider_gaps_if_that_fits_it() -> None:
    """Runs of small blobs 1 MiB apart: one GET each (reading over 256 KiB at most), unless
    asked for in one wave (`fit`: the workers) and merging over up to WIDE_GAP makes them
    fit; runs farther apart, or other packs, stay apart."""
    def runs(pack: str, starts: list[int]) -> list[tuple[bytes, Location]]:
        return [(f"{pack}{at}-{i}".encode(), Location(pack, at + i * 1000, 900, 1000, 1, 0))
                for at in starts for i in range(5)]

    near = runs("a", [0, MiB, 2 * MiB, 3 * MiB]) + runs("b", [0, MiB])
    assert len(spans_of(near)) == 6
    assert len(spans_of(near, fit=8)) == 6  # fits already: nothing read over
    merged = spans_of(near, fit=4)
    assert len(merged) == 2 and sorted(s.pack_id for s in merged) == ["a", "b"]
    assert all(s.end - s.offset <= SPAN for s in merged)
    assert sorted(b for s in merged for b, _ in s.blobs) == sorted(b for b, _ in near)
    far = runs("a", [0, WIDE_GAP + MiB, 2 * (WIDE_GAP + MiB)])
    assert len(spans_of(far, fit=2)) == 3  # wider gaps would not fit them: as they were


def test_a_mount_of_one_job_replays_its_trace_from_the_stores_open(
        s3_url: str, tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Opening a mount of /jobs/<id> starts the trace's replay as soon as the store is open
    (beside resolving the ref), and the mount then does not replay it a second time; a
    mount of the namespace, or of a folder, replays a job's trace only when it is read."""
    from c3fs.fuse.daemon import mount_traces
    from c3fs.fuse.opening import Opening, ref_of_path

    src, repo, _, vfs = pushed_job(s3_url, tmp_path, tmp_path / "first", seed=10, small=60)
    try:
        small = [n for n in vfs.walk(vfs.root) if n.kind == FILE and n.size < 64 * KiB][:30]
        recorder = trace.Recorder()
        for node in small:
            recorder.add(node.entry.chunk_ids())
        trace.save(repo.store, "job", "j1", recorder)
        wanted = {f"{loc.pack_id}.{loc.offset // MiB}"
                  for loc in map(repo.index.lookup, recorder._order)}
    finally:
        repo.close()

    assert ref_of_path((b"jobs", b"j1")) == ("job", "j1")
    assert ref_of_path((b"datasets", b"d")) == ("dataset", "d")
    assert ref_of_path(()) is None and ref_of_path((b"jobs",)) is None
    assert ref_of_path((b"jobs", b"j1", b"metrics")) is None
    caplog.set_level("INFO", logger="c3fs.reader.trace")
    second = tmp_path / "second"  # another machine
    os.environ["C3FS_CACHE_DIR"] = str(second)
    opening = Opening(s3_url, "/jobs/j1", 256 * MiB)
    vfs = opening.result()
    try:
        assert opening.replaying == ("job", "j1")
        wait_until(lambda: wanted <= cached_blocks(second), "the traced blocks fetched", 30)
        replayed = []
        traces = mount_traces(vfs, opening.replaying)
        assert traces is not None and set(traces.recorders) == {("job", "j1")}  # it records
        traces._first = replayed.append
        traces.start(("job", "j1"))
        assert replayed == []  # replayed once, from the start
        assert caplog.text.count("replaying an access trace of 30 chunks of job j1") == 1
    finally:
        vfs.repo.close()
    for ref in ("/", "/jobs"):
        opening = Opening(s3_url, ref, 256 * MiB)
        opening.result().repo.close()
        assert opening.replaying is None


def node_path(node) -> str:
    parts = []
    while node.parent is not None and node.depth > 2:
        parts.append(node.name.decode())
        node = node.parent
    return "/".join(reversed(parts))


@pytest.mark.fuse
def test_a_mount_records_its_trace_and_the_next_mount_on_another_machine_replays_it(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    mixed_tree(src, seed=8, big=MiB, small=200)
    push(s3_url, src, "j1", tmp_path / "pusher")
    names = sorted(str(p.relative_to(src)) for p in (src / "metrics").rglob("*.txt"))
    order = random.Random(2).sample(names, 40)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    first = {**os.environ, "C3FS_CACHE_DIR": str(tmp_path / "first")}
    try:
        subprocess.run([str(C3FS), "--store", s3_url, "mount", "/jobs/j1", str(mnt)],
                       check=True, capture_output=True, env=first)
        for name in order:
            assert (mnt / name).read_bytes() == (src / name).read_bytes()
        subprocess.run([str(C3FS), "umount", str(mnt)], check=True, capture_output=True)
        store = Store.open(open_backend(s3_url, cache=False))
        wait_until(lambda: trace.load(store, "job", "j1"), "the stored trace", 30)
        ids = trace.load(store, "job", "j1")
        index = open_index(store)  # (this process's own, under the pytest home)
        wanted = [c for name in order for c in chunks_of(index, store, src / name)]
        assert ids[: len(wanted)] == wanted  # what the readers asked for, in their order

        second = tmp_path / "second"  # another machine: its block cache fills with no reader
        env = {**os.environ, "C3FS_CACHE_DIR": str(second)}
        subprocess.run([str(C3FS), "--store", s3_url, "mount", "/jobs/j1", str(mnt)],
                       check=True, capture_output=True, env=env)
        blocks = {f"{loc.pack_id}.{loc.offset // MiB}" for loc in map(index.lookup, wanted)}
        wait_until(lambda: blocks <= cached_blocks(second), "blocks fetched ahead of readers", 30)
        for name in order:
            assert (mnt / name).read_bytes() == (src / name).read_bytes()
    finally:
        force_unmount(mnt)


def chunks_of(index, store: Store, path: Path) -> list[bytes]:
    """The chunk ids of a pushed small file (one chunk: the blake3 of its bytes)."""
    return [blake3.blake3(path.read_bytes()).digest()]


def cached_blocks(home: Path) -> set[str]:
    """The names of the pack blocks in a machine's disk cache (<pack id>.<block number>)."""
    return {p.name for p in home.rglob("blocks-*/*/*") if not p.name.startswith(".")}


@pytest.mark.fuse
def test_a_namespace_mount_records_a_trace_per_job_and_replays_one_when_it_is_read(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src = {job: tmp_path / job for job in ("j1", "j2")}
    for seed, (job, path) in enumerate(src.items(), 20):
        mixed_tree(path, seed=seed, big=MiB, small=100)
        push(s3_url, path, job, tmp_path / "pusher")
    orders = {job: random.Random(job).sample(
        sorted(str(p.relative_to(path)) for p in (path / "metrics").rglob("*.txt")), 20)
        for job, path in src.items()}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run([str(C3FS), "--store", s3_url, "mount", str(mnt)], check=True,
                       capture_output=True, env={**os.environ, "C3FS_CACHE_DIR": str(tmp_path / "m1")})
        for job, order in orders.items():
            for name in order:
                assert (mnt / "jobs" / job / name).read_bytes() == (src[job] / name).read_bytes()
        subprocess.run([str(C3FS), "umount", str(mnt)], check=True, capture_output=True)
        store = Store.open(open_backend(s3_url, cache=False))
        for job, order in orders.items():  # one trace per job read, each of its own reads
            wait_until(lambda job=job: trace.load(store, "job", job), f"the trace of {job}", 30)
            wanted = [blake3.blake3((src[job] / name).read_bytes()).digest() for name in order]
            assert trace.load(store, "job", job)[: len(wanted)] == wanted

        second = tmp_path / "m2"  # another machine: reading one file of j1 replays j1's trace
        subprocess.run([str(C3FS), "--store", s3_url, "mount", str(mnt)], check=True,
                       capture_output=True, env={**os.environ, "C3FS_CACHE_DIR": str(second)})
        assert (mnt / "jobs/j1" / orders["j1"][0]).read_bytes() == (
            src["j1"] / orders["j1"][0]).read_bytes()
        index = open_index(store)
        blocks = {f"{loc.pack_id}.{loc.offset // MiB}" for loc in map(index.lookup, (
            blake3.blake3((src["j1"] / name).read_bytes()).digest() for name in orders["j1"]))}
        wait_until(lambda: blocks <= cached_blocks(second), "j1's traced blocks fetched ahead", 30)
        log = next((second / "mounts").glob("*.log"))
        wait_until(lambda: "of job j1" in log.read_text(), "j1's trace replayed", 30)
        assert "replaying an access trace of 20 chunks of job j1" in log.read_text()
        assert "of job j2" not in log.read_text()  # a job nobody read: its trace waits
    finally:
        force_unmount(mnt)


def test_directory_readahead_near_a_directorys_end_fetches_the_next_directories_too(
        s3_url: str, tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    for d in range(6):  # `cat d*/*`: six directories of 16 small files (19 MiB in all)
        (src / "runs" / f"d{d}").mkdir(parents=True)
        for f in range(16):
            write_random_file(str(src / "runs" / f"d{d}" / f"f{f:02}"), 200 * KiB, seed=d * 100 + f)
    push(s3_url, src, "j1", tmp_path / "pusher")
    repo, counting = remote_repo(s3_url, home)
    try:
        from c3fs.fuse.readahead import DirectoryReadahead

        vfs = Vfs(repo, "/jobs/j1")
        runs = vfs.lookup(vfs.root, b"runs")
        dirs = [vfs.lookup(runs, f"d{d}".encode()) for d in range(6)]
        readahead = DirectoryReadahead(vfs, limiter=None, window=16)
        readahead._read_after(dirs[0], b"")  # the first file of d0 was opened
        nodes = {(d, f): vfs.lookup(dirs[d], f"f{f:02}".encode()) for d in (1, 2, 3)
                 for f in range(16)}
        chunks = [c for node in nodes.values() for c in node.entry.chunk_ids()]
        # d1-d3 are asked for with d0, with no reader (d4, d5: past the 4 windows), and
        # arrive. (Not looked for in the disk cache: a GET over 4+ blocks none of which is
        # cached is exact, and the block it shares with the next GET is cached by neither;
        # whether d1-d3's GETs each meet a cached block, a tree's, depends on where the push's
        # threads put the trees)
        ahead = repo.blobs.ahead
        assert all(c in ahead for c in chunks)
        wait_until(lambda: all(c in ahead._ready for c in chunks), "the next directories fetched", 30)
        before = len(counting.gets)
        for (d, f), node in nodes.items():
            assert vfs.open(node, readahead=0).read(0, node.size) == (
                src / "runs" / f"d{d}" / f"f{f:02}").read_bytes()
        assert len(counting.gets) == before  # every one of them fetched ahead already
        assert ahead.gets >= 1
    finally:
        repo.close()


@pytest.mark.fuse
def test_a_fresh_machine_mounts_a_job_and_reads_its_first_byte_in_few_requests(
        s3_server, s3_url: str, tmp_path: Path) -> None:
    """Counted at the bench's proxy (no delay): config, the listings (packs, jobs, datasets),
    the ref and the trailers (which hold the trees), the trace listing, the mount's lease and
    its ref read again after it (c3fs/store/mounts.py), the file's block."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.proxy import Proxy

    src = tmp_path / "src"
    mixed_tree(src, seed=3, big=MiB, small=50)
    push(s3_url, src, "j1", tmp_path / "pusher")
    name = sorted(str(p.relative_to(src)) for p in (src / "metrics").rglob("*.txt"))[0]
    proxy = Proxy(s3_server.port, tmp_path / "proxy", delay_ms=0).start()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "C3FS_CACHE_DIR": str(tmp_path / "m")}
    try:
        subprocess.run([str(C3FS), "--store", s3_url, "mount", "/jobs/j1", str(mnt)],
                       check=True, capture_output=True, env=env)
        with open(mnt / name, "rb") as f:
            assert f.read(1) == (src / name).read_bytes()[:1]
        assert proxy.requests() <= 11, proxy.counts()  # (11 here: 2 packs, so 2 trailers)
    finally:
        force_unmount(mnt)
        proxy.stop()
