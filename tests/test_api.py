"""The Python API (`import c3fs`): real store, real LMDB, real consumers of file objects
(pickle, numpy, PIL, zipfile: what `torch.load` does is zipfile + pickle), threads and
forked workers reading through one Store, and the errors bad input gets."""

from __future__ import annotations

import hashlib
import inspect
import io
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gckit import gc_holding_the_store
from PIL import Image
from trees import rand_bytes, write_file

import c3fs
from c3fs import api
from c3fs.errors import (
    AlreadyExists,
    BlobCorrupt,
    C3fsError,
    DataError,
    InvalidId,
    IsADirectory,
    LockedError,
    NotFound,
    StoreError,
    UsageError,
)
from c3fs.store.locks import PUSH_LOCK_WAIT

KiB, MiB = 1024, 1024 * 1024
BIG = rand_bytes(3 * MiB, 11)  # many chunks
ARRAY = np.arange(200_000, dtype=np.float64).reshape(400, 500)


@pytest.fixture(autouse=True)
def _close_shared() -> Iterator[None]:
    """The module functions keep one Store per URL open for the process: close them after
    each test (each test has its own store)."""
    yield
    for store in list(api._shared.values()):
        store.close()
    api._shared.clear()


def _outputs(root: Path) -> Path:
    src = root / "out"
    (src / "sub").mkdir(parents=True)
    write_file(src / "m.csv", b"step,loss\n1,0.5\n2,0.25\n")
    write_file(src / "sub" / "big.bin", BIG)
    np.save(src / "array.npy", ARRAY)
    Image.new("RGB", (64, 32), (200, 10, 30)).save(src / "plot.png")
    with zipfile.ZipFile(src / "model.zip", "w") as zf:  # torch.save's layout: a zip of pickles
        zf.writestr("model/data.pkl", pickle.dumps({"weights": ARRAY[:3].tolist(), "step": 7}))
    write_file(src / "state.pkl", pickle.dumps({"epoch": 3, "tensor": ARRAY}, protocol=2))
    os.symlink("m.csv", src / "link.csv")
    (src / "links").mkdir()
    for name, target in [("up", "../sub/big.bin"), ("abs", "/etc/passwd"),
                         ("escape", "../../../../etc/passwd"), ("loop1", "loop2"),
                         ("loop2", "loop1"), ("chain", "up")]:
        os.symlink(target, src / "links" / name)
    return src


@pytest.fixture
def store(store_env, tmp_path: Path) -> Iterator[c3fs.Store]:
    with c3fs.Store(store_env.store, create=True) as opened:
        opened.push(_outputs(tmp_path), project="vision", job="job_a")
        yield opened


