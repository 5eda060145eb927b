"""c3fs.preload: each command records the files it loaded, and the next run reads them ahead.

Its effect is a timing (bench/README.md); what is tested here is that the lists are written,
only grow, are used, and that no list, a stale list or an unwritable cache costs nothing but
the read-ahead.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from c3fs import preload


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("C3FS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "preload"


def listed(cache: Path, command: str) -> set[bytes]:
    return set((cache / f"{command}.txt").read_bytes().split(b"\n")) - {b""}


def test_record_lists_bytecode_extensions_and_libraries(cache: Path) -> None:
    import lmdb.cpython  # an extension module

    preload.record("push")
    files = listed(cache, "push")
    assert os.fsencode(json.__spec__.cached) in files  # bytecode, not the source
    assert os.fsencode(threading.__spec__.cached) in files
    assert os.fsencode(lmdb.cpython.__file__) in files
    assert any(b"/libc.so" in f or b"/libc-" in f for f in files)  # mapped libraries
    assert all(f.startswith(b"/") for f in files)


def test_a_list_only_grows_and_is_not_rewritten_when_nothing_is_new(cache: Path) -> None:
    cache.mkdir(parents=True)
    (cache / "cp.txt").write_bytes(b"/some/module/loaded/by/an/earlier/version.pyc\n")
    preload.record("cp")
    first = listed(cache, "cp")
    assert b"/some/module/loaded/by/an/earlier/version.pyc" in first
    assert os.fsencode(json.__spec__.cached) in first
    before = (cache / "cp.txt").stat().st_mtime_ns
    os.utime(cache / "cp.txt", ns=(before - 10**9, before - 10**9))
    preload.record("cp")
    assert (cache / "cp.txt").stat().st_mtime_ns == before - 10**9  # nothing new: not written
    assert [p.name for p in cache.iterdir()] == ["cp.txt"]  # no temp file left


def test_start_reads_the_first_recorded_command_and_tolerates_any_list(cache: Path) -> None:
    assert preload.start(["--store", "/x", "push", "src"]) is None  # nothing recorded yet
    cache.mkdir(parents=True)
    (cache / "push.txt").write_bytes(b"\n".join([
        b"/no/such/file.pyc", b"", b"relative/path", b"\xff\xfe not utf-8", b"/dev/null",
        b"/" + b"x" * 5000, os.fsencode(json.__spec__.cached)]) + b"\n")
    before = set(threading.enumerate())
    assert preload.start(["--store", "/x", "push", "src"]) == "push"
    for thread in set(threading.enumerate()) - before:
        if thread.name == "c3fs-preload":
            thread.join(10)
    assert preload.start(["-v", "ls"]) is None


def test_no_read_ahead_when_the_listed_files_are_in_the_page_cache(tmp_path: Path) -> None:
    files = []
    for i in range(8):
        path = tmp_path / f"module_{i}.pyc"
        path.write_bytes(os.urandom(64 * 1024))
        os.sync()  # clean pages: the kernel may drop them (below)
        files.append(os.fsencode(path))
    for path in files:  # read: cached
        Path(os.fsdecode(path)).read_bytes()
    assert preload._cached(files + [b"/no/such/file.pyc"])
    with open(files[3], "rb") as f:  # one of the probed files evicted: read ahead
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    assert not preload._cached(files)  # (once: a probe that missed may start a read)
    assert preload._cached([])


def test_an_unwritable_cache_costs_only_the_list(cache: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"a file where the directory should be")
    preload.record("ls")  # no exception
    assert cache.read_bytes() == b"a file where the directory should be"


def test_each_command_records_its_list(c3fs_bin, store_env, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    assert c3fs_bin("push", str(tmp_path / "src"), "-p", "p", "--job", "j1").code == 0
    assert c3fs_bin("ls", "/jobs/").code == 0
    lists = store_env.cache / "preload"
    assert sorted(p.name for p in lists.iterdir()) == ["ls.txt", "push.txt"]
    push = listed(lists, "push")
    assert any(b"/c3fs/ingest/" in f for f in push)  # push loaded the ingest, ls did not
    assert not any(b"/c3fs/ingest/" in f for f in listed(lists, "ls"))
    assert c3fs_bin("push", str(tmp_path / "nonexistent"), "-p", "p").code != 0
    assert sorted(p.name for p in lists.iterdir()) == ["ls.txt", "push.txt"]
