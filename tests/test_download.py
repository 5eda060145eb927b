"""The copy engine behind `cp` and `pull` (c3fs.jobs.download), called directly.

Both ways of staging a file are covered: unnamed (O_TMPFILE, named by linkat once complete)
and the fallback under a temp name (no /proc or no O_TMPFILE), each with big files written
whole by one worker or in parts by several. Either way a copy that fails half-way leaves no
file under its real name and no temp file, and a file or symlink in the way is replaced,
never written through.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trees

from c3fs.errors import DataError
from c3fs.jobs import download
from c3fs.jobs.download import Copier
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
    with pytest.raises(download.C3fsError):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    for path in entries(tmp_path / "dst"):  # links are placed whole; no file got a name
        assert stat.S_ISLNK(path.lstat().st_mode) or path.is_dir(), path
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
    with pytest.raises(download.C3fsError, match="big.bin"):
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

