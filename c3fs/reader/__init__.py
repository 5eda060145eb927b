"""Reading blobs and files: the one read path under the mount, `ls`, `cp` and `pull`.

`BlobSource.get` returns the verified plain bytes of a blob. It keeps a bounded LRU of
decoded blobs, merges concurrent requests for the same blob into one fetch, and can
prefetch blobs in worker threads. `FileReader` serves any byte range of a file by bisecting
the cumulative chunk offsets computed once at open, and reads ahead when access is sequential.

Thread-safe: the FUSE adapter calls it from worker threads, `cp` from a thread pool.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from c3fs.errors import BlobCorrupt, BlobError, BlobMissing, BlobUnavailable, DataError, FormatError
from c3fs.index import Index, IndexDamaged, Location
from c3fs.objects import codec
from c3fs.objects.tree import Entry
from c3fs.store.backend import Backend, BackendError, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)
MiB = 1024 * 1024


class LRU:
    """The `size` most recently used values by key (count-bounded). Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        """The value, now the most recent, or None (never blocks for long)."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def pop(self, key) -> None:
        with self._lock:
            self._items.pop(key, None)


class BlobSource:
    def __init__(self, store: Store, index: Index, cache_bytes: int = 128 * MiB, workers: int = 4):
        self.store = store
        self.index = index
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cached = 0
        self._inflight: dict[bytes, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(self, blob_id: bytes, remember: bool = True) -> bytes:
        """Verified plain bytes of `blob_id`; BlobMissing / BlobCorrupt, never wrong bytes.
        `remember=False` leaves a fetched blob out of the LRU (a copy reads each chunk once,
        and would only push out what the mount or a tree walk still wants)."""
        with self._lock:
            data = self._cache.get(blob_id)
            if data is not None:
                self._cache.move_to_end(blob_id)
                return data
            future = self._inflight.get(blob_id)
            owner = future is None
            if owner:
                future = self._inflight[blob_id] = Future()
        if not owner:
            return future.result()
        try:
            data = self._fetch(blob_id)
            if remember:
                self._remember(blob_id, data)
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            with self._lock:
                del self._inflight[blob_id]
        future.set_result(data)
        return data

    def peek(self, blob_id: bytes) -> bytes | None:
        """The cached bytes of `blob_id`, or None: never fetches, so it may run on the FUSE
        event loop (which then sends only cache misses to a worker thread)."""
        with self._lock:
            data = self._cache.get(blob_id)
            if data is not None:
                self._cache.move_to_end(blob_id)
            return data

    def prefetch(self, blob_ids: list[bytes]) -> None:
        """Start fetching blobs not yet cached or in flight, in worker threads."""
        with self._lock:
            wanted = [b for b in blob_ids if b not in self._cache and b not in self._inflight]
        for blob_id in wanted:
            self._pool.submit(self._quiet_get, blob_id)

    def _quiet_get(self, blob_id: bytes) -> None:
        try:
            self.get(blob_id)
        except DataError:
            pass  # the foreground read reports it

    def _remember(self, blob_id: bytes, data: bytes) -> None:
        if len(data) > self.cache_bytes // 4:
            return
        with self._lock:
            if blob_id in self._cache:
                return
            self._cache[blob_id] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)

    def fetch_uncached(self, blob_id: bytes) -> bytes:
        """Read and verify a blob from the store itself, bypassing every cache (`verify`)."""
        return self._fetch(blob_id, cached=False)

    def _fetch(self, blob_id: bytes, cached: bool = True) -> bytes:
        try:
            return self._fetch_once(blob_id, cached)
        except (BlobMissing, KeyMissing):
            # Another process may have repacked (gc) or pushed it: relearn packs, try again.
            self.index.sync(self.store, refs=False)
        except IndexDamaged as exc:  # a new, empty index is in its place: fill it, try again
            self.index.heal(exc, self.store)
        try:
            return self._fetch_once(blob_id, cached)
        except BlobError as exc:
            if isinstance(exc, BlobUnavailable) or not self._repair(blob_id):
                raise
        return self._fetch_once(blob_id, cached)

    def _repair(self, blob_id: bytes) -> bool:
        """The index is a cache and LMDB keeps no checksums: a damaged page can lose a blob's
        entry or garble it. If a pack the index lists holds the blob, relearn that pack's
        entries from its trailer in the store (the truth) and say whether that changed them."""
        loc = self.index.lookup(blob_id)
        if loc is not None and blob_id in self.index.pack_blob_ids(loc.pack_id):
            return False  # the entry agrees with its pack's list: the pack itself is at fault
        for pack_id in self.index.packs_holding(blob_id):
            try:
                size = self.store.backend.size(Store.pack_key(pack_id))
                entries = self.store.pack_entries(pack_id, size)
            except (BackendError, FormatError):  # gone (gc) or damaged: not this one
                continue
            if any(entry.id == blob_id for entry in entries):
                log.warning("the index had a wrong entry for blob %s; relearned pack %s",
                            blob_id.hex(), pack_id)
                self.index.add_pack(pack_id, size, entries, replace=True)
                return True
        return False

    def _fetch_once(self, blob_id: bytes, cached: bool = True) -> bytes:
        loc = self.index.lookup(blob_id)
        if loc is None:
            raise BlobMissing(blob_id)
        backend = self.store.backend if cached else getattr(self.store.backend, "uncached",
                                                              self.store.backend)
        try:
            return self._decode(blob_id, loc, self._read(backend, blob_id, loc))
        except BlobCorrupt:
            # A disk cache under the store may hold a bad copy: drop it and read again, once.
            invalidate = getattr(backend, "invalidate", None)
            key = Store.pack_key(loc.pack_id)
            if invalidate is None or not invalidate(key, loc.offset, loc.length):
                raise
            log.warning("blob %s: cached copy was damaged; read it again", blob_id.hex())
            return self._decode(blob_id, loc, self._read(backend, blob_id, loc))

    @staticmethod
    def _read(backend: Backend, blob_id: bytes, loc: Location) -> bytes:
        try:
            return backend.get(Store.pack_key(loc.pack_id), loc.offset, loc.length)
        except KeyMissing:
            raise BlobMissing(blob_id, loc.pack_id, "pack not in the store") from None
        except BackendError as exc:  # the store did not answer: nothing to repair
            raise BlobUnavailable(blob_id, loc.pack_id, str(exc)) from None

    @staticmethod
    def _decode(blob_id: bytes, loc: Location, stored: bytes) -> bytes:
        if len(stored) != loc.length:
            raise BlobCorrupt(blob_id, loc.pack_id, "pack is truncated")
        return codec.decode(blob_id, loc.codec, stored, loc.plain_len, loc.pack_id)


class FileReader:
    """Random-access reads of one file. Cheap to create; one per open handle."""

    def __init__(self, blobs: BlobSource, entry: Entry, readahead: int = 8) -> None:
        self.blobs = blobs
        self.ids = entry.chunk_ids()
        self.starts = [0, *itertools.accumulate(entry.sizes)]
        self.size = entry.size
        self.readahead = readahead
        self._next_offset = -1

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size, self.blobs.get)

    def read_cached(self, offset: int, size: int) -> bytes | None:
        """`read` from cached chunks only: None as soon as one is not cached (never blocks)."""
        return self._read(offset, size, self.blobs.peek)

    def _read(self, offset: int, size: int, get) -> bytes | None:
        end = min(offset + size, self.size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_left(self.starts, end) - 1
        if self.readahead and offset == self._next_offset:
            self.blobs.prefetch(self.ids[last + 1 : last + 1 + self.readahead])
        self._next_offset = end  # before fetching: concurrent sequential reads still prefetch
        parts = []
        for i in range(first, last + 1):
            data = get(self.ids[i])
            if data is None:
                return None
            lo = max(offset - self.starts[i], 0)
            hi = min(end - self.starts[i], len(data))
            parts.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def iter_chunks(self):
        """Every chunk of the file in order (for copying a whole file), reading ahead."""
        for i, blob_id in enumerate(self.ids):
            if self.readahead:
                self.blobs.prefetch(self.ids[i + 1 : i + 1 + self.readahead])
            yield self.blobs.get(blob_id)
