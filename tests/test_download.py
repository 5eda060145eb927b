"""The copy engine behind `cp` and `pull` (c3fs.jobs.download), called directly.

Both ways of staging a file are covered: unnamed (O_TMPFILE, named by linkat once complete)
and the fallback under a temp name (no /proc or no O_TMPFILE), each with big files written
whole by one worker or in parts by several. Either way a copy that fails half-way leaves no
file under its real name and no temp file, and a file or symlink in the way is replaced,
never written through.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import subprocess
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
import trees

from c3fs.errors import BlobCorrupt, C3fsError, DataError
from c3fs.jobs import download
from c3fs.jobs.download import Copier
from c3fs.jobs.pull import pending_jobs, pull
from c3fs.jobs.push import push_dir
from c3fs.objects.tree import DIR, FILE
from c3fs.vfs import Vfs


@pytest.fixture(params=["unnamed", "temp-name"])
def staging(request, monkeypatch) -> str:
    if request.param == "temp-name":
        monkeypatch.setattr(download, "_open_proc_fds", lambda probe_dir: None)
    return request.param


@pytest.fixture(params=[1, 12], ids=["whole", "in-parts"])
def parts(request, monkeypatch) -> int:
    """Big files written by one worker, or in parts (about 12 for big.bin) by several."""
    if request.param > 1:
        monkeypatch.setattr(download, "PART", 256 * 1024)
    return request.param


def pushed(repo, tmp_path: Path) -> Vfs:
    src = tmp_path / "src"
    trees.odd_tree(src)
    big = trees.rand_bytes(3 * 1024 * 1024, 7)  # over SMALL_FILE: a task of its own
    trees.write_file(src / "big.bin", big, mode=0o444)
    push_dir(repo, str(src), "proj", "j1")
    return Vfs(repo)


def root(vfs: Vfs):
    return vfs.resolve("/jobs/j1")


def test_copy_restores_bytes_modes_and_mtimes(repo, tmp_path: Path, staging: str, parts: int,
                                              monkeypatch) -> None:
    vfs = pushed(repo, tmp_path)
    renamed: list[bytes] = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: renamed.append(b) or real_rename(a, b))
    stats = Copier(vfs, keep_setuid=True).copy(root(vfs), tmp_path / "dst")  # every mode bit
    links = sum(m.kind == "link" for m in trees.snapshot(tmp_path / "dst").values())
    assert len(renamed) == (links if staging == "unnamed" else links + stats.files)
    assert trees.diff(trees.without_special(trees.snapshot(tmp_path / "src")),
                      trees.snapshot(tmp_path / "dst")) == []
    assert stats.files == len([m for m in trees.snapshot(tmp_path / "dst").values()
                               if m.kind == "file"])
    assert not leftovers(tmp_path / "dst")


@pytest.mark.logs("injected")
def test_a_failed_copy_leaves_no_partial_and_no_temp_file(repo, tmp_path: Path, staging: str,
                                                          parts: int, monkeypatch) -> None:
    vfs = pushed(repo, tmp_path)
    real_chunk = Copier._chunk

    def failing_chunk(self, reader, i):
        data = real_chunk(self, reader, i)
        if i == len(reader.ids) - 1:
            raise DataError("injected: a file's last chunk went bad, after the others were written")
        return data

    monkeypatch.setattr(Copier, "_chunk", failing_chunk)
    with pytest.raises(C3fsError):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    for path in entries(tmp_path / "dst"):  # links are placed whole; of the files, only the
        mode = path.lstat().st_mode         # one without chunks (nothing to go bad) got a name
        assert stat.S_ISLNK(mode) or path.is_dir() or path.name == "empty", path
    assert (tmp_path / "dst" / "empty").read_bytes() == b""
    assert not leftovers(tmp_path / "dst")


def test_one_bad_part_of_a_big_file_drops_the_whole_file(repo, tmp_path: Path, staging: str,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(download, "PART", 256 * 1024)
    vfs = pushed(repo, tmp_path)
    real_chunk = Copier._chunk

    def one_bad_part(self, reader, i):
        if i == 2:  # big.bin's chunk 2 starts its second part (PART is one chunk here)
            raise DataError("injected: one part of the big file is bad")
        return real_chunk(self, reader, i)

    monkeypatch.setattr(Copier, "_chunk", one_bad_part)
    (tmp_path / "dst").mkdir()
    with pytest.raises(C3fsError, match="big.bin"):
        Copier(vfs).copy(vfs.resolve("/jobs/j1/big.bin"), tmp_path / "dst" / "big.bin")
    assert os.listdir(tmp_path / "dst") == []  # neither the file nor a temp file


def test_files_and_links_in_the_way_are_replaced(repo, tmp_path: Path, staging: str,
                                                 parts: int) -> None:
    vfs = pushed(repo, tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "big.bin").write_bytes(b"stale")
    (tmp_path / "precious").write_bytes(b"keep")
    os.symlink(tmp_path / "precious", dst / "random.bin")
    stats = Copier(vfs).copy(root(vfs), dst)
    assert (dst / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
    assert not (dst / "random.bin").is_symlink()
    assert (tmp_path / "precious").read_bytes() == b"keep"
    assert stats.skipped == 0 and not leftovers(dst)
    again = Copier(vfs).copy(root(vfs), dst)
    assert again.files == 0 and again.skipped == stats.files


def test_a_single_file_copies_into_the_current_dir(repo, tmp_path: Path, staging: str,
                                                   parts: int, monkeypatch) -> None:
    vfs = pushed(repo, tmp_path)
    monkeypatch.chdir(tmp_path)
    Copier(vfs).copy(vfs.resolve("/jobs/j1/big.bin"), "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()
    assert (tmp_path / "copy.bin").stat().st_mode & 0o777 == 0o444


def _default_acl(mode_other: int) -> bytes:
    """A default ACL (the kernel's xattr form): owner rwx, group rwx, others `mode_other`."""
    import struct

    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in ((0x01, 7), (0x04, 7), (0x20, mode_other)))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0])
def test_files_get_their_modes_with_or_without_fchmod(repo, tmp_path: Path, staging: str,
                                                      parts: int, umask: int,
                                                      monkeypatch) -> None:
    """A file is created with its final mode where the umask lets it through (no fchmod);
    any other gets fchmod: a mode the umask would change, setuid and the like, a file under
    a temp name, a directory whose default ACL decides new files' modes."""
    vfs = pushed(repo, tmp_path)
    calls = tmp_path / "fchmod"  # a file: the copy's writing process (a fork) counts there too
    real_fchmod = os.fchmod

    def fchmod(fd, mode):
        with open(calls, "a") as f:
            f.write(f"{mode}\n")
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    old = os.umask(umask)
    try:
        stats = Copier(vfs, keep_setuid=True).copy(root(vfs), tmp_path / "dst")
        (tmp_path / "acl").mkdir()
        os.setxattr(tmp_path / "acl", "system.posix_acl_default", _default_acl(0))
        Copier(vfs).copy(vfs.resolve("/jobs/j1/exec.sh"), tmp_path / "acl" / "exec.sh")
    finally:
        os.umask(old)
    assert trees.diff(trees.without_special(trees.snapshot(tmp_path / "src")),
                      trees.snapshot(tmp_path / "dst")) == []
    assert (tmp_path / "acl" / "exec.sh").stat().st_mode & 0o7777 == 0o755  # not 0o750
    modes = [m.mode for m in trees.snapshot(tmp_path / "src").values() if m.kind == "file"]
    needed = [m for m in modes if m & ~0o777 or m & umask or staging == "temp-name"]
    chmodded = [int(line) for line in calls.read_text().split()]
    assert sorted(chmodded) == sorted([*needed, 0o755])
    assert len(needed) < stats.files or staging == "temp-name"