def test_import_c3fs_loads_nothing_else() -> None:
    code = ("import sys, c3fs; print(sorted(m for m in sys.modules if m.startswith('c3fs') "
            "or m in ('lmdb', 'fsspec', 'msgspec', 'obstore', 'typing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['c3fs']"
    for code in ("import c3fs; print(c3fs.errors.NotFound.__name__, c3fs.Store.__module__)",
                 "import c3fs; print(c3fs.open.__module__, c3fs.errors.__name__)",
                 "from c3fs import errors, Store; print(errors.__name__, Store.__name__)"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0 and len(out.stdout.split()) == 2, out.stderr[-500:]


def test_public_names_are_documented() -> None:
    for name in c3fs.__all__:
        obj = getattr(c3fs, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
    for name in ("open", "ls", "info", "walk", "read_bytes", "record", "push", "pull", "close"):
        assert getattr(c3fs.Store, name).__doc__, name
    with pytest.raises(AttributeError):
        c3fs.no_such_name  # noqa: B018


def test_push_returns_the_record_and_ls_lists_it(store: c3fs.Store) -> None:
    record = store.record("job_a")
    assert (record.id, record.project, record.status, record.files) == (
        "job_a", "vision", "SUCCEEDED", 6)  # the symlink is no file
    assert store.record("/projects/vision/jobs/latest") == record
    assert c3fs.ls(store, "/jobs/") == ["/jobs/job_a"]
    assert store.ls("/projects/vision/jobs/job_a") == [
        f"/projects/vision/jobs/job_a/{n}"
        for n in ("array.npy", "link.csv", "links", "m.csv", "model.zip", "plot.png", "state.pkl",
                  "sub")]
    assert store.ls("/jobs/job_a/m.csv") == ["/jobs/job_a/m.csv"]  # a file lists itself
    sub, = [i for i in store.ls("/jobs/job_a", detail=True) if i.name == "sub"]
    assert (sub.type, sub.path, sub.mode) == ("directory", "/jobs/job_a/sub", 0o755)
    big = c3fs.info(store, "/jobs/job_a/sub/big.bin")
    assert (big.type, big.size, big.name) == ("file", len(BIG), "big.bin")
    link = store.info("/jobs/job_a/link.csv")
    assert (link.type, link.target) == ("link", "m.csv")
    latest = store.info("/projects/vision/jobs/latest")  # described, not followed
    assert (latest.type, latest.target) == ("link", "job_a")
    assert [i.path for i in store.walk("/jobs/job_a/sub")] == ["/jobs/job_a/sub",
                                                               "/jobs/job_a/sub/big.bin"]


def test_module_functions_take_a_store_url(store_env, tmp_path: Path) -> None:
    record = c3fs.push(_outputs(tmp_path), project="p", job="job_u", store=store_env.store)
    assert record.id == "job_u"
    for url in (store_env.store, str(store_env.store), f"file://{store_env.store}", None):
        with c3fs.open(url, "/jobs/job_u/m.csv") as f:
            assert f.read() == b"step,loss\n1,0.5\n2,0.25\n"
    assert c3fs.ls(None, "/jobs") == ["/jobs/job_u"]  # None: $C3FS_STORE, as the CLI


def test_file_object_reads_seeks_and_closes(store: c3fs.Store) -> None:
    with store.open("/projects/vision/jobs/latest/sub/big.bin") as f:
        assert (f.readable(), f.seekable(), f.writable(), f.size) == (True, True, False, len(BIG))
        assert f.name == "/projects/vision/jobs/latest/sub/big.bin"
        assert f.read(10) == BIG[:10] and f.tell() == 10
        f.seek(MiB + 5)
        buf = bytearray(300 * KiB)  # across chunk boundaries
        assert f.readinto(buf) == len(buf) and buf == BIG[MiB + 5:MiB + 5 + len(buf)]
        assert f.seek(-7, io.SEEK_END) == len(BIG) - 7 and f.read() == BIG[-7:]
        assert f.read() == b"" and f.read(5) == b""
        f.seek(len(BIG) + 100)  # past the end: reads nothing, as a file
        assert f.read(1) == b""
        f.seek(0)
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(BIG).digest()
        with pytest.raises(ValueError):
            f.seek(-1)
        with pytest.raises(io.UnsupportedOperation):
            f.fileno()
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
    assert f.closed
    with pytest.raises(ValueError):
        f.read()
    with store.open("/jobs/job_a/m.csv") as f:
        assert list(f) == [b"step,loss\n", b"1,0.5\n", b"2,0.25\n"]


def test_real_consumers_read_through_open(store: c3fs.Store) -> None:
    with store.open("/jobs/job_a/array.npy") as f:
        assert np.array_equal(np.load(f), ARRAY)
    with store.open("/jobs/job_a/plot.png") as f, Image.open(f) as image:
        image.load()
        assert image.size == (64, 32) and image.getpixel((3, 3)) == (200, 10, 30)
    with store.open("/jobs/job_a/state.pkl") as f:
        state = pickle.load(f)
    assert state["epoch"] == 3 and np.array_equal(state["tensor"], ARRAY)
    with store.open("/jobs/job_a/model.zip") as f, zipfile.ZipFile(f) as zf:
        assert zf.testzip() is None
        with zf.open("model/data.pkl") as member:
            assert pickle.load(member)["step"] == 7


def test_bad_input_gets_typed_errors(store: c3fs.Store, store_env, tmp_path: Path) -> None:
    cases = [
        ("/jobs/job_nope/m.csv", NotFound, "no job 'job_nope'"),
        ("/jobs/job_a/sub", IsADirectory, "/jobs/job_a/sub is a directory"),
        ("/jobs/job_a/missing.csv", NotFound, "no such file"),
        ("/jobs/job_a/../../etc/passwd", NotFound, "'..' is not allowed"),
        ("/etc/passwd", NotFound, "/etc: no such file"),
        ("/jobs/job_a/links/abs", NotFound, "symlink to /etc/passwd, outside the store"),
        ("/jobs/job_a/links/escape", NotFound, "outside its job"),
        ("/jobs/job_a/links/loop1", NotFound, "too many levels of symbolic links"),
        ("/jobs/job_a/m.csv/x", C3fsError, "not a directory"),
        ("/jobs/bad id!/x", NotFound, "no job"),
    ]
    for path, error, text in cases:
        with pytest.raises(error, match=text.replace("(", r"\(")):
            store.open(path)
    with store.open("/projects/vision/jobs/job_a/link.csv") as f:  # a link in the job: followed
        assert f.read() == b"step,loss\n1,0.5\n2,0.25\n"
    assert store.read_bytes("/jobs/job_a/links/chain", 0, 100) == BIG[:100]
    with pytest.raises(UsageError, match="read-only"):
        store.open("/jobs/job_a/m.csv", "wb")
    with pytest.raises(AlreadyExists):
        store.push(tmp_path / "out", project="vision", job="job_a")
    with pytest.raises(InvalidId):
        store.push(tmp_path / "out", project="bad project", job="job_x")
    with pytest.raises(StoreError, match="no c3fs store"):
        c3fs.Store(tmp_path / "not-a-store")
    with pytest.raises(StoreError, match="unsupported store URL"):
        c3fs.Store("ftp://host/x")
    assert issubclass(NotFound, C3fsError) and NotFound.exit_code == 3


@pytest.mark.logs("blob .* is corrupt", "damaged")
def test_damaged_data_is_an_error_naming_the_file(store: c3fs.Store, store_env) -> None:
    packs = sorted((store_env.store / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    pack = packs[-1]  # the big file's chunks
    data = bytearray(pack.read_bytes())
    for at in range(0, len(data) // 2, 4096):
        data[at] ^= 0xFF
    pack.write_bytes(bytes(data))
    with store.open("/jobs/job_a/sub/big.bin") as f, pytest.raises(DataError) as caught:
        f.read()
    assert isinstance(caught.value, BlobCorrupt)
    assert "cannot read /jobs/job_a/sub/big.bin" in str(caught.value)


def test_pull_downloads_a_job(store: c3fs.Store, tmp_path: Path) -> None:
    pulled = c3fs.pull("/projects/vision/jobs/latest", tmp_path / "runs", store=store)
    assert [p.record.id for p in pulled] == ["job_a"]
    assert (tmp_path / "runs" / "job_a" / "sub" / "big.bin").read_bytes() == BIG
    assert store.pull(dest=tmp_path / "runs") == []  # nothing new


def test_push_waits_for_a_running_gc_up_to_lock_wait(store_env, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A real gc, stopped (SIGSTOP) while it holds the store: push(lock_wait=0) refuses at
    once (LockedError naming the gc, no wait), lock_wait=2 waits, says so, and gives up
    after 2 s (the API always waited 600 s); once gc has finished the push goes through.
    The default is the CLI's."""
    assert inspect.signature(c3fs.Store.push).parameters["lock_wait"].default == PUSH_LOCK_WAIT
    assert inspect.signature(c3fs.push).parameters["lock_wait"].default == PUSH_LOCK_WAIT
    src = tmp_path / "d"
    src.mkdir()
    (src / "r.txt").write_text("x\n")
    with c3fs.Store(store_env.store, create=True) as store:
        gc = gc_holding_the_store(store_env.store, 3)
        os.kill(gc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LockedError) as refused:
                store.push(src, project="p", lock_wait=0)
            assert str(refused.value).startswith(f"gc is running on this store (pid {gc.pid} ")
            assert "waited" not in str(refused.value) and "waiting" not in caplog.text
            started = time.monotonic()
            with pytest.raises(LockedError) as gave_up:
                c3fs.push(src, project="p", store=store_env.store, lock_wait=2)
            assert time.monotonic() - started >= 2
            waited = re.search(r"\(waited (\d+) s, --lock-wait 2\)$", str(gave_up.value))
            assert waited and 2 <= int(waited[1]) < 60, gave_up.value
            assert "waiting for it to finish, 0 s so far, up to 2 s" in caplog.text
            for bad in (-1, float("nan"), "5", True):
                with pytest.raises(UsageError, match="lock_wait must be a number of seconds"):
                    store.push(src, project="p", lock_wait=bad)
        finally:
            os.kill(gc.pid, signal.SIGCONT)
        assert gc.wait(60) == 0, (tmp_path / "gc.out").read_text()
        assert store.push(src, project="p", job="job_after", lock_wait=0).id == "job_after"
    assert c3fs.ls(store_env.store, "/jobs/") == ["/jobs/job_after"]  # nothing else stored


def test_stores_of_one_url_share_one_repo(store_env, store: c3fs.Store) -> None:
    other = c3fs.Store(f"file://{store_env.store}")
    assert other.repo is store.repo  # LMDB: one environment per file per process
    f = other.open("/jobs/job_a/m.csv")
    other.close()
    assert f.read() == b"step,loss\n1,0.5\n2,0.25\n"  # an open file keeps its store
    with pytest.raises(ValueError, match="closed"):
        other.ls("/")
    index = store.repo.index
    store.close()
    assert not index.closed  # the file still reads through it
    f.close()
    assert index.closed
    again = pickle.loads(pickle.dumps(store))  # spawned workers get a Store this way
    assert again.url == store.url and again.ls("/jobs") == ["/jobs/job_a"]
    again.close()


def test_threads_read_through_one_store(store: c3fs.Store) -> None:
    files = {"/jobs/job_a/sub/big.bin": BIG, "/projects/vision/jobs/job_a/m.csv":
             b"step,loss\n1,0.5\n2,0.25\n"}

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(40):
            path = list(files)[int(rng.integers(2))]
            want = files[path]
            start = int(rng.integers(len(want)))
            size = int(rng.integers(1, 400 * KiB))
            with store.open(path) as f:
                f.seek(start)
                assert f.read(size) == want[start:start + size]
            assert store.read_bytes(path, start, start + size) == want[start:start + size]
        assert store.ls("/jobs") == ["/jobs/job_a"]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))  # re-raises a thread's failure


def test_threads_share_one_file_object(store: c3fs.Store) -> None:
    """Each read of a shared file is atomic (as for a built-in file): the pieces the threads
    get are the file's consecutive 64 KiB pieces, each once."""
    pieces: list[bytes] = []
    step = 64 * KiB
    with store.open("/jobs/job_a/sub/big.bin") as shared:
        def work(_: int) -> None:
            while piece := shared.read(step):
                pieces.append(piece)

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(work, range(6)))
    assert sorted(pieces) == sorted(BIG[at:at + step] for at in range(0, len(BIG), step))


# forked workers (a DataLoader's) ---------------------------------------------------------------
# What the workers inherit lives in globals, never in the test's locals: a child inherits the
# forking thread's frames, and a reference to the parent's LMDB environment there would keep
# it (py-lmdb refuses to open the same files twice in a process; see c3fs.api).
_inherited: c3fs.Store | None = None
_inherited_file: c3fs.File | None = None
_holding: object = None  # a read transaction of the parent's, open while it forks


def _reads_as_own_process() -> bool:
    """Whether this process reads the index through an environment it opened itself (LMDB
    records a reader under the pid of the process that opened the environment)."""
    assert _inherited is not None
    env = _inherited.repo.index.env
    with env.begin():
        return re.search(rf"^\s*{os.getpid()}\s", env.readers(), re.M) is not None


def _worker_read(path: str) -> tuple[int, str, bool]:
    """In a forked worker: read through the Store the parent opened."""
    global _holding
    _holding = None  # the test's own reference (a user's code would not hold one)
    assert _inherited is not None
    with _inherited.open(path) as f:
        digest = hashlib.sha256(np.load(f).tobytes() if path.endswith(".npy") else f.read())
    return os.getpid(), digest.hexdigest(), _reads_as_own_process()


def _worker_inherited_file(offset: int) -> bytes:
    """In a forked worker: read a file object the parent opened (and had read from)."""
    global _holding
    _holding = None
    assert _inherited_file is not None
    _inherited_file.seek(offset)
    return _inherited_file.read(1000)


def _parent_has_a_reader() -> bool:
    assert _inherited is not None
    readers = _inherited.repo.index.env.readers()
    return re.search(rf"^\s*{os.getpid()}\s", readers, re.M) is not None


@pytest.mark.parametrize("workers", [1, 3])
def test_forked_workers_read_through_the_parents_store(store: c3fs.Store, workers: int) -> None:
    global _inherited, _inherited_file, _holding
    _inherited = store
    _inherited_file = store.open("/jobs/job_a/sub/big.bin")
    assert _inherited_file.read(100) == BIG[:100]  # its reader and prefetches are under way
    _holding = store.repo.index.env.begin()  # a reader slot of the parent's
    assert _parent_has_a_reader()
    try:
        paths = ["/jobs/job_a/sub/big.bin", "/jobs/job_a/array.npy", "/jobs/job_a/m.csv"] * 4
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(_worker_read, paths)
            chunks = pool.map(_worker_inherited_file, [0, MiB, 2 * MiB + 17])
        want = {"/jobs/job_a/sub/big.bin": hashlib.sha256(BIG).hexdigest(),
                "/jobs/job_a/array.npy": hashlib.sha256(ARRAY.tobytes()).hexdigest(),
                "/jobs/job_a/m.csv": hashlib.sha256(b"step,loss\n1,0.5\n2,0.25\n").hexdigest()}
        assert [digest for _, digest, _ in results] == [want[p] for p in paths]
        assert os.getpid() not in {pid for pid, _, _ in results}
        assert all(own for _, _, own in results)  # each child opened its own environment
        assert chunks == [BIG[o:o + 1000] for o in (0, MiB, 2 * MiB + 17)]
        assert _parent_has_a_reader()  # no child closed the parent's (freeing its slots)
        assert store.read_bytes("/jobs/job_a/m.csv", 0, 4) == b"step"  # the parent reads on
        assert _inherited_file.read(10) == BIG[100:110]
    finally:
        _holding.abort()
        _inherited_file.close()
        _inherited = _inherited_file = _holding = None


_kept: object = None  # what a user's code might keep: the parent's internals


def _worker_read_keeping_internals(path: str) -> str:
    assert _inherited is not None
    try:
        with _inherited.open(path) as f:
            return f.read().decode()
    except c3fs.errors.StoreError as exc:
        return str(exc)


def test_internals_kept_across_a_fork_are_named(store: c3fs.Store) -> None:
    """The one case a forked child cannot open its index: the parent's, still referenced
    there, may not be opened twice. The error says so and what to keep instead."""
    global _inherited, _kept
    _inherited, _kept = store, store.repo
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            message, = pool.map(_worker_read_keeping_internals, ["/jobs/job_a/m.csv"])
    finally:
        _inherited = _kept = None
    assert "already open in this process" in message
    assert "keep only c3fs.Store and c3fs.File objects across a fork" in message


def _spawned_read(store: c3fs.Store, path: str) -> str:
    with store.open(path) as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.s3
def test_an_s3_store_in_workers(s3_url: str, tmp_path: Path) -> None:
    """Forked: one clear error, at once (obstore's runtime does not survive fork; a read
    would wait out the deadline). Spawned: the Store passes by pickling and reads."""
    global _inherited
    with c3fs.Store(s3_url, create=True) as store:
        store.push(_outputs(tmp_path), project="vision", job="job_s")
        assert store.read_bytes("/jobs/job_s/m.csv", 0, 4) == b"step"
        _inherited = store
        try:
            with multiprocessing.get_context("fork").Pool(1) as pool:
                with pytest.raises(UsageError, match="'spawn' or 'forkserver'"):
                    pool.map(_worker_read, ["/jobs/job_s/m.csv"])
        finally:
            _inherited = None
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            digests = pool.starmap(_spawned_read, [(store, "/jobs/job_s/sub/big.bin")] * 2)
        assert digests == [hashlib.sha256(BIG).hexdigest()] * 2


def test_reading_a_large_file_holds_a_bounded_part_of_it(store_env, tmp_path: Path) -> None:
    size = 48 * MiB
    src = tmp_path / "large"
    src.mkdir()
    write_file(src / "weights.bin", rand_bytes(size, 3))
    with c3fs.Store(store_env.store, create=True, cache_bytes=4 * MiB) as store:
        store.push(src, project="p", job="job_large")
        digest = hashlib.sha256()
        tracemalloc.start()
        try:
            with store.open("/jobs/job_large/weights.bin") as f:
                while block := f.read(MiB):
                    digest.update(block)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(rand_bytes(size, 3)).digest()
    assert peak < size // 4, f"peak {peak / MiB:.1f} MiB while reading {size / MiB:.0f} MiB"
