"""The caching helpers every layer uses: a bounded LRU, a bounded cache that evicts at
random, and a single-flight.

    trees = LRU(1024)                              # at most 1024 entries
    blobs = RandomCache(128 * MiB, weigh=len)      # at most 128 MiB of values
    fds = LRU(64, evicted=lambda key, fd: os.close(fd))
    fetches = SingleFlight()
    data = fetches.run(blob_id, lambda: fetch(blob_id))  # concurrent callers share one fetch

All are thread-safe. (`cachetools` was considered: its caches are not thread-safe and it
has no single-flight, so it would have been wrapped in the same locks as this.)
"""

from __future__ import annotations

import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Bounded(Generic[K, V]):
    """What both caches share: values by key, at most `limit` of their summed weights."""

    def __init__(self, limit: int, weigh: Callable[[V], int], items: dict[K, V]) -> None:
        self.limit = limit
        self._weigh = weigh
        self._items = items
        self._weight = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: K) -> bool:
        return key in self._items

    @property
    def weight(self) -> int:
        return self._weight


class LRU(_Bounded[K, V]):
    """The most recently used values by key, at most `limit` of them, or with `weigh`, at
    most `limit` of their summed weights (a value heavier than `limit` is never kept).
    `evicted(key, value)` is called, under the lock, for each value pushed out or replaced."""

    _items: OrderedDict[K, V]

    def __init__(self, limit: int, weigh: Callable[[V], int] | None = None,
                 evicted: Callable[[K, V], None] | None = None) -> None:
        super().__init__(limit, weigh or (lambda value: 1), OrderedDict())
        self._evicted = evicted

    def get(self, key: K) -> V | None:
        """The value, now the most recent, or None (never blocks for long)."""
        if key not in self._items:  # a miss takes no lock (a dict lookup is atomic): copies
            return None             # miss on every chunk, from several threads at once
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        """Keep `value` as the most recent; older values go while over the limit."""
        weight = self._weigh(value)
        if weight > self.limit:
            return
        with self._lock:
            self._drop(key)
            self._items[key] = value
            self._weight += weight
            while self._weight > self.limit:
                self._drop(next(iter(self._items)))

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value, or `make()` kept as the most recent (`make` runs under the lock: for
        quick work such as opening a file, never for a fetch)."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
                return value
            value = self._items[key] = make()
            self._weight += self._weigh(value)
            while self._weight > self.limit:
                self._drop(next(iter(self._items)))
            return value

    def pop(self, key: K) -> V | None:
        """Remove `key`; its value (not passed to `evicted`: the caller has it), or None."""
        with self._lock:
            value = self._items.pop(key, None)
            if value is not None:
                self._weight -= self._weigh(value)
            return value

    def discard(self, keys: list[K]) -> None:
        """Remove each of `keys` that is here (not passed to `evicted`, as `pop`)."""
        if not self._items:
            return
        with self._lock:
            items, weigh = self._items, self._weigh
            for key in items.keys() & keys:  # (a FORGET's 1,000s of keys: checked in C)
                self._weight -= weigh(items.pop(key))

    def pop_where(self, wanted: Callable[[K], bool]) -> int:
        """Remove every key `wanted` says yes to (each passed to `evicted`); how many."""
        with self._lock:
            keys = [key for key in self._items if wanted(key)]
            for key in keys:
                self._drop(key)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._items):
                self._drop(key)

    def _drop(self, key: K) -> None:
        value = self._items.pop(key, None)
        if value is None:
            return
        self._weight -= self._weigh(value)
        if self._evicted is not None:
            self._evicted(key, value)