def entries(path: Path) -> list[Path]:
    return [Path(d, n) for d, dirs, files in os.walk(path) for n in dirs + files]


def leftovers(path: Path) -> list[Path]:
    return [p for p in entries(path) if p.name.startswith(download.TMP.decode())]


def test_a_copy_leaves_the_decoded_chunk_cache_to_others(repo, tmp_path: Path) -> None:
    vfs = pushed(repo, tmp_path)
    big = vfs.resolve("/jobs/j1/big.bin")
    Copier(vfs).copy(root(vfs), tmp_path / "dst")
    assert not any(repo.blobs.peek(chunk) for chunk in big.entry.chunk_ids())
    vfs.open(big).read(0, 10)  # the mount's reads are still cached
    assert repo.blobs.peek(big.entry.chunk_ids()[0]) is not None


def test_a_filesystem_that_cannot_name_unnamed_files_gets_temp_names(repo, tmp_path: Path,
                                                                     monkeypatch) -> None:
    vfs = pushed(repo, tmp_path)
    real_link = os.link

    def no_linkat_from_proc(src, dst, *, src_dir_fd=None, **kw):
        if src_dir_fd is not None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", no_linkat_from_proc)
    Copier(vfs).copy(root(vfs), tmp_path / "dst")  # the probe failed, not the copy
    assert trees.diff(trees.as_copied(trees.snapshot(tmp_path / "src")),
                      trees.snapshot(tmp_path / "dst")) == []
    assert not leftovers(tmp_path) and os.listdir(tmp_path / "dst")


# chunks met again are read back from this copy's output --------------------------------------
def series(repo, tmp_path: Path) -> tuple[Vfs, Path]:
    """Three big files like checkpoint steps: each a copy of the last with a region rewritten."""
    src = tmp_path / "src"
    src.mkdir()
    step = bytearray(trees.rand_bytes(3 * 1024 * 1024, 11))
    for k in range(3):
        step[k * 700_000 : k * 700_000 + 100_000] = trees.rand_bytes(100_000, 20 + k)
        trees.write_file(src / f"step_{k}.bin", bytes(step))
    push_dir(repo, str(src), "proj", "j1")
    return Vfs(repo), src


def test_chunks_shared_by_big_files_are_read_back_not_fetched_again(
        repo, tmp_path: Path, staging: str, monkeypatch) -> None:
    monkeypatch.setattr(download, "PART", 256 * 1024)  # big files in parts, as in real copies
    vfs, src = series(repo, tmp_path)
    fetched: list[bytes] = []
    real_get = type(repo.blobs).get
    monkeypatch.setattr(type(repo.blobs), "get",
                        lambda self, blob, remember=True: fetched.append(blob) or
                        real_get(self, blob, remember))
    stats = Copier(vfs, workers=1).copy(root(vfs), tmp_path / "dst")  # one worker: in order
    for k in range(3):
        assert (tmp_path / "dst" / f"step_{k}.bin").read_bytes() == (src / f"step_{k}.bin").read_bytes()
    chunks = [c for k in range(3)
              for c in vfs.resolve(f"/jobs/j1/step_{k}.bin").entry.chunk_ids()]
    fetched_chunks = [c for c in fetched if c in set(chunks)]  # (trees are fetched, too)
    assert sorted(fetched_chunks) == sorted(set(chunks))  # each distinct chunk fetched once
    assert stats.reused > 3 * 1024 * 1024  # most of steps 1 and 2
    assert not leftovers(tmp_path / "dst")


