"""Fixtures of the reliability suite: source trees (built once per session) and sites."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from reliability.relkit import MiB, Site

BASE_NS = 1_700_000_000_123_456_789


def _half_random(rng: random.Random, size: int) -> bytes:
    """Half random, half repeated text: compressible like real outputs, not trivially."""
    head = rng.randbytes(size // 2)
    return head + (b"loss=0.%06d\n" % rng.randrange(10**6) * (size // 10 + 1))[: size - len(head)]


def write_tree(root: Path, seed: int, big: int, big_size: int, dirs: int, per_dir: int,
               max_small: int) -> Path:
    """A job output: `big` large files (alternating random and compressible MiB), `dirs`
    directories of `per_dir` small files (100 B .. `max_small`), a symlink, an empty file."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(big):
        with open(root / f"weights-{i}.bin", "wb") as f:
            for block in range(big_size // MiB):
                f.write(rng.randbytes(MiB) if block % 2 else bytes([i + block]) * MiB)
    for d in range(dirs):
        sub = root / f"step-{d:03d}"
        sub.mkdir()
        for k in range(per_dir):
            (sub / f"metrics-{k:03d}.txt").write_bytes(_half_random(rng, rng.randint(100, max_small)))
    (root / "empty").write_bytes(b"")
    os.symlink("weights-0.bin", root / "latest.bin")
    for i, path in enumerate(sorted(root.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, ns=(BASE_NS + i, BASE_NS + i))
    return root


@pytest.fixture(scope="session")
def big_tree(tmp_path_factory) -> Path:
    """~160 MiB: 3 files of 32 MiB and 2,000 small files in 20 directories."""
    return write_tree(tmp_path_factory.mktemp("big") / "src", 1, 3, 32 * MiB, 20, 100, 64 * 1024)


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory) -> Path:
    """~7 MiB: 2 files of 3 MiB (many chunks each) and 60 small files in 6 directories."""
    return write_tree(tmp_path_factory.mktemp("small") / "src", 2, 2, 3 * MiB, 6, 10, 200 * 1024)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A fresh local store and index cache of this test's own (nothing from the environment)."""
    return Site(str(tmp_path / "store"), tmp_path / "cache")
