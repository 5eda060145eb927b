"""Real FUSE mounts through the `c3fs mount` CLI, plus the Operations called directly.

Every mount is waited for by polling and torn down with `fusermount3 -u -z` (tests/fusehelp).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
from fusehelp import (
    C3FS,
    alive,
    daemon_pids,
    force_unmount,
    mount,
    mounted,
    run_c3fs,
    stop,
    wait_until,
)

pytestmark = pytest.mark.fuse

JOB, PROJECT = "job_alpha", "proj"
MTIME_NS = 1_700_000_000_123_456_789
ODD_NAME = b"caf\xe9 \xff.txt"  # not UTF-8


@dataclass
class World:
    root: Path
    src: Path
    store: Path
    env: dict[str, str]

    def push(self, src: Path, job: str, project: str = PROJECT) -> None:
        run_c3fs("push", str(src), "--project", project, "--job", job, env=self.env)


def make_source(src: Path) -> None:
    rng = random.Random(4)
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "many").mkdir()
    (src / "dup").mkdir()
    (src / "hello.txt").write_bytes(b"hello world\n")
    (src / "dup" / "hello.txt").write_bytes(b"hello world\n")
    (src / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(rng.randbytes(6 * 1024 * 1024 + 12345))
    (src / "victim.bin").write_bytes(rng.randbytes(40_000))
    (src / "sub" / "deeper" / "file.txt").write_bytes(b"deep\n" * 1000)
    for i in range(400):
        (src / "many" / f"f{i:04d}").write_bytes(f"small file {i}\n".encode())
    (src / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "script.sh").chmod(0o755)
    (src / "secret").write_bytes(b"s3cr3t")
    (src / "secret").chmod(0o600)
    with open(os.path.join(os.fsencode(src), ODD_NAME), "wb") as f:
        f.write(b"odd name\n")
    os.symlink("hello.txt", src / "link")
    os.symlink("/etc/passwd", src / "abs_link")
    for path in sorted(src.rglob("*"), reverse=True):
        os.utime(path, ns=(MTIME_NS, MTIME_NS + hash(path.name) % 10**9), follow_symlinks=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("fuse")
    src, store = root / "src", root / "store"
    src.mkdir()
    make_source(src)
    env = dict(os.environ, C3FS_STORE=str(store), C3FS_CACHE_DIR=str(root / "cache"))
    w = World(root, src, store, env)
    w.push(src, JOB)
    return w


@pytest.fixture(scope="module", params=["no-open", "open"])
def mnt(world: World, request):
    """The whole namespace, mounted both ways files can be opened (c3fs/fuse/ops.py):
    by the kernel alone (the default with the patched pyfuse3 `make` installs), and with
    one OPEN and RELEASE request per file (a stock pyfuse3, or C3FS_FUSE_OPEN=1)."""
    env = dict(world.env, C3FS_FUSE_OPEN="1" if request.param == "open" else "0")
    with mount(env, world.root / f"mnt-{request.param}") as path:
        yield path


@pytest.fixture
def job(mnt: Path) -> Path:
    return mnt / "jobs" / JOB


def source_files(src: Path) -> list[bytes]:
    out = []
    for dirpath, _, files in os.walk(os.fsencode(src)):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                out.append(os.path.relpath(path, os.fsencode(src)))
    return out


# reading ----------------------------------------------------------------------------------
def test_every_file_reads_byte_exact(world: World, job: Path) -> None:
    files = source_files(world.src)
    assert len(files) > 400
    for rel in files:
        expected = open(os.path.join(os.fsencode(world.src), rel), "rb").read()
        assert open(os.path.join(os.fsencode(job), rel), "rb").read() == expected, rel


def test_random_offsets(world: World, job: Path) -> None:
    expected = (world.src / "big.bin").read_bytes()
    rng = random.Random(7)
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)  # past the page cache, to the daemon
    fd = os.open(job / "big.bin", flags)
    try:
        for _ in range(300):
            offset = rng.randrange(len(expected) + 100)
            size = rng.choice([1, 17, 4096, 65536, 300_000, 2_000_000])
            assert os.pread(fd, size, offset) == expected[offset : offset + size], (offset, size)
    finally:
        os.close(fd)


def test_eight_concurrent_readers(world: World, job: Path) -> None:
    expected = (world.src / "big.bin").read_bytes()
    failures: list[str] = []

    def reader(n: int) -> None:
        fd = os.open(job / "big.bin", os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        try:
            step = 4096 * (n + 1) + 1000 * n
            starts = list(range(0, len(expected), step))
            random.Random(n).shuffle(starts)
            for start in starts:
                if os.pread(fd, step, start) != expected[start : start + step]:
                    failures.append(f"reader {n} at {start}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_listing_of_many_entries_is_complete(world: World, job: Path) -> None:
    assert sorted(os.listdir(job / "many")) == sorted(os.listdir(world.src / "many"))
    assert sorted(os.listdir(os.fsencode(job))) == sorted(os.listdir(os.fsencode(world.src)))


def resident(path: Path) -> bool:
    """Whether every page of a file is in the page cache (mincore on a mapping; reads nothing)."""
    libc = ctypes.CDLL(None, use_errno=True)
    size = path.stat().st_size
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        first = ctypes.c_char.from_buffer(m)
        status = libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(size), vec)
        del first
    if status != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return all(v & 1 for v in vec)


def test_small_files_after_an_opened_one_are_read_ahead(world: World, tmp_path: Path) -> None:
    with mount(world.env, tmp_path / "m", f"/jobs/{JOB}") as m:
        names = sorted(os.listdir(m / "many"))  # the kernel now knows them (readdirplus)
        (m / "many" / names[0]).read_bytes()  # the first file of the directory: reads ahead
        wait_until(lambda: resident(m / "many" / names[10]), "readahead into the page cache")
        assert (m / "many" / names[10]).read_bytes() == (world.src / "many" / names[10]).read_bytes()


# metadata ---------------------------------------------------------------------------------
def test_sizes_modes_mtimes_and_links_match_the_source(world: World, job: Path) -> None:
    src_b, job_b = os.fsencode(world.src), os.fsencode(job)
    checked = 0
    for dirpath, dirs, files in os.walk(src_b):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, src_b)
            want, got = os.lstat(path), os.lstat(os.path.join(job_b, rel))
            assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(want.st_mode), rel
            assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(want.st_mode), rel
            assert got.st_mtime_ns == want.st_mtime_ns, rel
            if not stat.S_ISDIR(want.st_mode):
                assert got.st_size == want.st_size, rel
            if stat.S_ISLNK(want.st_mode):
                assert os.readlink(os.path.join(job_b, rel)) == os.readlink(path)
            checked += 1
    assert checked > 400
    assert (job / "link").read_bytes() == b"hello world\n"
    assert os.readlink(job / "abs_link") == "/etc/passwd"  # kept as a link, never resolved
    assert (Path(os.fsdecode(job_b + b"/" + ODD_NAME))).read_bytes() == b"odd name\n"


def test_same_inode_through_jobs_and_projects(mnt: Path) -> None:
    for rel in ["", "hello.txt", "sub", "sub/deeper/file.txt", "link", "many/f0001"]:
        a = os.lstat(mnt / "jobs" / JOB / rel)
        b = os.lstat(mnt / "projects" / PROJECT / "jobs" / JOB / rel)
        assert a.st_ino == b.st_ino, rel
    assert os.lstat(mnt / "jobs" / JOB / "hello.txt").st_ino != os.lstat(
        mnt / "jobs" / JOB / "dup" / "hello.txt").st_ino


def test_xattrs(job: Path) -> None:
    names = os.listxattr(job / "hello.txt")
    assert set(names) == {"user.c3fs.digest", "user.c3fs.job"}
    assert os.getxattr(job / "hello.txt", "user.c3fs.job") == JOB.encode()
    digest = os.getxattr(job / "hello.txt", "user.c3fs.digest")
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == os.getxattr(job / "dup" / "hello.txt", "user.c3fs.digest")
    assert digest != os.getxattr(job / "big.bin", "user.c3fs.digest")
    assert len(os.getxattr(job / "sub", "user.c3fs.digest")) == 64  # the tree id
    with pytest.raises(OSError) as exc:
        os.getxattr(job / "hello.txt", "user.nope")
    assert exc.value.errno == errno.ENODATA
    for name in ["security.selinux", "system.posix_acl_access"]:  # namespaces we do not have
        with pytest.raises(OSError) as exc:
            os.getxattr(job / "hello.txt", name)
        assert exc.value.errno == errno.EOPNOTSUPP
    assert os.listxattr(job.parent) == []  # /jobs is virtual


def test_statfs(mnt: Path) -> None:
    st = os.statvfs(mnt)
    assert st.f_flag & os.ST_RDONLY
    assert st.f_namemax == 255
    assert st.f_bavail == 0 and st.f_blocks > 0


# sparse files -----------------------------------------------------------------------------
SPARSE_JOB = "job_sparse"
MiB = 1 << 20
SPARSE = {  # name: (size, {offset: length of random data there}); holes elsewhere
    "mixed.bin": (24 * MiB + 3, {0: 300_000, 10 * MiB + 5: 200_000}),  # a hole to the end
    "holes.bin": (6 * MiB, {}),
    "tail.bin": (4 * MiB + 100_000, {4 * MiB: 100_000}),
    "dense.bin": (3 * MiB + 17, {0: 3 * MiB + 17}),
}


@pytest.fixture(scope="module")
def sparse_src(world: World) -> Path:
    """Sparse files pushed as one job (once for both ways of opening), and a dense one."""
    src = world.root / "sparse-src"
    src.mkdir()
    rng = random.Random(11)
    for name, (size, data) in SPARSE.items():
        with open(src / name, "wb") as f:
            f.truncate(size)
            for at, length in data.items():
                f.seek(at)
                f.write(rng.randbytes(length))
    assert os.stat(src / "mixed.bin").st_blocks * 512 < 2 * MiB  # (the source is sparse)
    world.push(src, SPARSE_JOB)
    return src


def test_a_sparse_files_st_blocks_are_its_data(world: World, sparse_src: Path,
                                               tmp_path: Path) -> None:
    """st_blocks count the bytes that are not hole chunks (chunk_max zeros: how a push stores
    holes), from the chunk list the file's tree entry holds: the same from a LOOKUP (a fresh
    mount: stat by path) and from a READDIRPLUS (another: listed first, a run of entries
    given to `readdir_reply_many` with their st_blocks). A dense file's are its size's."""
    names = sorted(SPARSE)
    with mount(world.env, tmp_path / "a", f"/jobs/{SPARSE_JOB}") as m:
        looked_up = [os.stat(m / name).st_blocks for name in names]
    with mount(world.env, tmp_path / "b", f"/jobs/{SPARSE_JOB}") as m:
        listed = {entry.name: entry.stat().st_blocks for entry in os.scandir(m)}
    assert [listed[name] for name in names] == looked_up
    assert listed["holes.bin"] == 0
    assert listed["tail.bin"] == (100_000 + 511) // 512  # 4 hole chunks, then the data
    assert listed["dense.bin"] == (3 * MiB + 17 + 511) // 512
    # data, then up to a chunk of zeros on either side of each run of it, and the end's
    assert 500_000 <= listed["mixed.bin"] * 512 <= 500_000 + 5 * MiB


def seek(fd: int, offset: int, whence: int) -> int | str:
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        return errno.errorcode[exc.errno]


def extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The data extents of a file, as SEEK_DATA and SEEK_HOLE walk it from 0."""
    found, at = [], 0
    while (start := seek(fd, at, os.SEEK_DATA)) != "ENXIO":
        end = seek(fd, start, os.SEEK_HOLE)
        assert isinstance(start, int) and isinstance(end, int) and at <= start < end <= size
        found.append((start, end))
        at = end
        if at == size:
            break
    return found