def test_bytes_read_back_are_verified(repo, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(download, "PART", 256 * 1024)
    vfs, src = series(repo, tmp_path)

    class ChangedUnderUs:  # the copier's `os`, whose reads back find other bytes
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def pread(fd, n, offset):
            return bytes(n)

    monkeypatch.setattr(download, "os", ChangedUnderUs())
    stats = Copier(vfs, workers=1).copy(root(vfs), tmp_path / "dst")
    monkeypatch.undo()
    for k in range(3):  # nothing wrong was written: every chunk fell back to the store
        assert (tmp_path / "dst" / f"step_{k}.bin").read_bytes() == (src / f"step_{k}.bin").read_bytes()
    assert stats.reused == 0



# a damaged file is left out; every other file is copied -------------------------------------
def test_a_damaged_file_is_left_out_and_everything_else_copied(
        repo, tmp_path: Path, staging: str, parts: int, monkeypatch, caplog) -> None:
    vfs = pushed(repo, tmp_path)
    damaged = {b"big.bin": -1, b"exec.sh": 0, b"ro-dir/inside": 0}  # which chunk goes bad
    bad = {vfs.resolve(b"/jobs/j1/" + path).entry.chunk_ids()[i] for path, i in damaged.items()}
    real_chunk = Copier._chunk

    def bad_chunk(self, reader, i):
        if reader.ids[i] in bad:
            raise BlobCorrupt(reader.ids[i], "p" * 64, "injected")
        return real_chunk(self, reader, i)

    monkeypatch.setattr(Copier, "_chunk", bad_chunk)
    with pytest.raises(DataError, match="3 damaged files not copied") as info:
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    assert info.value.exit_code == 6
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(lines) == sorted(  # one line per damaged file (not one per part)
        f"cannot read /jobs/j1/{p.decode()}: blob {c.hex()} is corrupt in pack {'p' * 64}: injected"
        for p, c in zip(damaged, [vfs.resolve(b"/jobs/j1/" + p).entry.chunk_ids()[i]
                                  for p, i in damaged.items()], strict=True))
    expected = trees.as_copied(trees.snapshot(tmp_path / "src"))
    for path in damaged:
        del expected[path]
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []  # dirs' modes too
    assert not leftovers(tmp_path / "dst")


@pytest.mark.logs("is corrupt")
def test_small_files_are_read_a_batch_at_a_time_and_a_damaged_one_is_named(
        repo, tmp_path: Path, monkeypatch, caplog) -> None:
    """A batch of small files is read in a few reads of neighbouring blobs, not one a file;
    a blob damaged on disk among them is still found by its check and its file left out."""
    vfs = pushed(repo, tmp_path)
    small = [n for n in vfs.walk(root(vfs)) if n.kind == FILE and 0 < n.size <= download.BATCH_READ]
    assert len(small) >= 20
    victim = vfs.resolve(b"/jobs/j1/exec.sh")
    loc = repo.index.lookup(victim.entry.chunk_ids()[0])
    pack = repo.store.backend.root / repo.store.pack_key(loc.pack_id)
    raw = bytearray(pack.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x40
    pack.write_bytes(bytes(raw))
    reads: list[int] = []
    real_read = type(repo.store).read
    monkeypatch.setattr(type(repo.store), "read",
                        lambda self, pack_id, offset, length: reads.append(length)
                        or real_read(self, pack_id, offset, length))
    big = vfs.resolve(b"/jobs/j1/big.bin")
    with pytest.raises(DataError, match="1 damaged file not copied"):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"cannot read /jobs/j1/exec.sh: blob {victim.entry.chunk_ids()[0].hex()} is corrupt "
        f"in pack {loc.pack_id}: content does not match its id"]
    expected = trees.as_copied(trees.snapshot(tmp_path / "src"))
    del expected[b"exec.sh"]
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []
    trees_read = sum(n.kind == DIR for n in vfs.walk(root(vfs)))  # (the copy keeps none)
    small_reads = len(reads) - len(big.entry.chunk_ids()) - trees_read
    # a few batches (how the walk's batches fall varies with the load: 3, 4 and 7 seen), the
    # damaged blob again; one read a file would be ~28
    assert small_reads <= 10, (small_reads, len(small))


def test_a_damaged_directory_is_left_out_and_everything_else_copied(
        repo, tmp_path: Path, monkeypatch, caplog) -> None:
    vfs = pushed(repo, tmp_path)
    real_children = Vfs.iter_children

    def children(self, node, keep=True):
        if node.path[-1] == b"odd dir \xff":
            raise BlobCorrupt(node.tree_id, "p" * 64, "injected")
        return real_children(self, node, keep)

    monkeypatch.setattr(Vfs, "iter_children", children)
    with pytest.raises(DataError, match="1 damaged directory not copied"):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and lines[0].startswith("cannot read /jobs/j1/odd dir \\xff: blob ")
    expected = {path: meta for path, meta in
                trees.as_copied(trees.snapshot(tmp_path / "src")).items()
                if not path.startswith(b"odd dir \xff")}
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []


def test_an_unreadable_single_file_is_one_error(repo, tmp_path: Path, monkeypatch,
                                                caplog) -> None:
    vfs = pushed(repo, tmp_path)
    monkeypatch.setattr(Copier, "_chunk", lambda self, reader, i: (_ for _ in ()).throw(
        BlobCorrupt(reader.ids[i], "p" * 64, "injected")))
    with pytest.raises(DataError, match="^cannot read /jobs/j1/exec.sh: blob "):
        Copier(vfs).copy(vfs.resolve("/jobs/j1/exec.sh"), tmp_path / "exec.sh")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # raised, not logged
    assert not (tmp_path / "exec.sh").exists() and not leftovers(tmp_path)


# existing special files are written into, never replaced -----------------------------------
def job_x1(c3fs_bin, tmp_path: Path) -> Path:
    src = tmp_path / "o1"
    src.mkdir()
    (src / "metrics.json").write_bytes(b'{"loss": 0.25}\n' * 10_000)  # over a pipe's buffer
    (src / "sub").mkdir()
    (src / "sub" / "w.bin").write_bytes(trees.rand_bytes(300_000, 3))
    c3fs_bin("push", str(src), "-p", "p", "-j", "job_x1").ok()
    return src


def fifo_reader(path: Path) -> subprocess.Popen:
    os.mkfifo(path)
    return subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)


def read_all(reader: subprocess.Popen) -> bytes:
    try:
        return reader.communicate(timeout=30)[0]
    finally:
        reader.kill()
        reader.wait()


