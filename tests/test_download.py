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
from c3fs.reader import FileReader
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
    real_chunks = FileReader.chunks

    def failing_chunks(self, first=0, stop=None):
        yield from real_chunks(self, first, stop)
        raise DataError("injected: a chunk went bad after the file's bytes were written")

    monkeypatch.setattr(FileReader, "chunks", failing_chunks)
    with pytest.raises(download.C3fsError):
        Copier(vfs).copy(root(vfs), tmp_path / "dst")
    for path in entries(tmp_path / "dst"):  # links are placed whole; no file got a name
        assert stat.S_ISLNK(path.lstat().st_mode) or path.is_dir(), path
    assert not leftovers(tmp_path / "dst")


def test_one_bad_part_of_a_big_file_drops_the_whole_file(repo, tmp_path: Path, staging: str,
                                                        monkeypatch) -> None:
    monkeypatch.setattr(download, "PART", 256 * 1024)
    vfs = pushed(repo, tmp_path)
    real_chunks = FileReader.chunks

    def one_bad_part(self, first=0, stop=None):
        if first == 2:
            raise DataError("injected: one part of the big file is bad")
        yield from real_chunks(self, first, stop)

    monkeypatch.setattr(FileReader, "chunks", one_bad_part)
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
