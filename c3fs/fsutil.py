"""File-system helpers that the whole library shares, and how it writes sizes. Standard
library only, so that `c3fs.preload` can use them at the end of `c3fs --help` without
importing the store."""

from __future__ import annotations

import os
from pathlib import Path


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


def tree_bytes(path: str | os.PathLike) -> int:
    """The bytes of the files below `path` (0 if it is gone): a progress bar's total."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


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