def test_seek_data_and_seek_hole_as_ext4_answers_them(sparse_src: Path, mnt: Path) -> None:
    """Holes a whole number of chunks long (of chunk_max zeros: how a push stores holes)
    where the file's data starts at a chunk's edge: SEEK_DATA and SEEK_HOLE through the mount
    give what they give on the source (ext4), ENXIO included (past the end; SEEK_DATA with
    no data after it; a negative offset); a dense file is data up to its end."""
    for name in ("holes.bin", "tail.bin", "dense.bin"):
        size = SPARSE[name][0]
        offsets = [-1, 0, 1, MiB - 1, MiB, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, size - 1,
                   size, size + 1, 1 << 40]
        src_fd = os.open(sparse_src / name, os.O_RDONLY)
        fd = os.open(mnt / "jobs" / SPARSE_JOB / name, os.O_RDONLY)
        try:
            for whence in (os.SEEK_DATA, os.SEEK_HOLE):
                got = [seek(fd, offset, whence) for offset in offsets]
                assert got == [seek(src_fd, offset, whence) for offset in offsets], (name, whence)
        finally:
            os.close(fd)
            os.close(src_fd)
    assert os.stat(mnt / "jobs" / SPARSE_JOB / "holes.bin").st_blocks == 0
    dense = os.stat(mnt / "jobs" / SPARSE_JOB / "dense.bin")
    assert dense.st_blocks == (dense.st_size + 511) // 512


