"""File-system helpers that the whole library shares, and how it writes sizes. Standard
library only, so that `c3fs.preload` can use them at the end of `c3fs --help` without
importing the store."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


def make_private_dir(path: Path) -> None:
    """`mkdir -p` whose every new directory is owner-only (0700), whatever the umask.

    `Path.mkdir(mode, parents=True)` gives the intermediate directories the default mode
    (0777 under umask 0): a store's `packs/` or `refs/` would be writable by anyone.
    """
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not directory.is_dir():  # a file in the way
                raise


def walk_files(top: str | os.PathLike) -> Iterator[os.DirEntry]:
    """Every entry below `top` that is not a directory, depth first with an explicit stack
    (any depth; `os.walk` recurses per level before Python 3.12). Directories that cannot
    be listed are passed over: for counts and totals, not for copies."""
    stack = [os.fspath(top)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        yield entry
        except OSError:
            continue


def tree_bytes(path: str | os.PathLike) -> int:
    """The bytes of the files below `path` (0 if it is gone): a progress bar's total."""
    total = 0
    for entry in walk_files(path):
        try:
            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: str | os.PathLike) -> None:
    """`rm -rf path`, at any depth: each directory is opened relative to its parent and
    emptied with an explicit stack (`shutil.rmtree` recurses per level before Python 3.12,
    and fails on paths longer than PATH_MAX). Symlinks are removed, never followed; what
    cannot be removed is left, as `rmtree(ignore_errors=True)` does."""
    try:
        top = os.open(path, _DIR_FLAGS)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    stack: list[tuple[int, bytes, set[bytes]]] = [(top, b"", set())]  # fd, name, names left
    while stack:
        fd, name, left = stack[-1]
        sub = _unlink_files(fd, left)
        if sub is not None:
            try:
                stack.append((os.open(sub, _DIR_FLAGS, dir_fd=fd), sub, set()))
            except OSError:
                left.add(sub)
            continue
        os.close(fd)
        stack.pop()
        if stack:
            try:
                os.rmdir(name, dir_fd=stack[-1][0])
            except OSError:
                stack[-1][2].add(name)
    with contextlib.suppress(OSError):
        os.rmdir(path)


def _unlink_files(fd: int, left: set[bytes]) -> bytes | None:
    """Unlink every non-directory in directory `fd`; return a subdirectory not in `left`
    (to be emptied next), or None. What cannot be removed joins `left`."""
    try:
        names = [n for n in map(os.fsencode, os.listdir(fd)) if n not in left]
    except OSError:
        return None
    for name in names:
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                return name
            os.unlink(name, dir_fd=fd)
        except OSError:
            left.add(name)
    return None


def shortened(path: bytes | str, keep: int = 60) -> str:
    """`path` for a message: whole when short, else its two ends around `...`."""
    text = os.fsdecode(path)
    return text if len(text) <= 3 * keep else f"{text[:keep]}...{text[-keep:]}"


def json_name(key: str, raw: bytes) -> dict[str, str]:
    """A name or path for JSON output, exactly: `{key: text}` when `raw` is UTF-8; when it
    is not, the text (each byte that is not UTF-8 as `\\xNN`, as a name holding those four
    characters reads too) and `{key}_b64`, the bytes in base64. A reader takes `{key}_b64`
    when present, else `{key}` encoded as UTF-8."""
    try:
        return {key: raw.decode()}
    except UnicodeDecodeError:
        import base64

        return {key: raw.decode("utf-8", "backslashreplace"),
                key + "_b64": base64.b64encode(raw).decode("ascii")}


def count(n: int, noun: str) -> str:
    """`1 file`, `2 files`, `0 files`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human(n: int | float) -> str:
    """A size in binary units: `512 B`, `1.5 MiB`."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def age(ts: float | None) -> str:
    """How long ago `ts` was: `5s ago`, `3m ago`, `2h ago`, `4d ago`; `-` for none."""
    if not ts:
        return "-"
    seconds = max(0.0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def sorted_names(fd: int, run: int) -> Iterator[bytes]:
    """The names in directory `fd`, sorted (see `sorted_spilled`): a directory of 10 M names
    is never held whole (~70 B a name in a list). `scandir` has read all of it when this
    returns: `fd` may be closed then."""
    with os.scandir(fd) as listing:
        return sorted_spilled((os.fsencode(item.name) for item in listing), run)


def sorted_spilled(items: Iterable[bytes], run: int) -> Iterator[bytes]:
    """`items`, sorted (see `SpilledSort`). `items` has been read to its end when this
    returns."""
    sorter = SpilledSort(run)
    for item in items:
        sorter.add(item)
    return iter(sorter)


class SpilledSort:
    """Byte strings added one at a time and read back sorted, with at most `run` of them in
    memory: each `run` is sorted into a temporary file (four bytes of length, the item),
    and the files are merged when read."""

    def __init__(self, run: int) -> None:
        self.run = run
        self.count = 0
        self._runs: list[BinaryIO] = []
        self._batch: list[bytes] = []

    def add(self, item: bytes) -> None:
        self._batch.append(item)
        self.count += 1
        if len(self._batch) >= self.run:
            self._batch.sort()
            self._runs.append(_spill(self._batch))
            self._batch = []

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[bytes]:
        """The items in order: once (the spilled runs are read and closed)."""
        runs, batch = self._runs, sorted(self._batch)
        self._runs, self._batch = [], []
        if not runs:
            return iter(batch)
        import heapq

        return heapq.merge(*map(_read_run, runs), batch)


def _spill(items: list[bytes]) -> BinaryIO:
    import tempfile

    f = tempfile.TemporaryFile(prefix="c3fs-sort-")
    write = f.write
    for item in items:
        write(len(item).to_bytes(4, "big") + item)
    f.seek(0)
    return f


def _read_run(f: BinaryIO) -> Iterator[bytes]:
    with f:
        read = f.read
        while size := read(4):
            yield read(int.from_bytes(size, "big"))


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of `data` to `fd` (os.write may take only part of it: a pipe, a signal)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
