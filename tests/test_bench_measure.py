"""The bench's measuring primitives (bench/measure.py): a timed command's peak RSS is its own,
not the harness's, and its CPU time counts the process tree."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench import measure  # noqa: E402
from bench.measure import Command, run_timed  # noqa: E402

MiB = 1 << 20


def _touch(buffer: bytearray) -> None:
    buffer[:: 4096] = b"x" * len(buffer[:: 4096])  # make every page resident


@pytest.mark.parametrize("argv", [["true"], ["sleep", "0.1"]])
def test_peak_rss_is_not_the_harness(argv: list[str]) -> None:
    """A child of a harness holding 300 MiB used to report >= 300 MiB (ru_maxrss counts the
    parent's RSS copied at fork); a small command must report a small figure."""
    held = bytearray(300 * MiB)
    _touch(held)
    timed = run_timed(Command(argv))
    assert timed.peak_rss < 50 * MiB
    assert len(held) == 300 * MiB


@pytest.mark.skipif(measure._gnu_time() is None, reason="needs GNU time (/usr/bin/time)")
def test_peak_rss_sees_the_child() -> None:
    """A child that touches 120 MiB and exits at once (no poll may catch it) is still seen."""
    code = "b = bytearray(120 << 20); b[::4096] = b'x' * len(b[::4096])"
    timed = run_timed(Command([sys.executable, "-c", code]))
    assert timed.peak_rss >= 120 * MiB


def test_cpu_counts_descendants() -> None:
    """CPU time of a grandchild the child waited for is counted (wait4 of the tree)."""
    busy = f"{sys.executable} -c 'sum(range(3 * 10**7))'"
    timed = run_timed(Command(["sh", "-c", busy]))
    assert timed.cpu > 0.1


def test_without_gnu_time_the_poll_still_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure, "_gnu_time", lambda: None)
    code = "import time; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    timed = run_timed(Command([sys.executable, "-c", code]))
    assert 80 * MiB <= timed.peak_rss < 200 * MiB


def test_ceilings_time_each_kernel_over_the_whole_file(tmp_path: Path) -> None:
    """Every kernel runs over all of the file, recycled and fresh decoding and the first touch
    of new memory among them, and each floor sums its parts."""
    from bench import ceilings

    data = b"".join(bytes([i % 251]) * 4096 + bytes(range(256)) * 16 for i in range(600))
    path = tmp_path / "ckpt"
    path.write_bytes(data)
    found = ceilings._kernels(str(path))
    level = ceilings.c3fs_params()["zstd_level"]
    for name in ("fastcdc", "blake3", f"zstd-{level} dec", f"zstd-{level} dec, recycled",
                 "first touch"):
        wall, cpu, nbytes = found[name]
        assert nbytes == len(data) and wall > 0 and cpu >= 0, name
    floor = found[f"decode floor, recycled (zstd-{level} dec, recycled + blake3)"]
    parts = [found[f"zstd-{level} dec, recycled"], found["blake3"]]
    assert floor[0] == pytest.approx(sum(p[0] for p in parts))
