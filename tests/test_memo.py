"""c3fs.memo: the single-flight (concurrent callers share one computation) and its errors;
the LRU under the blob cache's weights."""

from __future__ import annotations

import random
import threading

import pytest
from memkit import traced_peak

from c3fs.memo import LRU, SingleFlight
from c3fs.reader import _cached_size

MiB = 1024 * 1024


def test_concurrent_callers_share_one_computation() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []
    results: list[int] = []

    def compute() -> int:
        calls.append(1)
        started.set()
        release.wait(10)
        return 42

    owner = threading.Thread(target=lambda: results.append(flight.run("k", compute)))
    owner.start()
    assert started.wait(10)
    waiters = [threading.Thread(target=lambda: results.append(flight.run("k", compute)))
               for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    while "k" in flight and flight._calls["k"].done is None:  # a waiter has joined
        threading.Event().wait(0.001)
    release.set()
    for thread in (owner, *waiters):
        thread.join(10)
    assert results == [42] * 4 and len(calls) == 1
    assert "k" not in flight
    assert flight.run("k", lambda: 7) == 7  # a later call computes again


def test_waiters_get_the_owners_error() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> int:
        started.set()
        release.wait(10)
        raise ValueError("bad chunk")

    def call() -> None:
        try:
            flight.run("k", failing)
        except ValueError as exc:
            errors.append(exc)

    owner = threading.Thread(target=call)
    owner.start()
    assert started.wait(10)
    waiter = threading.Thread(target=call)
    waiter.start()
    while flight._calls["k"].done is None:
        threading.Event().wait(0.001)
    release.set()
    owner.join(10)
    waiter.join(10)
    assert [str(e) for e in errors] == ["bad chunk", "bad chunk"]
    with pytest.raises(KeyError):
        flight.run("k", lambda: {}["missing"])
    assert "k" not in flight


def test_the_blob_cache_size_bounds_its_memory_for_small_blobs() -> None:
    """Blobs of 50-400 B turning over (`cat` of a million small files): what the cache
    allocates at its peak, the table's rebuilds included, stays within its size.
    (tracemalloc: RSS adds ~100 B an entry of part-filled pools, in the overhead too.)"""
    limit = 9 * MiB  # ~12,300 entries: a table of 2^16 slots, 5.3 an entry (the most is 6)
    rng = random.Random(7)
    with traced_peak() as traced:
        cache: LRU[bytes, bytes] = LRU(limit, weigh=_cached_size)
        for _ in range(8 * limit // 770):  # turned over 8 times: the table rebuilt 3 times
            cache.put(rng.randbytes(32), rng.randbytes(rng.randint(50, 400)))
    assert 12_000 < len(cache) < 12_600
    assert traced.peak <= limit
