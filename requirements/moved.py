"""Print the installed distributions whose versions differ from a lock file's pins.

Used by `make test-latest`: `python requirements/moved.py requirements.lock`.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def pins(lock: str) -> dict[str, str]:
    found = {}
    for line in open(lock, encoding="utf-8"):
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", line)
        if match:
            found[normal(match[1])] = match[2]
    return found


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: str) -> None:
    locked = pins(lock)
    installed = {normal(d.metadata["Name"]): d.version for d in metadata.distributions()}
    moved = [(n, locked[n], installed[n]) for n in sorted(locked)
             if n in installed and installed[n] != locked[n]]
    added = sorted(set(installed) - set(locked) - {"c3fs", "pip", "pyfuse3", "setuptools"})
    print(f"versions that moved from {lock}: {len(moved)}")
    for name, old, new in moved:
        print(f"  {name} {old} -> {new}")
    for name in added:
        print(f"  {name} {installed[name]} (not in the lock)")


if __name__ == "__main__":
    main(sys.argv[1])