def test_cp_writes_into_a_fifo_and_keeps_it(c3fs_bin, tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    reader = fifo_reader(tmp_path / "fifo")
    try:
        c3fs_bin("cp", "/jobs/job_x1/metrics.json", str(tmp_path / "fifo"), timeout=30).ok()
    finally:
        got = read_all(reader)
    assert got == (src / "metrics.json").read_bytes()
    assert stat.S_ISFIFO((tmp_path / "fifo").lstat().st_mode)
    assert not leftovers(tmp_path)


def make_null(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)


def test_cp_writes_into_a_char_device_and_keeps_it(c3fs_bin, tmp_path: Path) -> None:
    job_x1(c3fs_bin, tmp_path)
    make_null(tmp_path / "mynull")
    before = (tmp_path / "mynull").lstat()
    c3fs_bin("cp", "/jobs/job_x1/metrics.json", str(tmp_path / "mynull")).ok()
    after = (tmp_path / "mynull").lstat()
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not leftovers(tmp_path)


def test_cp_r_and_pull_write_into_special_files_in_the_tree(c3fs_bin, tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    for dest, command in ((tmp_path / "cp", ["cp", "-r", "/jobs/job_x1/", str(tmp_path / "cp")]),
                          (tmp_path / "pull" / "job_x1",
                           ["pull", "job_x1", "--dest", str(tmp_path / "pull")])):
        (dest / "sub").mkdir(parents=True)
        make_null(dest / "sub" / "w.bin")
        reader = fifo_reader(dest / "metrics.json")
        try:
            c3fs_bin(*command, timeout=30).ok()
        finally:
            got = read_all(reader)
        assert got == (src / "metrics.json").read_bytes()
        assert stat.S_ISFIFO((dest / "metrics.json").lstat().st_mode)
        assert stat.S_ISCHR((dest / "sub" / "w.bin").lstat().st_mode)
        assert not leftovers(dest)


def test_cp_onto_a_socket_is_one_error(c3fs_bin, tmp_path: Path, monkeypatch) -> None:
    job_x1(c3fs_bin, tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative path keeps sun_path under its 108-byte limit
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock")
        error = c3fs_bin("cp", "/jobs/job_x1/metrics.json", "sock").one_line_error()
    assert error == "c3fs: error: sock is a socket; cannot write a file into it"
    assert stat.S_ISSOCK((tmp_path / "sock").lstat().st_mode)


# a file where a directory belongs on the way to the destination ----------------------------
@pytest.mark.parametrize("command", [
    ["pull", "--dest", "out1/metrics.json", "job_x1"],
    ["pull", "--dest", "out1/metrics.json/deeper", "job_x1"],
    ["cp", "-r", "/jobs/job_x1/", "out1/metrics.json/sub"],
    ["cp", "-r", "/jobs/job_x1/", "out1/metrics.json/sub/deeper"],
    ["cp", "/jobs/job_x1/metrics.json", "out1/metrics.json/copy.json"],
], ids=["pull", "pull-deeper", "cp-r", "cp-r-deeper", "cp"])
def test_a_file_on_the_way_to_the_destination_is_one_error(c3fs_bin, tmp_path: Path,
                                                          monkeypatch, command) -> None:
    job_x1(c3fs_bin, tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out1").mkdir()
    (tmp_path / "out1" / "metrics.json").write_bytes(b"mine")
    error = c3fs_bin(*command).one_line_error()
    assert error == "c3fs: error: out1/metrics.json exists and is not a directory"
    assert (tmp_path / "out1" / "metrics.json").read_bytes() == b"mine"


# pull marks a job by id and root: one re-created under the same id is pulled again ----------
def test_a_job_recreated_under_the_same_id_is_pulled_again(c3fs_bin, tmp_path: Path) -> None:
    for name, body in (("o1", b"first"), ("o3", b"second, different")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_bytes(body)
    dest = tmp_path / "pulled"
    c3fs_bin("push", str(tmp_path / "o1"), "-p", "vision", "-j", "job_q1").ok()
    assert "job_q1 ->" in c3fs_bin("pull", "--dest", str(dest)).ok().out
    assert "nothing new to pull" in c3fs_bin("pull", "--dest", str(dest)).ok().err
    c3fs_bin("rm", "job_q1").ok()
    c3fs_bin("push", str(tmp_path / "o3"), "-p", "vision", "-j", "job_q1").ok()
    assert "job_q1 ->" in c3fs_bin("pull", "--dest", str(dest)).ok().out
    assert (dest / "job_q1" / "metrics.json").read_bytes() == b"second, different"


def test_pulling_a_recreated_job_names_what_the_old_one_left(c3fs_bin, tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for src in (old, new):
        (src / "sub").mkdir(parents=True)
        (src / "metrics.json").write_bytes(src.name.encode())
    (old / "extra.bin").write_bytes(b"old only")
    (old / "sub" / "old.txt").write_bytes(b"old only")
    dest = tmp_path / "pulled"
    c3fs_bin("push", str(old), "-p", "vision", "-j", "job_q2").ok()
    c3fs_bin("pull", "--dest", str(dest)).ok()
    c3fs_bin("rm", "job_q2").ok()
    c3fs_bin("push", str(new), "-p", "vision", "-j", "job_q2").ok()
    res = c3fs_bin("pull", "--dest", str(dest)).ok()
    assert "re-created with other content" in res.err and "2 paths there" in res.err
    assert "extra.bin" in res.err and "sub/old.txt" in res.err
    assert (dest / "job_q2" / "extra.bin").read_bytes() == b"old only"  # left, as said
    assert (dest / "job_q2" / "metrics.json").read_bytes() == b"new"
    assert "re-created" not in c3fs_bin("pull", "job_q2", "--dest", str(dest)).ok().err
    assert "nothing new to pull" in c3fs_bin("pull", "--dest", str(dest)).ok().err


# a re-created job's files with the old sizes and mtimes: compared, not trusted -------------
MTIME = 1_767_225_600_000_000_000  # 2026-01-01: a reproducible build's, `cp -p`'s, a tarball's
BIG_OLD = trees.rand_bytes(3 * 1024 * 1024, 11)  # several chunks, over SMALL_FILE
BIG_NEW = BIG_OLD[:1024 * 1024] + trees.rand_bytes(4096, 12) + BIG_OLD[1024 * 1024 + 4096:]


def recreate(c3fs_bin, tmp_path: Path, job: str, old: dict[str, bytes],
             new: dict[str, bytes], *pull_args: str) -> Path:
    """Push `old` as `job`, pull it, remove it, push `new` (same mtimes) under the same id."""
    dest = tmp_path / "pulled"
    for name, files in (("old", old), ("new", new)):
        (tmp_path / name).mkdir()
        for file, body in files.items():
            trees.write_file(tmp_path / name / file, body, mtime_ns=MTIME)
    c3fs_bin("push", str(tmp_path / "old"), "-p", "vision", "-j", job).ok()
    c3fs_bin("pull", *pull_args, "--dest", str(dest)).ok()
    c3fs_bin("rm", job).ok()
    c3fs_bin("push", str(tmp_path / "new"), "-p", "vision", "-j", job).ok()
    return dest


@pytest.mark.parametrize("named", [False, True], ids=["pending", "named"])
def test_a_recreated_job_with_the_old_sizes_and_mtimes_gets_its_bytes(c3fs_bin, tmp_path: Path,
                                                                     named: bool) -> None:
    """The issue's reproduction: `pull` said "1 unchanged" and kept AAAA."""
    job = ("job_r",) if named else ()
    dest = recreate(c3fs_bin, tmp_path, "job_r", {"a": b"AAAA\n"}, {"a": b"BBBB\n"}, *job)
    res = json.loads(c3fs_bin("pull", *job, "--dest", str(dest), "--json").ok().out)
    assert [(p["job"], p["files"], p["unchanged"]) for p in res] == [("job_r", 1, 0)]
    assert (dest / "job_r" / "a").read_bytes() == b"BBBB\n"
    assert (dest / "job_r" / "a").stat().st_mtime_ns == MTIME


def test_a_recreated_jobs_files_that_match_are_left_untouched(c3fs_bin, tmp_path: Path) -> None:
    same = {"same.txt": b"kept", "empty": b"", "big-same.bin": BIG_NEW[::-1]}
    old = {**same, "a.txt": b"AAAA", "big.bin": BIG_OLD}
    new = {**same, "a.txt": b"BBBB", "big.bin": BIG_NEW}
    dest = recreate(c3fs_bin, tmp_path, "job_s", old, new) / "job_s"
    before = {name: (dest / name).stat() for name in old}
    res = json.loads(c3fs_bin("pull", "--dest", str(dest.parent), "--json").ok().out)
    assert [(p["files"], p["unchanged"]) for p in res] == [(2, 3)]
    for name, body in new.items():
        assert (dest / name).read_bytes() == body
        after = (dest / name).stat()
        assert after.st_mtime_ns == MTIME
        untouched = (after.st_ino, after.st_ctime_ns) == (before[name].st_ino,
                                                          before[name].st_ctime_ns)
        assert untouched == (name in same), name


@pytest.mark.parametrize("marked", [False, True], ids=["interrupted", "pulled"])
def test_a_pull_of_the_same_root_again_trusts_sizes_and_mtimes(repo, tmp_path: Path, monkeypatch,
                                                               marked: bool) -> None:
    """A first pull run again after an interruption (no mark yet), or the job named again
    once pulled: files with the job's sizes and mtimes are skipped unread, as before."""
    vfs = pushed(repo, tmp_path)
    target = tmp_path / "pulled" / "j1"
    if marked:
        pull(repo, ["j1"], str(tmp_path / "pulled"))
    else:
        Copier(vfs).copy(root(vfs), target, follow=False)  # what the interrupted pull wrote
    (target / "big.bin").unlink()
    compared: list[bytes] = []
    monkeypatch.setattr(download, "same_content", lambda path, entry: compared.append(path))
    [pulled] = pull(repo, ["j1"], str(tmp_path / "pulled"))
    assert compared == []
    assert pulled.stats.files == 1 and pulled.stats.skipped > 1
    assert (target / "big.bin").read_bytes() == (tmp_path / "src" / "big.bin").read_bytes()


def test_a_pull_to_another_destination_compares_what_is_there(repo, tmp_path: Path,
                                                               monkeypatch) -> None:
    """The mark names this root but another destination: what `target` holds (here a copy
    made by hand of other bytes, same size and mtime) is not known to be this job's. The
    comparison runs in a worker: a big file read to compare holds up no other file."""
    threads: list[str] = []
    real_same = download.same_content
    monkeypatch.setattr(download, "same_content", lambda path, entry: threads.append(
        threading.current_thread().name) or real_same(path, entry))
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / "a", b"new!", mtime_ns=MTIME)
    push_dir(repo, str(src), "proj", "j2")
    pull(repo, ["j2"], str(tmp_path / "first"))
    (tmp_path / "second" / "j2").mkdir(parents=True)
    trees.write_file(tmp_path / "second" / "j2" / "a", b"old!", mtime_ns=MTIME)
    [pulled] = pull(repo, ["j2"], str(tmp_path / "second"))
    assert (pulled.stats.files, pulled.stats.skipped) == (1, 0)
    assert (tmp_path / "second" / "j2" / "a").read_bytes() == b"new!"
    assert len(threads) == 1 and threads[0].startswith("c3fs-cp_"), threads
    [pulled] = pull(repo, ["j2"], str(tmp_path / "second"))  # marked there now: trusted
    assert (pulled.stats.files, pulled.stats.skipped) == (0, 1)


@pytest.mark.parametrize("marked", ["before", "after"])
def test_marks_without_a_root_still_count(repo, tmp_path: Path, marked: str) -> None:
    """A mark written before marks named the root: {"dest", "time"} only. It stands for the
    job that existed when it was written: the job is pending again only if created later."""
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "m.json").write_bytes(b"{}")
    record = push_dir(repo, str(tmp_path / "o1"), "vision", "job_q1")
    when = record.created + (-100 if marked == "before" else 100)
    repo.index.local_put("pulled/job_q1", json.dumps({"dest": "/x", "time": when}).encode())
    pending = [r.id for r in pending_jobs(repo)]
    assert pending == (["job_q1"] if marked == "before" else [])
    pull(repo, ["job_q1"], str(tmp_path / "pulled"))
    assert pending_jobs(repo) == []


def test_pull_goes_on_past_a_damaged_job(repo, tmp_path: Path, monkeypatch, caplog) -> None:
    """A job whose root cannot be read and one with a damaged file: both logged and left
    pending; the third job is pulled and marked."""
    for job in ("j_root", "j_file", "j_good"):
        (tmp_path / job).mkdir()
        for name in ("a.txt", "b.txt"):
            (tmp_path / job / name).write_bytes(f"{job}/{name}".encode() * 100)
        push_dir(repo, str(tmp_path / job), "vision", job)
    bad = Vfs(repo).resolve("/jobs/j_file/b.txt").entry.chunk_ids()[0]
    real_children, real_chunk = Vfs.iter_children, Copier._chunk

    def children(self, node, keep=True):
        if node.path == (b"jobs", b"j_root"):
            raise BlobCorrupt(node.tree_id, "p" * 64, "injected")
        return real_children(self, node, keep)

    def chunk(self, reader, i):
        if reader.ids[i] == bad:
            raise BlobCorrupt(bad, "p" * 64, "injected")
        return real_chunk(self, reader, i)

    monkeypatch.setattr(Vfs, "iter_children", children)
    monkeypatch.setattr(Copier, "_chunk", chunk)
    with pytest.raises(DataError, match=r"^2 jobs not pulled in full \(j_root, j_file\): .*; "
                                        r"1 job pulled in full$") as info:
        pull(repo, [], str(tmp_path / "pulled"))
    assert info.value.exit_code == 6 and [p.record.id for p in info.value.pulled] == ["j_good"]
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(line.split(": blob ")[0] for line in lines) == [
        "cannot read /jobs/j_file/b.txt", "cannot read /jobs/j_root"]
    assert not (tmp_path / "pulled" / "j_root").exists()
    assert os.listdir(tmp_path / "pulled" / "j_file") == ["a.txt"]
    assert sorted(os.listdir(tmp_path / "pulled" / "j_good")) == ["a.txt", "b.txt"]
    assert [r.id for r in pending_jobs(repo)] == ["j_root", "j_file"]
    with pytest.raises(download.CopyIncomplete, match="^/jobs/j_file: 1 damaged file not "):
        pull(repo, ["j_file"], str(tmp_path / "pulled"))  # one job alone: as cp -r says it


# destinations, as cp(1) treats them (issue 21) ---------------------------------------------
def test_cp_to_dash_writes_the_file_to_stdout(c3fs_bin, tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    res = c3fs_bin("cp", "/jobs/job_x1/metrics.json", "-", cwd=tmp_path).ok()
    assert res.out.encode() == (src / "metrics.json").read_bytes()
    assert not (tmp_path / "-").exists()
    error = c3fs_bin("cp", "/jobs/job_x1/sub/", "-", cwd=tmp_path).one_line_error()
    assert "only a file can be written to stdout" in error


def test_a_named_symlink_is_written_through(c3fs_bin, tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    body = (src / "metrics.json").read_bytes()
    os.symlink("/proc/self/fd/1", tmp_path / "stdout")  # what /dev/stdout is
    res = c3fs_bin("cp", "/jobs/job_x1/metrics.json", str(tmp_path / "stdout")).ok()
    assert res.out.encode() == body and (tmp_path / "stdout").is_symlink()
    (tmp_path / "real.json").write_bytes(b"old")
    inode = (tmp_path / "real.json").stat().st_ino
    os.symlink("real.json", tmp_path / "link.json")
    c3fs_bin("cp", "/jobs/job_x1/metrics.json", str(tmp_path / "link.json")).ok()
    assert os.readlink(tmp_path / "link.json") == "real.json"
    assert (tmp_path / "real.json").read_bytes() == body
    assert (tmp_path / "real.json").stat().st_ino == inode  # written in place, as cp does
    os.symlink("gone.json", tmp_path / "dangling")
    res = c3fs_bin("cp", "/jobs/job_x1/metrics.json", str(tmp_path / "dangling"))
    assert "is a symlink to nothing" in res.one_line_error() and res.code == 4
    assert not (tmp_path / "gone.json").exists()


def test_cp_r_into_a_symlink_to_a_directory_copies_into_that_directory(c3fs_bin,
                                                                       tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "dlink")
    c3fs_bin("cp", "-r", "/jobs/job_x1", str(tmp_path / "dlink")).ok()
    assert (tmp_path / "dlink").is_symlink()
    assert (tmp_path / "real" / "sub" / "w.bin").read_bytes() == (src / "sub" / "w.bin").read_bytes()


def test_a_source_ending_in_a_slash_is_a_directory_copy(c3fs_bin, tmp_path: Path) -> None:
    src = job_x1(c3fs_bin, tmp_path)
    c3fs_bin("cp", "/jobs/job_x1/", str(tmp_path / "local-output") + "/").ok()  # the seed's
    assert (tmp_path / "local-output" / "metrics.json").read_bytes() == (
        src / "metrics.json").read_bytes()
    error = c3fs_bin("cp", "/jobs/job_x1", str(tmp_path / "other")).one_line_error()
    assert "is a directory (use cp -r, or end it with /)" in error


def test_inside_a_directory_copy_no_symlink_is_followed_out(c3fs_bin, tmp_path: Path) -> None:
    job_x1(c3fs_bin, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "metrics.json").write_bytes(b"keep")
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside / "metrics.json", dest / "metrics.json")
    os.symlink(outside, dest / "sub")
    res = c3fs_bin("cp", "-r", "/jobs/job_x1/", str(dest))
    assert res.one_line_error().endswith("dest/sub exists and is not a directory")
    assert sorted(os.listdir(outside)) == ["metrics.json"]
    assert (outside / "metrics.json").read_bytes() == b"keep"


def test_a_destination_inside_a_c3fs_mount_is_one_error(c3fs_bin, tmp_path: Path) -> None:
    from fusehelp import fuse_works, mount

    if not fuse_works():
        pytest.skip("needs FUSE")
    job_x1(c3fs_bin, tmp_path)
    with mount(dict(os.environ), tmp_path / "mnt", "/jobs/job_x1") as mnt:
        for command in (["cp", "-r", "/jobs/job_x1", str(mnt)],
                        ["cp", "/jobs/job_x1/metrics.json", str(mnt / "sub" / "x")],
                        ["pull", "-d", str(mnt), "job_x1"]):
            res = c3fs_bin(*command)
            assert "inside a c3fs mount" in res.one_line_error() and res.code == 4


def read_only_tmpfs(path: Path) -> None:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs")


def test_copying_again_into_a_read_only_destination_is_one_error(c3fs_bin,
                                                                 tmp_path: Path) -> None:
    job_x1(c3fs_bin, tmp_path)
    (tmp_path / "o1" / "link").symlink_to("metrics.json")
    c3fs_bin("push", str(tmp_path / "o1"), "-p", "p", "-j", "job_x2").ok()
    ro = tmp_path / "ro"
    read_only_tmpfs(ro)
    try:
        c3fs_bin("cp", "-r", "/jobs/job_x2", str(ro / "x")).ok()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for command in (["cp", "-r", "/jobs/job_x2", str(ro / "x")],
                        ["cp", "/jobs/job_x2/metrics.json", str(ro / "x" / "new")],
                        ["pull", "-d", str(ro), "job_x2"]):
            res = c3fs_bin(*command)
            assert "is on a read-only file system" in res.one_line_error() and res.code == 4
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


def test_a_file_with_other_links_or_another_owner_is_written_in_place(
        repo, tmp_path: Path, staging: str, parts: int) -> None:
    vfs = pushed(repo, tmp_path)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "big.bin").write_bytes(b"linked")
    os.link(dst / "big.bin", tmp_path / "other-name")
    (dst / "exec.sh").write_bytes(b"theirs")
    os.chmod(dst / "exec.sh", 0o600)
    owner = 65534 if os.geteuid() == 0 else os.geteuid()
    os.chown(dst / "exec.sh", owner, owner)
    before = {name: (dst / name).stat() for name in ("big.bin", "exec.sh")}
    Copier(vfs).copy(root(vfs), dst)
    src = tmp_path / "src"
    for name, st in before.items():
        now = (dst / name).stat()
        assert (dst / name).read_bytes() == (src / name).read_bytes()
        assert (now.st_ino, now.st_uid, now.st_mode) == (st.st_ino, st.st_uid, st.st_mode)
        assert now.st_mtime_ns == (src / name).stat().st_mtime_ns
    assert (tmp_path / "other-name").read_bytes() == (src / "big.bin").read_bytes()
    assert not leftovers(dst)
    assert Copier(vfs).copy(root(vfs), dst).files == 0  # unchanged now: skipped


def test_damaged_data_never_reaches_a_file_written_in_place(repo, tmp_path: Path,
                                                            monkeypatch) -> None:
    vfs = pushed(repo, tmp_path)
    (tmp_path / "mine").write_bytes(b"keep me")
    os.link(tmp_path / "mine", tmp_path / "big.bin")
    real_chunk = Copier._chunk

    def failing_chunk(self, reader, i):
        if i == len(reader.ids) - 1:
            raise DataError("injected: the last chunk went bad")
        return real_chunk(self, reader, i)

    monkeypatch.setattr(Copier, "_chunk", failing_chunk)
    with pytest.raises(DataError):
        Copier(vfs).copy(vfs.resolve("/jobs/j1/big.bin"), tmp_path / "big.bin")
    assert (tmp_path / "big.bin").read_bytes() == b"keep me" and not leftovers(tmp_path)


def test_big_file_tasks_leave_a_core_to_queued_small_files() -> None:
    """While a batch of small files is queued or running, at most `limit` big-file tasks run
    (the cores but the small files' thread's); once none is queued, or a queued one is
    cancelled, every task runs."""
    lanes = download._Lanes(1)

    def run(entered: threading.Event, release: threading.Event | None = None) -> threading.Thread:
        def task() -> None:
            with lanes.big():
                entered.set()
                if release is not None:
                    release.wait(10)
        thread = threading.Thread(target=task)
        thread.start()
        return thread

    batch = Future()
    lanes.small_queued(batch)
    first, second, release = threading.Event(), threading.Event(), threading.Event()
    threads = [run(first, release)]
    assert first.wait(5)
    threads.append(run(second))
    assert not second.wait(0.3)  # the other core is the small files' thread's
    release.set()
    assert second.wait(5)  # its turn came when the first ended
    for thread in threads:
        thread.join(5)

    batch.set_result(None)  # no small files left: no limit
    release = threading.Event()
    entered = [threading.Event() for _ in range(3)]
    threads = [run(e, release) for e in entered]
    assert all(e.wait(5) for e in entered)

    cancelled = Future()
    lanes.small_queued(cancelled)  # (three tasks run: a fourth waits)
    fourth = threading.Event()
    threads.append(run(fourth))
    assert not fourth.wait(0.3)
    assert cancelled.cancel()  # a batch that never runs frees the lanes as well
    assert fourth.wait(5)
    release.set()
    for thread in threads:
        thread.join(5)


def test_a_copy_with_small_and_big_files_keeps_a_core_for_the_small_files(
        repo, tmp_path: Path, monkeypatch) -> None:
    """On two cores, a big file's parts run one at a time while small files are queued
    (`_Lanes`), and every file is copied whole. The small files' thread is held until
    four big-file tasks have started, so that small batches are surely queued meanwhile."""
    monkeypatch.setattr(download, "PART", 256 * 1024)
    monkeypatch.setattr(download, "SMALL_BATCH", 1)  # each small file queued as it is met
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    vfs = pushed(repo, tmp_path)
    seen: list[tuple[int, int]] = []  # (big tasks running, small batches queued), per task
    started = threading.Event()
    real_big, real_write_files = download._Lanes.big, Copier._write_files

    @contextlib.contextmanager
    def big(self):
        with real_big(self):
            with self._cond:
                seen.append((self._running, self._smalls))
                if len(seen) >= 4:
                    started.set()
            yield

    def write_files(self, batch):
        started.wait(10)
        real_write_files(self, batch)

    def far_done(self, batch):  # (small files the copy's writing process wrote: copyproc)
        started.wait(10)
        real_far_done(self, batch)

    real_far_done = Copier._far_done
    monkeypatch.setattr(download._Lanes, "big", big)
    monkeypatch.setattr(Copier, "_write_files", write_files)
    monkeypatch.setattr(Copier, "_far_done", far_done)
    Copier(vfs).copy(root(vfs), tmp_path / "dst")
    assert trees.diff(trees.as_copied(trees.snapshot(tmp_path / "src")),
                      trees.snapshot(tmp_path / "dst")) == []
    assert len(seen) >= 10  # big.bin's parts
    assert sum(1 for _, smalls in seen if smalls) >= 3, seen
    assert all(running == 1 for running, smalls in seen if smalls), seen


def test_a_store_that_stops_answering_stops_the_copy_with_the_stores_exit_code(
        run_cli, store_env, tmp_path: Path, monkeypatch) -> None:
    """Not exit 6 (damage) for an outage: 5, the store's, saying how far the copy got and
    that a re-run goes on from there; the re-run, the store back, completes the copy."""
    from c3fs.store.backend import BackendError
    from c3fs.store.store import Store

    src = tmp_path / "src"
    for i in range(40):
        (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
        trees.write_file(src / f"d{i % 4}" / f"f{i:02d}.bin", trees.rand_bytes(300_000, i))
    run_cli(["push", str(src), "-p", "p", "-j", "j1"]).ok()
    real_read, reads = Store.read, tmp_path / "reads"  # counted in a file: the copy's
    # writing process (a fork: c3fs/jobs/copyproc.py) reads too

    def failing(self, *args, **kwargs):
        with open(reads, "a") as f:
            f.write(".")
        if reads.stat().st_size > 5:
            raise BackendError("no answer from the store within 6 s")
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(Store, "read", failing)
    monkeypatch.setenv("C3FS_CACHE_DIR", str(tmp_path / "other-cache"))  # nothing cached
    stopped = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "out")])
    line = stopped.assert_one_line_error()
    assert stopped.code == 5 and "unavailable" in line and "the copy stopped after" in line, line
    assert "run it again" in line
    monkeypatch.setattr(Store, "read", real_read)
    run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "out")]).ok()
    assert trees.diff(trees.as_copied(trees.snapshot(src)),
                      trees.snapshot(tmp_path / "out")) == []


