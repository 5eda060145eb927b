"""The copy engine behind `cp` and `pull` (c3fs.jobs.download), called directly.

Both ways of staging a file are covered: unnamed (O_TMPFILE, named by linkat once complete)
and the fallback under a temp name (no /proc or no O_TMPFILE), each with big files written
whole by one worker or in parts by several. Either way a copy that fails half-way leaves no
file under its real name and no temp file, and a file or symlink in the way is replaced,
never written through.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import trees

from c3fs.errors import BlobCorrupt, C3fsError, DataError
from c3fs.jobs import download
from c3fs.jobs.download import Copier
from c3fs.jobs.pull import pending_jobs, pull
from c3fs.jobs.push import push_dir
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
    stats = Copier(vfs).copy(root(vfs), tmp_path / "dst")
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
    assert trees.diff(trees.without_special(trees.snapshot(tmp_path / "src")),
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
    expected = trees.without_special(trees.snapshot(tmp_path / "src"))
    for path in damaged:
        del expected[path]
    assert trees.diff(expected, trees.snapshot(tmp_path / "dst")) == []  # dirs' modes too
    assert not leftovers(tmp_path / "dst")


def test_a_damaged_directory_is_left_out_and_everything_else_copied(
        repo, tmp_path: Path, monkeypatch, caplog) -> None:
    vfs = pushed(repo, tmp_path)
    real_children = Vfs.children

    def children(self, node):
        if node.path[-1] == b"odd dir \xff":
            raise BlobCorrupt(node.tree_id, "p" * 64, "injected")
        return real_children(self, node)

    monkeypatch.setattr(Vfs, "children", children)
    with pytest.raises(DataError, match="1 damaged directory not copied"):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(lines) == 1 and lines[0].startswith("cannot read /jobs/j1/odd dir \\xff: blob ")
    expected = {path: meta for path, meta in
                trees.without_special(trees.snapshot(tmp_path / "src")).items()
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
    assert "nothing new to pull" in c3fs_bin("pull", "--dest", str(dest)).ok().err


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
    real_children, real_chunk = Vfs.children, Copier._chunk

    def children(self, node):
        if node.path == (b"jobs", b"j_root"):
            raise BlobCorrupt(node.tree_id, "p" * 64, "injected")
        return real_children(self, node)

    def chunk(self, reader, i):
        if reader.ids[i] == bad:
            raise BlobCorrupt(bad, "p" * 64, "injected")
        return real_chunk(self, reader, i)

    monkeypatch.setattr(Vfs, "children", children)
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
