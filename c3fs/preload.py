"""Read ahead, in the background, the files a command needs to start: modules and libraries.

With a cold page cache most of a command's start-up is waiting for the disk: Python reads
~300 module and library files one after another. A command that ran once has recorded which
files it loaded (`record`, into the cache directory); the next run hands that list to the
kernel at once (`start`: `POSIX_FADV_WILLNEED` from a background thread), so the reads
overlap each other and the imports instead of queueing behind them. `c3fs mount` to the first
byte, cold: 0.31 s -> 0.26 s (bench/README.md). The lists only ever name files to read: a
stale or damaged list costs a failed open per line, never a wrong result.

Importing this costs nothing: standard library only (os, sys, threading) until `record`.
"""

from __future__ import annotations

import os
import sys
import threading

LIMIT = 4096  # files per list: more than any command loads


def cache_dir() -> str:
    """c3fs's cache directory: $C3FS_CACHE_DIR, else `cache_dir` of the config file
    (c3fs.settings), else $XDG_CACHE_HOME/c3fs (~/.cache/c3fs)."""
    base = os.environ.get("C3FS_CACHE_DIR")
    if base:
        return base
    from c3fs import settings

    return settings.value("cache_dir") or default_cache_dir()


def default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(xdg, "c3fs")


def _list_path(command: str) -> str:
    return os.path.join(cache_dir(), "preload", f"{command}.txt")


def start(argv: list[str]) -> str | None:
    """Start reading ahead for the first word of `argv` that names a recorded command;
    return that command (None if there is no list yet)."""
    try:
        cache_dir()
    except Exception:  # noqa: BLE001  (a bad config file: the command itself says so)
        return None
    for word in argv[:4]:
        if not word.isalpha():
            continue
        try:
            with open(_list_path(word), "rb") as f:
                paths = f.read().split(b"\n")[:LIMIT]
        except OSError:
            continue
        if not _cached(paths):
            threading.Thread(target=_read_ahead, args=(paths,), name="c3fs-preload",
                             daemon=True).start()
        return word
    return None


def _cached(paths: list[bytes], probes: int = 4) -> bool:
    """Whether the files of a list seem to be in the page cache already: the first page of
    a few of them, spread over the list, can be read without waiting for the disk. Then
    there is nothing to read ahead, and the thread only slows the imports it was meant to
    speed up (its system calls take the GIL from them: ~4 ms of a push's start)."""
    step = max(len(paths) // probes, 1)
    byte = bytearray(1)
    for path in paths[step - 1 :: step][:probes]:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # (a stale name: _read_ahead skips it too)
        try:
            os.preadv(fd, [byte], 0, os.RWF_NOWAIT)
        except OSError:  # EAGAIN: on the disk; or no RWF_NOWAIT here: read ahead as before
            return False
        finally:
            os.close(fd)
    return True


def _read_ahead(paths: list[bytes]) -> None:
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def loaded_files() -> set[bytes]:
    """The files this process has loaded: module bytecode (or source), extension modules
    and the shared libraries mapped into it."""
    files: set[bytes] = set()
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        path = getattr(spec, "cached", None) or getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isabs(path):
            files.add(os.fsencode(path))
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                path = line.rstrip(b"\n").partition(b"/")[2]
                if b".so" in path:
                    files.add(b"/" + path)
    except OSError:
        pass
    return files


def record(command: str) -> None:
    """Add the files this process has loaded to `command`'s list (written only when it
    grows; never raises: a read-only or full cache directory just means no read-ahead)."""
    path = _list_path(command)
    try:
        with open(path, "rb") as f:
            known = set(f.read().split(b"\n")) - {b""}
    except OSError:
        known = set()
    files = loaded_files()
    if files <= known:
        return
    from pathlib import Path

    from c3fs.fsutil import make_private_dir  # stdlib only, like this module

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        make_private_dir(Path(path).parent)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(b"\n".join(sorted(known | files)[:LIMIT]) + b"\n")
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