def test_a_sparse_files_holes_stay_holes_in_its_copy(run_cli, tmp_path: Path) -> None:
    """A push stores a hole as zeros at almost no cost; `cp -r` and `pull` leave a hole
    there again (neither fetched nor written), also one at the file's end, and the bytes
    are the source's. One file in parts (over PART), one written whole (under it)."""
    src = tmp_path / "src"
    src.mkdir()
    for name, size in (("big.sparse", 64 * 1024 * 1024), ("small.sparse", 12 * 1024 * 1024)):
        with open(src / name, "wb") as f:
            f.truncate(size)  # holes, then data at a few places (not at the end)
            for at in (0, size // 3, size // 2):
                f.seek(at)
                f.write(trees.rand_bytes(5000, at))
    run_cli(["push", str(src), "-p", "p", "-j", "sp"]).ok()
    run_cli(["cp", "-r", "/jobs/sp", str(tmp_path / "cp")]).ok()
    run_cli(["pull", "sp", "-d", str(tmp_path / "pulled")]).ok()
    for copy in (tmp_path / "cp", tmp_path / "pulled" / "sp"):
        for name in ("big.sparse", "small.sparse"):
            original, copied = src / name, copy / name
            assert copied.stat().st_size == original.stat().st_size
            assert copied.read_bytes() == original.read_bytes()
            # each run of data costs at most the 1 MiB chunks of zeros on either side of it
            # (only a whole chunk of zeros is a known hole), and its own block
            assert copied.stat().st_blocks * 512 <= 3 * (2 * 1024 * 1024 + 8192), (copy, name)


# small files written by a second process (c3fs/jobs/copyproc.py) ---------------------------
def _near_batches(monkeypatch) -> list[list[bytes]]:
    """The names of the files the copy's own small files' thread writes, batch by batch."""
    near: list[list[bytes]] = []
    real = Copier._write_files

    def write_files(self, batch):
        near.append([os.path.basename(path) for _, path in batch])
        real(self, batch)

    monkeypatch.setattr(Copier, "_write_files", write_files)
    return near


def test_a_directorys_small_files_are_written_by_a_second_process(repo, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Every small file of a directory's copy from a local store is written by the process
    the copy forks, none by its own small files' thread, each as the source has it (bytes,
    mode, mtime); without that process (one CPU) they are all written here, alike."""
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    monkeypatch.setattr(download, "SMALL_BATCH", 4)  # (forked for the first full batch)
    vfs = pushed(repo, tmp_path)
    near = _near_batches(monkeypatch)
    stats = Copier(vfs, fork=True).copy(root(vfs), tmp_path / "dst")
    expected = trees.as_copied(trees.snapshot(tmp_path / "src"))
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []
    assert near == [] and stats.files == sum(1 for m in expected.values() if m.kind == "file")
    assert not leftovers(tmp_path / "dst")
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0})
    assert Copier(vfs, fork=True).copy(root(vfs), tmp_path / "one").files == stats.files
    assert trees.diff(expected, trees.snapshot(tmp_path / "one")) == []
    assert sum(map(len, near)) == stats.files - 1  # all but big.bin


def test_a_small_file_the_second_process_cannot_write_is_written_by_the_copy(
        repo, tmp_path: Path, monkeypatch) -> None:
    """The process is told where the chunks it is to read lie; a chunk not read there (here:
    one cached in memory, which the copy takes from its cache) leaves the file to the copy,
    which writes it the usual way. Nothing is written twice, nothing left out."""
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    monkeypatch.setattr(download, "SMALL_BATCH", 4)
    vfs = pushed(repo, tmp_path)
    exec_sh = vfs.resolve("/jobs/j1/exec.sh")
    vfs.open(exec_sh).read(0, exec_sh.size)  # its chunk now in the blob cache
    near = _near_batches(monkeypatch)
    stats = Copier(vfs, fork=True).copy(root(vfs), tmp_path / "dst")
    assert near == [[b"exec.sh"]]
    expected = trees.as_copied(trees.snapshot(tmp_path / "src"))
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []
    assert stats.files == sum(1 for m in expected.values() if m.kind == "file")


def test_a_copy_whose_second_process_dies_writes_the_rest_itself(repo, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """The process killed (-9) after its first answer: the copy writes every batch it had
    sent and not had answered, and the copy is whole, with no temp file."""
    import signal

    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    monkeypatch.setattr(download, "SMALL_BATCH", 2)
    vfs = pushed(repo, tmp_path)
    near = _near_batches(monkeypatch)
    real_far_done, answered = Copier._far_done, []

    def far_done(self, batch):
        real_far_done(self, batch)
        if not answered:
            os.kill(self._far.pid, signal.SIGKILL)
        answered.append(len(batch))

    monkeypatch.setattr(Copier, "_far_done", far_done)
    stats = Copier(vfs, fork=True).copy(root(vfs), tmp_path / "dst")
    expected = trees.as_copied(trees.snapshot(tmp_path / "src"))
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []
    assert not leftovers(tmp_path / "dst")
    files = sum(1 for m in expected.values() if m.kind == "file")
    assert stats.files == files and len(answered) > 2
    assert 0 < sum(map(len, near)) <= files - 1 - answered[0]  # (big.bin: not a small file)


def test_an_interrupted_copy_kills_its_second_process(repo, tmp_path: Path,
                                                      monkeypatch) -> None:
    """Ctrl-C while the copy walks: the process is killed and reaped (no orphan goes on
    writing), and what it had not named is gone with it."""
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    monkeypatch.setattr(download, "SMALL_BATCH", 2)
    vfs = pushed(repo, tmp_path)
    writers = []
    real_start = download.Writer.start

    def start(copier, unnamed):
        writers.append(real_start(copier, unnamed))
        return writers[-1]

    def interrupted(self, node, path, futures):
        raise KeyboardInterrupt

    monkeypatch.setattr(download.Writer, "start", start)
    monkeypatch.setattr(Copier, "_submit_big", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Copier(vfs, fork=True).copy(root(vfs), tmp_path / "dst")
    assert writers and writers[0] is not None
    with pytest.raises(ChildProcessError):  # reaped already
        os.waitpid(writers[0].pid, os.WNOHANG)
    assert not leftovers(tmp_path / "dst")


_KILLED_COPY = """
import os, sys, time
from c3fs.jobs import download
from c3fs.jobs.download import Copier
from c3fs.repo import Repo
from c3fs.vfs import Vfs

store, dst, ready = sys.argv[1:]
os.sched_getaffinity = lambda pid: {0, 1}
download.SMALL_BATCH = 2
download.FORK_AFTER = 0
copy, real = os.getpid(), Copier._write_new

def write_new(self, node, path, got, mode):
    if os.getpid() != copy:  # the writing process: says so, then writes nothing for an hour
        with open(ready + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(ready + ".tmp", ready)
        time.sleep(3600)
    real(self, node, path, got, mode)

Copier._write_new = write_new
vfs = Vfs(Repo.open(store))
Copier(vfs, fork=True).copy(vfs.resolve("/jobs/j1"), dst)
"""


def _gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaps has too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_copy_killed_with_minus_9_takes_its_second_process_along(
        repo, store_env, tmp_path: Path) -> None:
    """The copy (its own process here) killed with SIGKILL while its writing process has
    batches to write: that process is killed with it, not left writing on as an orphan
    (naming files after the copy is gone), and it has named nothing it had not finished."""
    import signal
    import sys
    import time

    pushed(repo, tmp_path)
    ready = tmp_path / "ready"
    copy = subprocess.Popen([sys.executable, "-c", _KILLED_COPY, str(store_env.store),
                             str(tmp_path / "dst"), str(ready)])
    child = None
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and copy.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the writing process never started writing"
        child = int(ready.read_text())
        copy.kill()
        copy.wait()
        deadline = time.monotonic() + 60  # (a bound, not a figure: it ends at once)
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child), "the writing process outlived the copy killed with -9"
    finally:
        if copy.poll() is None:
            copy.kill()
        if child is not None and not _gone(child):
            os.kill(child, signal.SIGKILL)
    assert not leftovers(tmp_path / "dst")


def test_a_copy_forks_only_past_a_few_batches_and_only_when_asked(repo, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """The process is forked once FORK_AFTER full batches of small files went to the copy's
    thread (a copy of a few hundred files, each job of a pull of many small ones, forks
    nothing), and only for a copy asked to (`fork`: the CLI's; a library does not fork
    inside its caller's program)."""
    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(download, "SMALL_BATCH", 2)
    vfs = pushed(repo, tmp_path)
    files = sum(1 for m in trees.snapshot(tmp_path / "src").values() if m.kind == "file")
    batches = (files - 1) // 2  # full ones (big.bin is no small file)
    started = []
    real_start = download.Writer.start
    monkeypatch.setattr(download.Writer, "start",
                        lambda copier, unnamed: started.append(1) or real_start(copier, unnamed))
    near = _near_batches(monkeypatch)
    monkeypatch.setattr(download, "FORK_AFTER", batches)
    assert Copier(vfs, fork=True).copy(root(vfs), tmp_path / "few").files == files
    assert started == [] and sum(map(len, near)) == files - 1
    monkeypatch.setattr(download, "FORK_AFTER", 0)
    assert Copier(vfs).copy(root(vfs), tmp_path / "library").files == files
    assert started == []
    monkeypatch.setattr(download, "FORK_AFTER", batches - 1)  # forked for the last batch
    near.clear()
    assert Copier(vfs, fork=True).copy(root(vfs), tmp_path / "many").files == files
    assert started == [1] and 0 < sum(map(len, near)) < files - 1
    for copy in ("few", "library", "many"):
        assert trees.diff(trees.as_copied(trees.snapshot(tmp_path / "src")),
                          trees.snapshot(tmp_path / copy)) == []


def test_the_clis_cp_and_pull_write_small_files_in_a_second_process_the_api_does_not(
        run_cli, tmp_path: Path, monkeypatch) -> None:
    """`c3fs cp -r` and `c3fs pull` of a tree with more small files than FORK_AFTER
    batches fork their writing process; the Python API's pull forks nothing inside its
    caller's program. Every copy is the source's."""
    import c3fs

    monkeypatch.setattr(download.os, "sched_getaffinity", lambda pid: {0, 1})
    src = tmp_path / "src"
    for i in range(7):
        (src / f"d{i}").mkdir(parents=True)
    for i in range((download.FORK_AFTER + 2) * download.SMALL_BATCH):
        trees.write_file(src / f"d{i % 7}" / f"f{i:04d}.json", trees.rand_bytes(200 + i, i))
    run_cli(["push", str(src), "-p", "p", "-j", "many"]).ok()
    started = []
    real_start = download.Writer.start
    monkeypatch.setattr(download.Writer, "start",
                        lambda copier, unnamed: started.append(1) or real_start(copier, unnamed))
    run_cli(["cp", "-r", "/jobs/many", str(tmp_path / "cp")]).ok()
    run_cli(["pull", "many", "-d", str(tmp_path / "pulled")]).ok()
    assert started == [1, 1]
    c3fs.pull("many", tmp_path / "api")
    assert started == [1, 1]
    for copy in (tmp_path / "cp", tmp_path / "pulled" / "many", tmp_path / "api" / "many"):
        assert trees.diff(trees.as_copied(trees.snapshot(src)), trees.snapshot(copy)) == []
