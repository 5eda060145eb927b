"""The local-directory backend: one file per key under a root directory.

- missing key: `get`/`size` raise KeyMissing; `delete` ignores it.
- repeated write: `put` replaces atomically (temp file, fsync, rename, fsync dir); packs
  may be written with sync=False and made durable together by `flush` (before any ref
  names them);
  `create` links the temp file into place, so it fails with KeyExists and never overwrites.
- crash half-way: only `.tmp.*` files can be left behind; `list` never shows them and
  `sweep_temp` removes old ones.
Files are created 0600 and directories 0700: a store is private to its owner.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from c3fs.fsutil import make_private_dir, walk_files
from c3fs.memo import LRU
from c3fs.objects.ids import token_hex
from c3fs.store.backend import LOCAL, BackendDefaults, BackendError, KeyExists, KeyMissing

TMP_PREFIX = ".tmp."
_FD_CACHE = 64
_IOV_MAX = 1024
_BLOCK = 4096  # O_DIRECT writes whole blocks from memory aligned to one
_DIRECT_MIN = 1024 * 1024  # smaller parts are written through the page cache


class LocalBackend(BackendDefaults):
    capabilities = frozenset({LOCAL})

    def __init__(self, root: str | os.PathLike, create: bool = True) -> None:
        """`create`: make the directory if missing (else a missing one has no keys)."""
        self.root = Path(root).absolute()
        self.url = str(self.root)
        self._fds: LRU[str, int] = LRU(_FD_CACHE, evicted=lambda key, fd: os.close(fd))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise BackendError(f"store {self.root} is not a directory (a local store is one: "
                               "check --store, C3FS_STORE or `store` in the c3fs config)")
        if not create:
            return
        try:
            make_private_dir(self.root)
        except OSError as exc:
            raise BackendError(f"cannot create store directory {self.root}: {exc.strerror}") from None

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/") or "\0" in key:
            raise BackendError(f"bad key {key!r}")
        return self.root / key

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.size(key) - offset
        cached = key.startswith("packs/")  # immutable by name: safe to keep open
        fd = self._open(key) if cached else self._open_once(key)
        try:
            return os.pread(fd, length, offset)
        except OSError as exc:
            raise BackendError(f"read {key}: {exc.strerror}") from None
        finally:
            if not cached:
                os.close(fd)

    def _open_once(self, key: str) -> int:
        try:
            return os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise KeyMissing(key) from None
        except OSError as exc:
            raise BackendError(f"open {key}: {exc.strerror}") from None

    def _open(self, key: str) -> int:
        return self._fds.get_or_make(key, lambda: self._open_once(key))

    def _forget_fd(self, key: str) -> None:
        fd = self._fds.pop(key)
        if fd is not None:
            os.close(fd)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            raise KeyMissing(key) from None

    def put(self, key: str, data: bytes | list[bytes], *, sync: bool = True) -> None:
        """Replace `key` atomically. With sync=False the data is not fsynced yet (only its
        writeback is started): call `flush([key])` before anything may depend on it."""
        tmp, path = self._write_temp(key, data, sync)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _unlink(tmp)
            raise BackendError(f"rename into {key}: {exc.strerror}") from None
        self._forget_fd(key)
        if sync:
            _fsync_dir(path.parent)

    def flush(self, keys: list[str]) -> None:
        """Make keys written with sync=False durable: fsync each file, then its directory.
        A missing key raises KeyMissing (after the keys before it were made durable)."""
        dirs = set()
        for key in keys:
            path = self._path(key)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise KeyMissing(key) from None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dirs.add(path.parent)
        for directory in dirs:
            _fsync_dir(directory)

    def create(self, key: str, data: bytes) -> None:
        tmp, path = self._write_temp(key, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeyExists(key) from None
        except OSError as exc:
            raise BackendError(f"link into {key}: {exc.strerror}") from None
        finally:
            _unlink(tmp)
        _fsync_dir(path.parent)

    def _write_temp(self, key: str, data: bytes | list[bytes], sync: bool = True) -> tuple[Path, Path]:
        path = self._path(key)
        tmp = path.parent / f"{TMP_PREFIX}{path.name}.{token_hex(6)}"
        try:
            make_private_dir(path.parent)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
                if sync:
                    os.fsync(fd)
                else:  # start writeback now, so the final flush finds little left to do
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError as exc:
            _unlink(tmp)
            what = "disk full" if exc.errno == errno.ENOSPC else exc.strerror
            raise BackendError(f"write {key} in {self.root}: {what}") from None
        return tmp, path

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """Walked with a stack, not recursion: a crafted tree of folders deeper than
        Python's recursion limit (under refs/, say) is listed, not a RecursionError. With
        `after`, folders whose keys all sort before it are not entered."""
        base, _, _ = prefix.rpartition("/")
        stack = [base]
        while stack:
            rel = stack.pop()
            entries = _scandir(self.root / rel if rel else self.root)
            first = _first_after(rel, after)
            if first:  # (the change log's folder of this hour: 100,000 names, a few new)
                entries = (e for e in entries if e.name >= first or first.startswith(e.name))
            for entry in entries:
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.name.startswith(TMP_PREFIX) or not (key.startswith(prefix)
                                                             or prefix.startswith(key + "/")):
                    continue
                if _is_dir(entry):
                    if not entry.is_symlink() and _may_hold_after(key, after):
                        stack.append(key)  # as os.walk: a symlink is never followed
                    continue
                if after is not None and key <= after:
                    continue
                try:
                    yield key, entry.stat().st_size
                except FileNotFoundError:
                    continue

    def delete(self, key: str) -> None:
        self._forget_fd(key)
        _unlink(self._path(key))

    def occupied(self) -> bool:
        """Whether the directory holds anything but a store's config and temp files."""
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return False
        return any(n != "config" and not n.startswith(TMP_PREFIX) for n in names)

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove temp files left by crashed writers, older than `older_than` seconds."""
        removed = 0
        cutoff = time.time() - older_than
        for entry in walk_files(self.root):  # any depth (os.walk recurses per level)
            if entry.name.startswith(TMP_PREFIX) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                _unlink(Path(entry.path))
                removed += 1
        return removed

    def close(self) -> None:
        self._fds.clear()


def _write_all(fd: int, data: bytes | list[bytes]) -> None:
    """Write `data` (bytes, or a list of parts gathered with writev) completely. The whole
    blocks at the start of a large first part in page-aligned memory (a pack's buffer, see
    `PackBuilder`) are written with O_DIRECT: the disk reads them from that memory, where
    a buffered write copies every byte into the page cache first (~18% of a push's CPU)."""
    parts = [memoryview(data)] if isinstance(data, bytes | bytearray) else [memoryview(p) for p in data]
    if parts:
        parts[0] = parts[0][_write_direct(fd, parts[0]) :]
    first = 0
    while first < len(parts):
        written = os.writev(fd, parts[first : first + _IOV_MAX])
        while first < len(parts) and written >= len(parts[first]):
            written -= len(parts[first])
            first += 1
        if written:
            parts[first] = parts[first][written:]


def _write_direct(fd: int, part: memoryview) -> int:
    """Write the whole blocks at the start of `part` with O_DIRECT, if it is large and
    page-aligned and the file system allows it; how many bytes were written (the rest is
    for an ordinary write, from the file offset this leaves)."""
    size = len(part) // _BLOCK * _BLOCK
    if size < _DIRECT_MIN or part.readonly or not _page_aligned(part):
        return 0
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:  # no direct I/O on this file system
        return 0
    done = 0
    try:
        while done < size:
            done += os.write(fd, part[done:size])
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: blocks this device refuses: write the rest as usual
            raise
    finally:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags)
    return done


def _page_aligned(part: memoryview) -> bool:
    import ctypes  # only here: the mount's start imports this module

    return ctypes.addressof(ctypes.c_char.from_buffer(part)) % _BLOCK == 0


def _first_after(folder: str, after: str | None) -> str:
    """A bound on the names in `folder` whose keys can sort after `after`: a name below it
    that is not a prefix of it ("ab" of "ab-x": "ab/..." sorts after "ab-x") sorts before
    `after`, and so does every key under it ("" when there is no such bound)."""
    if after is None:
        return ""
    inside = folder + "/" if folder else ""
    if not after.startswith(inside):
        return ""
    return after[len(inside):].partition("/")[0]


def _may_hold_after(folder: str, after: str | None) -> bool:
    """Whether a key under `folder` can sort after `after`."""
    inside = folder + "/"
    return after is None or inside > after or after.startswith(inside)


def _scandir(path: Path) -> Iterator[os.DirEntry]:
    """The entries of a directory as they are read, none held: a folder of 100,000 refs
    listed whole held ~800 B an entry (its DirEntry and the stat cached in it). None if the
    directory cannot be read (as os.walk, which skips it)."""
    try:
        with os.scandir(path) as entries:
            yield from entries
    except OSError:
        return


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
