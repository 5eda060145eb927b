"""c3fs.memo: the single-flight (concurrent callers share one computation) and its errors;
the blob cache (`RandomCache`): its bound, its memory, and a second pass over more than it holds."""

from __future__ import annotations

import random
import threading

import pytest
from memkit import traced_peak

from c3fs.memo import LRU, RandomCache, SingleFlight
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
        cache: RandomCache[bytes, bytes] = RandomCache(limit, _cached_size)
        for _ in range(8 * limit // 770):  # turned over 8 times: the table rebuilt 3 times
            cache.put(rng.randbytes(32), rng.randbytes(rng.randint(50, 400)))
    assert 12_000 < len(cache) < 12_600
    assert traced.peak <= limit


def test_random_cache_keeps_its_bound_and_every_value_it_says_it_has() -> None:
    cache: RandomCache[int, bytes] = RandomCache(1000, len)
    rng = random.Random(3)
    kept: dict[int, bytes] = {}
    for _ in range(5000):
        key = rng.randrange(300)
        value = rng.randbytes(rng.randint(1, 120))
        cache.put(key, value)
        kept[key] = value
        assert cache.weight == sum(len(cache.get(k)) for k in range(300) if k in cache) <= 1000
        assert cache.get(key) == value  # the value just kept is never the one evicted
    assert all(cache.get(k) == kept[k] for k in range(300) if k in cache)
    cache.put(1, b"x" * 1001)  # heavier than the whole cache: never kept
    assert cache.get(1) in (None, kept[1])
    cache.clear()
    assert len(cache) == 0 and cache.weight == 0 and cache.get(key) is None
    cache.put(5, b"abc")
    assert cache.get(5) == b"abc" and cache.weight == 3


@pytest.mark.parametrize("kind", [LRU, RandomCache])
def test_a_second_pass_over_more_than_the_cache_holds_finds_some_of_it(kind) -> None:
    """The steps of a checkpoint series, or an epoch over a dataset: 1,250 blobs through a
    cache of 1,000, twice. The second pass finds a good part of them in `RandomCache`
    (about two thirds); an LRU, whose every miss evicts the blob wanted next, finds none."""
    cache = kind(1000 * 100, lambda v: len(v)) if kind is RandomCache else kind(1000 * 100, weigh=len)
    for key in range(1250):
        cache.put(key, bytes(100))
    hits = 0
    for key in range(1250):
        if cache.get(key) is not None:
            hits += 1
        else:
            cache.put(key, bytes(100))
    if kind is LRU:
        assert hits == 0
    else:
        assert hits > 400