class RandomCache(_Bounded[K, V]):
    """Values by key, at most `limit` of their summed weights (`weigh`); room is made by
    evicting entries chosen at random, and a hit changes nothing (no lock, no reordering).

    Why not an LRU, for decoded blobs: a reader that goes through more than the cache holds
    and then through it again (the steps of a checkpoint series, which share most of their
    chunks; an epoch over a dataset) finds nothing in an LRU, whose every miss evicts the
    oldest entry, the one wanted next. Random eviction degrades smoothly instead: reading
    three 256 MiB checkpoints of the bench's series through a 256 MiB cache decoded 768 MiB
    of chunks with the LRU and 394 MiB with this (a trace of the mount's READs and
    readahead, replayed against both). In the mount daemon itself, whose kernel READs come
    in a looser order, the LRU kept more: steps 2 and 3 decoded 1,178 chunks with it and
    799 with this. That is ~70 MB less to decode, ~0.07 s of CPU: `cat` of the three, cold,
    7 alternating pairs of 68e58e8 and this commit, gave 547 and 548 MB/s (daemon CPU 1.74
    and 1.72 s), the same within the noise. The gain grows with a series longer or bigger
    than the cache, where the LRU finds nothing at all. Random replacement is what CPU
    caches and Redis fall back on for the same reason. Where recency matters more than loops (file handles, a
    directory's rows), `LRU` stays."""

    def __init__(self, limit: int, weigh: Callable[[V], int]) -> None:
        super().__init__(limit, weigh, {})
        self._keys: list[K] = []  # every key in _items, in any order, for the random pick
        self._random = random.Random()

    def get(self, key: K) -> V | None:
        """The value, or None (a dict lookup: atomic, never blocks)."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep `value`; entries chosen at random go while over the limit."""
        weight = self._weigh(value)
        if weight > self.limit:
            return
        with self._lock:
            items, keys = self._items, self._keys
            old = items.get(key)
            if old is None:
                keys.append(key)
            else:
                self._weight -= self._weigh(old)
            items[key] = value
            self._weight += weight
            while self._weight > self.limit:
                i = self._random.randrange(len(keys))
                victim = keys[i]
                keys[i] = keys[-1]
                keys.pop()
                if victim == key:  # never the value just kept: it goes back in the list
                    keys.append(key)
                    continue
                self._weight -= self._weigh(items.pop(victim))

    def clear(self) -> None:
        with self._lock:
            self._items = {}
            self._keys = []
            self._weight = 0


class _Call:
    """One computation under way: its result, and an event only once someone waits for it."""

    __slots__ = ("value", "error", "done")

    def __init__(self) -> None:
        self.value = None
        self.error: BaseException | None = None
        self.done: threading.Event | None = None


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key share one computation: the first caller runs it, the
    others wait for its result, or get its exception.

    A call nobody waits for costs a dict entry and a small object: the event the others
    wait on is made only when a second caller comes (a copy fetches each chunk once, and
    a `concurrent.futures.Future`, with its lock and condition, was ~9 µs of every fetch)."""

    def __init__(self) -> None:
        self._calls: dict[K, _Call] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: K) -> bool:
        return key in self._calls

    def run(self, key: K, compute: Callable[[], V]) -> V:
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                call = self._calls[key] = _Call()
                waiter = None
            else:
                waiter = call.done
                if waiter is None:
                    waiter = call.done = threading.Event()
        if waiter is not None:
            waiter.wait()
            if call.error is not None:
                raise call.error
            return call.value
        try:
            call.value = compute()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:  # no one joins the call after this: those who did have its event
                del self._calls[key]
                done = call.done
            if done is not None:
                done.set()
        return call.value


# A listing allocates objects per entry (decoded tree entries, attributes, records), most of
# them short-lived; with the default gen0 threshold (700) the collector ran ~4 times per
# 1,000 entries and traversed every long-lived object (a cache's entries) at each older
# collection. Measured: the daemon's CPU in `find` of 200,000 files 1.42 -> 1.18 s.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Python's cyclic collector for a process that makes objects by the hundred thousand
    (the mount daemon, a command listing a big store): run it 70x less often."""
    import gc

    gc.set_threshold(*GC_THRESHOLDS)
