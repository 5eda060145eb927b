"""The Python memory a block of a test allocates at its peak (tracemalloc)."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class Traced:
    peak: int = 0  # bytes: the most Python memory allocated at once inside the block


@contextlib.contextmanager
def traced_peak() -> Iterator[Traced]:
    """`with traced_peak() as traced: ...`, then `traced.peak` (tracemalloc started for the
    block, stopped on the way out)."""
    traced = Traced()
    tracemalloc.start()
    try:
        yield traced
        traced.peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