def test_a_sparse_files_holes_through_the_mount(sparse_src: Path, mnt: Path,
                                                tmp_path: Path) -> None:
    """A file of data, a hole, data, and a hole to its end: its data extents (SEEK_DATA,
    SEEK_HOLE) hold all its data and little else, nothing but zeros lies outside them, every
    answer agrees with that walk, st_blocks are the extents' bytes; its bytes read right, and
    `cp --sparse=auto` (which asks SEEK_DATA only of a file whose st_blocks say it is sparse)
    writes a copy as sparse as the source."""
    size, data = SPARSE["mixed.bin"]
    path, expected = mnt / "jobs" / SPARSE_JOB / "mixed.bin", (sparse_src / "mixed.bin").read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        found = extents(fd, size)
        inside = [seek(fd, offset, os.SEEK_DATA) for offset in range(0, size, 64 * 1024)]
    finally:
        os.close(fd)
    for at, length in data.items():  # every byte of data is in an extent...
        assert any(start <= at and at + length <= end for start, end in found), at
    gaps = zip([0] + [end for _, end in found], [start for start, _ in found] + [size],
               strict=True)
    for start, end in gaps:  # ...and between them are only zeros
        assert expected[start:end] == bytes(end - start), (start, end)
    # a hole chunk is 1 MiB: at most 1 MiB of zeros on either side of each run of data, and
    # the end's last chunk (shorter: not a hole chunk)
    in_extents = sum(end - start for start, end in found)
    assert sum(data.values()) <= in_extents <= sum(data.values()) + 5 * MiB, found
    for k, offset in enumerate(range(0, size, 64 * 1024)):  # each answer is the walk's
        after = [max(start, offset) for start, end in found if end > offset]
        assert inside[k] == (after[0] if after else "ENXIO"), offset
    st = os.stat(path)
    assert st.st_size == size and st.st_blocks == (in_extents + 511) // 512
    assert path.read_bytes() == expected
    subprocess.run(["cp", "--sparse=auto", str(path), str(tmp_path / "copy")], check=True)
    copy = os.stat(tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == expected
    assert copy.st_blocks * 512 <= in_extents < size / 4


# errors -----------------------------------------------------------------------------------
WRITES = {
    "open for write": lambda j: os.open(j / "hello.txt", os.O_WRONLY),
    "create": lambda j: os.open(j / "new.txt", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": lambda j: os.mkdir(j / "newdir"),
    "unlink": lambda j: os.unlink(j / "hello.txt"),
    "rmdir": lambda j: os.rmdir(j / "sub" / "deeper"),
    "rename": lambda j: os.rename(j / "hello.txt", j / "renamed.txt"),
    "setxattr": lambda j: os.setxattr(j / "hello.txt", "user.x", b"1"),
    "truncate": lambda j: os.truncate(j / "hello.txt", 0),
    "symlink": lambda j: os.symlink("x", j / "newlink"),
    "chmod": lambda j: os.chmod(j / "hello.txt", 0o777),
    "utime": lambda j: os.utime(j / "hello.txt", (0, 0)),
    "link": lambda j: os.link(j / "hello.txt", j / "hard"),
}


@pytest.mark.parametrize("what", sorted(WRITES))
def test_writes_get_erofs(job: Path, what: str) -> None:
    with pytest.raises(OSError) as exc:
        WRITES[what](job)
    assert exc.value.errno == errno.EROFS
    assert (job / "hello.txt").read_bytes() == b"hello world\n"


@pytest.mark.parametrize("rel", ["jobs/job_alpha/nope", "jobs/job_nope", "jobs/Bad Name!",
                                 "projects/nope", f"projects/other/jobs/{JOB}",
                                 "jobs/job_alpha/sub/deeper/nope", "nope"])
def test_missing_names_are_enoent(mnt: Path, rel: str) -> None:
    for _ in range(2):  # the second time may come from the kernel's negative cache
        with pytest.raises(FileNotFoundError):
            os.stat(mnt / rel)


def test_enotdir(job: Path) -> None:
    with pytest.raises(NotADirectoryError):
        os.stat(job / "hello.txt" / "x")
    with pytest.raises(NotADirectoryError):
        os.listdir(job / "hello.txt")


# the namespace while mounted --------------------------------------------------------------
def test_job_pushed_while_mounted_appears(world: World, mnt: Path) -> None:
    job, project = f"job_beta_{mnt.name}", f"other_{mnt.name}"  # one per mount of `mnt`
    src = world.root / f"src_{job}"
    src.mkdir()
    (src / "result.txt").write_bytes(b"beta\n")
    assert job not in os.listdir(mnt / "jobs")
    world.push(src, job, project=project)
    # a lookup by name asks the store at once; the listings catch up within a refresh
    assert (mnt / "jobs" / job / "result.txt").read_bytes() == b"beta\n"
    wait_until(lambda: job in os.listdir(mnt / "jobs"), f"{job} in /jobs", 10)
    wait_until(lambda: project in os.listdir(mnt / "projects"), "project in /projects", 10)
    assert sorted(os.listdir(mnt / "projects" / project / "jobs")) == [job, "latest"]
    assert os.readlink(mnt / "projects" / project / "jobs" / "latest") == job


def test_job_removed_while_mounted_disappears(world: World, mnt: Path) -> None:
    job = f"job_gone_{mnt.name}"
    src = world.root / f"src_{job}"
    src.mkdir()
    (src / "x.txt").write_bytes(b"x\n")
    world.push(src, job)
    assert (mnt / "jobs" / job / "x.txt").read_bytes() == b"x\n"
    run_c3fs("rm", job, env=world.env)
    wait_until(lambda: job not in os.listdir(mnt / "jobs"), f"{job} to leave /jobs", 10)
    wait_until(lambda: not os.path.exists(mnt / "jobs" / job), "its name to go", 10)


def test_a_job_id_pushed_again_shows_its_new_content(world: World, mnt: Path) -> None:
    """Inode numbers are hashes of paths: a removed job id pushed again with other content
    (same sizes, same mtimes) must not be served from the old inode's cached pages."""
    job = f"job_again_{mnt.name}"
    src = world.root / f"src_{job}"
    src.mkdir()
    for content in (b"first content\n", b"other content\n"):
        (src / "result.txt").write_bytes(content)
        os.utime(src / "result.txt", ns=(MTIME_NS, MTIME_NS))
        world.push(src, job)
        wait_until(lambda: (mnt / "jobs" / job / "result.txt").exists(), f"{job} to appear", 10)
        with open(mnt / "jobs" / job / "result.txt", "rb") as f:  # held open: the inode stays
            assert f.read() == content
            if content.startswith(b"first"):
                run_c3fs("rm", job, env=world.env)
                wait_until(lambda: not os.path.exists(mnt / "jobs" / job), f"{job} to go", 10)


@pytest.mark.parametrize("ref, expected", [
    (f"/jobs/{JOB}", None),
    (f"/projects/{PROJECT}/jobs/{JOB}/sub", ["deeper"]),
    ("/datasets/ds_one", None),
])
def test_mount_of_one_ref(world: World, tmp_path: Path, ref: str, expected) -> None:
    if "datasets" in ref:
        run_c3fs("cp", "-r", str(world.src), f"/projects/{PROJECT}/datasets/ds_one",
                 env=world.env)
    with mount(world.env, tmp_path / "m", ref) as m:
        names = sorted(os.listdir(os.fsencode(m)))
        if expected is None:
            assert names == sorted(os.listdir(os.fsencode(world.src)))
            assert (m / "hello.txt").read_bytes() == b"hello world\n"
            assert os.getxattr(m, "user.c3fs.digest")  # the root is the ref's tree
        else:
            assert names == [n.encode() for n in expected]
            assert (m / "deeper" / "file.txt").read_bytes() == b"deep\n" * 1000
        with pytest.raises(OSError) as exc:
            os.mkdir(m / "x")
        assert exc.value.errno == errno.EROFS


def read_direct(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    try:
        return b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    finally:
        os.close(fd)


def test_daemon_memory_stays_bounded(world: World, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = random.Random(9).randbytes(48 * 1024 * 1024)
    (src / "large.bin").write_bytes(payload)
    world.push(src, "job_large")
    with mount(world.env, tmp_path / "m", "/jobs/job_large", "--cache-size", "8MiB") as m:
        [pid] = daemon_pids(m)
        for _ in range(2):  # O_DIRECT: every byte comes from the daemon, not the page cache
            assert read_direct(m / "large.bin") == payload
        peak_kib = int(next(line.split()[1] for line in open(f"/proc/{pid}/status")
                            if line.startswith("VmHWM:")))
    assert peak_kib < (8 + 100) * 1024, f"daemon peak RSS {peak_kib} KiB"


# damage -----------------------------------------------------------------------------------
def test_corrupt_pack_gives_eio_for_that_file_only(world: World, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    shutil.copytree(world.store, store)
    env = dict(world.env, C3FS_STORE=str(store), C3FS_CACHE_DIR=str(tmp_path / "cache"))
    pack_file, offset, chunk = locate_chunk(store, tmp_path / "cache", monkeypatch,
                                            f"/jobs/{JOB}/victim.bin")
    with open(pack_file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    log_file = tmp_path / "mount.log"
    with mount(env, tmp_path / "m", None, "--log-file", str(log_file)) as m:
        job = m / "jobs" / JOB
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                (job / "victim.bin").read_bytes()
            assert exc.value.errno == errno.EIO
        assert (job / "big.bin").read_bytes() == (world.src / "big.bin").read_bytes()
        assert (job / "hello.txt").read_bytes() == b"hello world\n"
        assert os.path.ismount(m)
        log = log_file.read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert errors, log
    for line in errors:
        assert JOB in line and "victim.bin" in line and chunk.hex() in line, line
    assert "Traceback" not in log


def locate_chunk(store: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                 path: str) -> tuple[Path, int, bytes]:
    """(pack file, an offset inside the stored blob, chunk id) of the first chunk of `path`."""
    from c3fs.repo import Repo
    from c3fs.store.store import Store
    from c3fs.vfs import Vfs

    monkeypatch.setenv("C3FS_CACHE_DIR", str(cache))
    repo = Repo.open(str(store))
    try:
        chunk = Vfs(repo).resolve(path).entry.chunk_ids()[0]
        loc = repo.index.lookup(chunk)
    finally:
        repo.close()
    return store / Store.pack_key(loc.pack_id), loc.offset + loc.length // 2, chunk


# the daemon's life ------------------------------------------------------------------------
def test_umount_after_the_daemon_was_killed(world: World, tmp_path: Path) -> None:
    with mount(world.env, tmp_path / "m") as m:
        pids = daemon_pids(m)
        assert len(pids) == 1
        stop(pids[0], signal.SIGKILL)
        wait_until(lambda: not alive(pids[0]), "the daemon to die")
        with pytest.raises(OSError) as exc:
            os.listdir(m)
        assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
        run_c3fs("umount", str(m), env=world.env)
        assert not mounted(m)
        assert os.listdir(m) == []


def test_sigterm_unmounts_cleanly(world: World, tmp_path: Path) -> None:
    with mount(world.env, tmp_path / "m", f"/jobs/{JOB}") as m:
        assert (m / "hello.txt").read_bytes() == b"hello world\n"
        [pid] = daemon_pids(m)
        stop(pid, signal.SIGTERM)
        wait_until(lambda: not mounted(m), "SIGTERM to unmount")
        wait_until(lambda: not alive(pid), "the daemon to exit")


def test_the_daemon_records_what_it_loaded_for_the_next_mount(world: World, tmp_path: Path) -> None:
    """c3fs.preload: the next `c3fs mount` reads these files ahead (cold start-up)."""
    env = dict(world.env, C3FS_CACHE_DIR=str(tmp_path / "cache"))
    lists = tmp_path / "cache" / "preload"
    with mount(env, tmp_path / "m", f"/jobs/{JOB}") as m:
        assert (m / "hello.txt").read_bytes() == b"hello world\n"
        [pid] = daemon_pids(m)
        assert not (lists / "mount.txt").exists() or b"/pyfuse3/" not in (lists / "mount.txt").read_bytes()
        run_c3fs("umount", str(m), env=env)
        wait_until(lambda: not alive(pid), "the daemon to exit")
    files = (lists / "mount.txt").read_bytes().split(b"\n")
    assert any(b"/pyfuse3/" in f for f in files)  # only the daemon loads pyfuse3 and trio
    assert any(b"/trio/" in f for f in files)
    assert any(b"libfuse3.so" in f for f in files)


def test_foreground_mount_stops_on_sigint(world: World, tmp_path: Path) -> None:
    m = tmp_path / "m"
    m.mkdir()
    proc = subprocess.Popen([C3FS, "mount", "--foreground", f"/jobs/{JOB}", str(m)],
                            env=world.env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: os.path.ismount(m) or proc.poll() is not None, "foreground mount")
        assert (m / "hello.txt").read_bytes() == b"hello world\n"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, proc.stderr.read()
        assert not mounted(m)
    finally:
        force_unmount(m)
        proc.kill()
        proc.wait()


def test_mount_from_a_threaded_caller(world: World, tmp_path: Path) -> None:
    """With other threads alive, mount() starts `python -m c3fs.fuse` instead of forking."""
    m = tmp_path / "m"
    m.mkdir()
    code = ("import sys, threading; from c3fs.fuse import mount\n"
            "threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()\n"
            "mount(sys.argv[1], sys.argv[2], sys.argv[3])\n")
    try:
        subprocess.run([sys.executable, "-c", code, str(world.store), f"/jobs/{JOB}", str(m)],
                       env=world.env, check=True, timeout=60)
        assert os.path.ismount(m)
        assert (m / "hello.txt").read_bytes() == b"hello world\n"
        run_c3fs("umount", str(m), env=world.env)
        assert not mounted(m)
    finally:
        force_unmount(m)


def mount_error(world: World, *args: str, env: dict | None = None) -> str:
    proc = run_c3fs("mount", *args, env=env or world.env, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("c3fs: error: "), proc.stderr
    return lines[0]


def test_mount_errors_are_one_line(world: World, mnt: Path, tmp_path: Path) -> None:
    assert "does not exist" in mount_error(world, str(tmp_path / "missing"))
    (tmp_path / "file").write_text("x")
    assert "not a directory" in mount_error(world, str(tmp_path / "file"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "not empty" in mount_error(world, str(tmp_path / "full"))
    assert "busy" in mount_error(world, str(mnt))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "job_nope" in mount_error(world, "/jobs/job_nope", str(empty))
    assert "is a file" in mount_error(world, f"/jobs/{JOB}/hello.txt", str(empty))
    assert not mounted(empty)
    no_store = dict(world.env, C3FS_STORE=str(tmp_path / "no-store"))
    assert "no c3fs store" in mount_error(world, str(empty), env=no_store)
    no_fuse = dict(world.env, PATH="/nonexistent")
    assert "fusermount3" in mount_error(world, str(empty), env=no_fuse)


def test_a_daemons_error_keeps_its_kind_and_exit_code(world: World, tmp_path: Path) -> None:
    """The daemon resolves the ref and opens the store; what it reports comes back as the
    same kind of error, forked (the CLI) or spawned (a caller with threads)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_c3fs("mount", "/jobs/job_nope", str(empty), env=world.env, check=False)
    assert proc.returncode == 3 and "job_nope" in proc.stderr, proc.stderr  # NotFound
    no_store = dict(world.env, C3FS_STORE=str(tmp_path / "no-store"))
    proc = run_c3fs("mount", str(empty), env=no_store, check=False)
    assert proc.returncode == 5 and "no c3fs store" in proc.stderr, proc.stderr  # StoreError
    code = ("import sys, threading\n"
            "from c3fs.fuse import mount\n"
            "threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()\n"
            "try:\n"
            "    mount(sys.argv[1], '/jobs/job_nope', sys.argv[2])\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc.exit_code)\n")
    spawned = subprocess.run([sys.executable, "-c", code, str(world.store), str(empty)],
                             env=world.env, capture_output=True, text=True, timeout=60)
    assert spawned.stdout.split() == ["NotFound", "3"], spawned.stderr
    assert not mounted(empty)


def test_umount_of_a_busy_mount_and_lazy_umount(world: World, tmp_path: Path) -> None:
    with mount(world.env, tmp_path / "m", f"/jobs/{JOB}") as m:
        with open(m / "big.bin", "rb") as f:
            proc = run_c3fs("umount", str(m), env=world.env, check=False)
            assert proc.returncode != 0 and "busy" in proc.stderr and "--lazy" in proc.stderr
            run_c3fs("umount", "--lazy", str(m), env=world.env)
            assert not mounted(m)
            assert f.read(100) == (world.src / "big.bin").read_bytes()[:100]  # still served


def test_umount_of_something_not_mounted(world: World, tmp_path: Path) -> None:
    proc = run_c3fs("umount", str(tmp_path), env=world.env, check=False)
    assert proc.returncode != 0 and "not mounted" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_umount_refuses_a_mount_that_is_not_c3fs(world: World, tmp_path: Path) -> None:
    """As root, a typo (`c3fs umount /data`) must not unmount someone else's file system."""
    other = tmp_path / "tmpfs"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(other)], check=True)
    try:
        proc = run_c3fs("umount", str(other), env=world.env, check=False)
        assert proc.returncode != 0 and "not a c3fs mount (it is tmpfs)" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and mounted(other)
    finally:
        subprocess.run(["umount", str(other)], check=False)


# the Operations, called directly ----------------------------------------------------------
@pytest.fixture(params=[True, False], ids=["no-open", "open"])
def ops(world: World, monkeypatch: pytest.MonkeyPatch, request):
    from c3fs.fuse.ops import Operations
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    monkeypatch.setenv("C3FS_CACHE_DIR", world.env["C3FS_CACHE_DIR"])
    repo = Repo.open(str(world.store))
    yield Operations(Vfs(repo), stateless_open=request.param)
    repo.close()


def test_the_installed_pyfuse3_lets_files_open_without_requests(monkeypatch) -> None:
    """`make` builds pyfuse3 with patches/: without it every open costs two requests."""
    from c3fs.fuse.ops import opens_without_requests

    monkeypatch.delenv("C3FS_FUSE_OPEN", raising=False)
    assert opens_without_requests()
    assert not opens_without_requests("4.14.0-1-amd64")  # too old: it would fail the opens
    assert opens_without_requests("4.19.0") and opens_without_requests("6.1.0-27-cloud-amd64")
    monkeypatch.setenv("C3FS_FUSE_OPEN", "1")
    assert not opens_without_requests()


def test_open_answers_enosys_and_reads_go_by_inode(world: World, ops) -> None:
    import pyfuse3

    from c3fs.fuse import ops as ops_module

    expected = (world.src / "hello.txt").read_bytes()

    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        job = await ops.lookup(jobs.st_ino, JOB.encode())
        hello = await ops.lookup(job.st_ino, b"hello.txt")
        if not ops.stateless_open:
            fh = (await ops.open(hello.st_ino, os.O_RDONLY, None)).fh
            assert await ops.read(fh, 0, 100) == expected
            return
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.open(hello.st_ino, os.O_RDONLY, None)
        assert exc.value.errno == errno.ENOSYS  # the kernel opens files by itself from now on
        assert await ops.read(hello.st_ino, 0, 100) == expected
        assert await ops.read(hello.st_ino, 6, 5) == expected[6:11]
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.read(job.st_ino, 0, 10)  # a directory has no content
        assert exc.value.errno == errno.EISDIR
        many = await ops.lookup(job.st_ino, b"many")
        for i in range(ops_module.READERS + 10):  # readers are bounded by count
            small = await ops.lookup(many.st_ino, f"f{i:04d}".encode())
            assert await ops.read(small.st_ino, 0, 100) == f"small file {i}\n".encode()
        assert len(ops.readers) == ops_module.READERS
        await ops.forget([(small.st_ino, 1)])  # a forgotten inode loses its reader
        assert ops.readers.get(small.st_ino) is None

    trio.run(main)


def test_lseek_by_inode_or_by_handle(sparse_src: Path, ops) -> None:
    """lseek is handed the inode when files open without requests (the patched pyfuse3
    passes it for file handle 0, as to `read`), an OPEN's handle otherwise; ENXIO and
    EINVAL (a kind of seek the kernel answers itself) come from the errno table."""
    import pyfuse3

    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        job = await ops.lookup(jobs.st_ino, SPARSE_JOB.encode())
        tail = await ops.lookup(job.st_ino, b"tail.bin")
        fh = (tail.st_ino if ops.stateless_open
              else (await ops.open(tail.st_ino, os.O_RDONLY, None)).fh)
        assert await ops.lseek(fh, 0, os.SEEK_DATA) == 4 * MiB
        assert await ops.lseek(fh, 5, os.SEEK_HOLE) == 5
        assert await ops.lseek(fh, 4 * MiB, os.SEEK_HOLE) == tail.st_size
        for offset, whence, number in ((tail.st_size, os.SEEK_DATA, errno.ENXIO),
                                       (tail.st_size, os.SEEK_HOLE, errno.ENXIO),
                                       (0, os.SEEK_SET, errno.EINVAL)):
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await ops.lseek(fh, offset, whence)
            assert exc.value.errno == number, (offset, whence)

    trio.run(main)


def test_lookup_counts_are_released_by_forget(ops) -> None:
    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        job = await ops.lookup(jobs.st_ino, JOB.encode())
        again = await ops.lookup(jobs.st_ino, JOB.encode())
        assert job.st_ino == again.st_ino
        assert (await ops.getattr(job.st_ino)).st_mode & stat.S_IFDIR
        await ops.forget([(job.st_ino, 1)])
        assert (await ops.getattr(job.st_ino)).st_ino == job.st_ino  # one lookup left
        await ops.forget([(job.st_ino, 1), (jobs.st_ino, 1), (1, 1)])
        with pytest.raises(Exception) as exc:
            await ops.getattr(job.st_ino)
        assert exc.value.errno == errno.ENOENT
        assert (await ops.getattr(1)).st_ino == 1  # the root is never forgotten

    trio.run(main)


def test_listed_entries_are_rows_rebuilt_after_their_tree_left_the_cache(ops) -> None:
    """readdirplus makes every entry a lookup: the inode table keeps a row per entry (no
    node), rebuilds the node from its parent's tree when asked (reading the tree again if it
    was evicted), and drops the rows, then the parents' rows, as the kernel forgets them."""
    import pyfuse3

    from c3fs.fuse import ops as ops_module

    async def listing(ino: int) -> list[tuple[bytes, SimpleNamespace]]:
        """What the kernel's READDIRPLUS requests would get, in replies of up to 50 entries
        (the first may be shorter, FIRST_PLUS); an empty reply ends the listing."""
        found: list = []
        page: list = []

        def reply(token, name, attr, next_id) -> bool:
            if len(page) == 50:
                return False
            # what the reply holds: pyfuse3 copies the attributes (readdir reuses `attr`)
            page.append((name, SimpleNamespace(st_ino=attr.st_ino, st_size=attr.st_size,
                                               generation=attr.generation)))
            return True

        def reply_many(token, names, inos, modes, sizes=None, mtimes_ns=None,
                       generations=None, attr=None, first_id=0, blocks=None) -> int:
            """The same a run at a time (the patched pyfuse3's `readdir_reply_many`)."""
            taken = min(len(names), 50 - len(page))
            page.extend((names[k], SimpleNamespace(st_ino=inos[k], st_size=sizes[k],
                                                   generation=generations[k] % 2**64))
                        for k in range(taken))
            return taken

        fh = await ops.opendir(ino)
        real, pyfuse3.readdir_reply = pyfuse3.readdir_reply, reply
        real_many = ops_module.REPLY_MANY
        if real_many is not None:
            ops_module.REPLY_MANY = reply_many
        try:
            while True:
                page.clear()
                await ops.readdir(fh, len(found), SimpleNamespace(plus=True))
                found += page
                if not page:
                    return found
        finally:
            pyfuse3.readdir_reply = real
            ops_module.REPLY_MANY = real_many
            await ops.releasedir(fh)

    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        job = await ops.lookup(jobs.st_ino, JOB.encode())
        many = await ops.lookup(job.st_ino, b"many")
        entries = await listing(many.st_ino)
        assert [name for name, _ in entries] == [f"f{i:04d}".encode() for i in range(400)]
        rows = len(ops.inodes)
        ops.vfs.repo.blobs._cache.clear()  # the rows hold no node and no tree
        for name, attr in entries[::37]:
            again = await ops.getattr(attr.st_ino)
            assert (again.st_ino, again.st_size, again.generation) == (
                attr.st_ino, attr.st_size, attr.generation)
            looked = await ops.lookup(many.st_ino, name)
            assert looked.st_ino == attr.st_ino
            await ops.forget([(attr.st_ino, 1)])
        if ops.stateless_open:
            assert await ops.read(entries[-1][1].st_ino, 0, 100) == b"small file 399\n"
        await ops.forget([(many.st_ino, 1)])  # the kernel forgets the directory first
        assert len(ops.inodes) == rows
        await ops.forget([(attr.st_ino, 1) for _, attr in entries])
        assert len(ops.inodes) == rows - 401  # the last row below took the directory along
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.getattr(entries[0][1].st_ino)
        assert exc.value.errno == errno.ENOENT

    trio.run(main)


def test_the_read_after_a_lookup_takes_the_node_the_lookup_made(ops) -> None:
    """A file's LOOKUP keeps its node for the READ that follows (no rebuild from the row);
    a row that now names another entry, or a forgotten inode, is not answered from it."""
    from c3fs.errors import NotFound
    from c3fs.fuse import inodes as inodes_module

    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        job = await ops.lookup(jobs.st_ino, JOB.encode())
        many = await ops.lookup(job.st_ino, b"many")
        first = await ops.lookup(many.st_ino, b"f0003")
        kept = ops.inodes.cached(first.st_ino)
        assert kept.name == b"f0003" and ops.inodes.cached(first.st_ino) is kept
        if ops.stateless_open:
            assert await ops.read(first.st_ino, 0, 100) == b"small file 3\n"
        # the row names another index (as after a job id pushed again): rebuilt, not kept
        parent_ino, index = ops.inodes.table.row(first.st_ino)
        ops.inodes.table.add(first.st_ino, parent_ino, index + 1)
        with pytest.raises(NotFound):
            ops.inodes.cached(first.st_ino)  # entry index+1 has another inode number
        ops.inodes.table.add(first.st_ino, parent_ino, index)
        assert ops.inodes.cached(first.st_ino) is kept  # the same entry again
        ops.inodes._dirs.discard([many.st_ino])  # the directory's node is rebuilt: so is it
        rebuilt = ops.inodes.cached(first.st_ino)
        assert rebuilt is not kept and rebuilt.entry == kept.entry
        await ops.forget([(first.st_ino, 3)])
        assert first.st_ino not in ops.inodes and ops.inodes.find(first.st_ino) is None
        for i in range(inodes_module.FILES + 5):  # kept by count
            await ops.lookup(many.st_ino, f"f{i:04d}".encode())
        assert len(ops.inodes._files) == inodes_module.FILES

    trio.run(main)


@pytest.mark.logs("unexpected error in")
def test_handlers_raise_only_fuse_errors(ops) -> None:
    import pyfuse3

    async def main() -> None:
        jobs = await ops.lookup(1, b"jobs")
        for call, number in [
            (ops.lookup(jobs.st_ino, b"job_nope"), errno.ENOENT),
            (ops.mkdir(1, b"x", 0o755, None), errno.EROFS),
            (ops.getxattr(1, b"user.x", None), pyfuse3.ENOATTR),
            # unknown handle: unexpected -> EIO; unknown (forgotten) inode: ENOENT
            (ops.read(12345, 0, 10), errno.ENOENT if ops.stateless_open else errno.EIO),
        ]:
            with pytest.raises(pyfuse3.FUSEError) as exc:
                await call
            assert exc.value.errno == number

    trio.run(main)


def test_a_local_store_reads_a_windows_small_files_at_once(world: World, monkeypatch) -> None:
    """A window of the directory readahead on a local store: its small files' blobs are
    looked up together and read with one read per run of neighbours in a pack (it was a read
    a file), each verified; a damaged one is left for its own READ, the rest still pushed."""
    from c3fs.fuse.readahead import DirectoryReadahead
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    monkeypatch.setenv("C3FS_CACHE_DIR", world.env["C3FS_CACHE_DIR"])
    repo = Repo.open(str(world.store))
    try:
        vfs = Vfs(repo)
        many = vfs.resolve(f"/jobs/{JOB}/many".encode())
        pushed: dict[int, bytes] = {}
        readahead = DirectoryReadahead(vfs, None, lambda ino, data: pushed.update({ino: data}))
        reads: list[int] = []
        real_read = type(repo.store).read
        monkeypatch.setattr(type(repo.store), "read", lambda self, pack_id, offset, length:
                            reads.append(length) or real_read(self, pack_id, offset, length))
        tree = repo.tree(many.tree_id)
        victim = tree[3]  # f0003, the second file of the window (after f0002)
        loc = repo.index.lookup(victim.chunk_ids()[0])
        pack = repo.store.backend.root / repo.store.pack_key(loc.pack_id)
        original = pack.read_bytes()
        damaged = bytearray(original)
        damaged[loc.offset + loc.length // 2] ^= 0x40
        pack.write_bytes(bytes(damaged))
        try:
            readahead._read_after(many, b"f0001")
        finally:
            pack.write_bytes(original)
        window = [vfs.entry_node(many, tree[i]) for i in range(2, 2 + readahead.window)]
        got = {n.name: pushed.get(n.ino) for n in window}
        assert got.pop(b"f0003") is None
        assert got == {n.name: (world.src / "many" / n.name.decode()).read_bytes()
                       for n in window if n.name != b"f0003"}
        assert len(reads) <= 4, reads  # one a run of neighbours, then f0003 alone (one a file: 64)
    finally:
        repo.close()
