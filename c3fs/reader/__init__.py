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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from c3fs.errors import (
    BlobCorrupt,
    BlobError,
    BlobMissing,
    BlobUnavailable,
    ChunkSizeMismatch,
    DataError,
    FormatError,
)
from c3fs.index import Index, IndexDamaged, Location
from c3fs.memo import LRU, SingleFlight
from c3fs.objects import codec
from c3fs.objects.tree import Entry
from c3fs.store.backend import BackendError, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)
MiB = 1024 * 1024
START = 4  # chunks fetched as soon as a file is opened
ENTRY_OVERHEAD = 256  # a cached blob's key, bytes header and LRU entry: counted in the cache
# size, else a million 225-byte chunks (`cat` of a million small files) held 2.5x their bytes


def _cached_size(data: bytes) -> int:
    return len(data) + ENTRY_OVERHEAD


class BlobSource:
    def __init__(self, store: Store, index: Index, cache_bytes: int = 128 * MiB, workers: int = 4):
        self.store = store
        self.index = index
        self.cache_bytes = cache_bytes
        self._cache: LRU[bytes, bytes] = LRU(cache_bytes, weigh=_cached_size)
        self._fetches: SingleFlight[bytes, bytes] = SingleFlight()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-fetch")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(self, blob_id: bytes, remember: bool = True) -> bytes:
        """Verified plain bytes of `blob_id`; BlobMissing / BlobCorrupt, never wrong bytes.
        `remember=False` leaves a fetched blob out of the LRU (a copy reads each chunk once,
        and would only push out what the mount or a tree walk still wants)."""
        data = self._cache.get(blob_id)
        if data is not None:
            return data
        return self._fetches.run(blob_id, lambda: self._load(blob_id, remember))

    def _load(self, blob_id: bytes, remember: bool) -> bytes:
        data = self._cache.get(blob_id)  # fetched by another caller just now
        if data is None:
            data = self._fetch(blob_id)
            if remember and len(data) <= self.cache_bytes // 4:
                self._cache.put(blob_id, data)
        return data

    def peek(self, blob_id: bytes) -> bytes | None:
        """The cached bytes of `blob_id`, or None: never fetches, so it may run on the FUSE
        event loop (which then sends only cache misses to a worker thread)."""
        return self._cache.get(blob_id)

    def prefetch(self, blob_ids: list[bytes]) -> None:
        """Start fetching blobs not yet cached or in flight, in worker threads."""
        for blob_id in blob_ids:
            if blob_id not in self._cache and blob_id not in self._fetches:
                self._pool.submit(self._quiet_get, blob_id)

    def _quiet_get(self, blob_id: bytes) -> None:
        try:
            self.get(blob_id)
        except DataError:
            pass  # the foreground read reports it

    def fetch_uncached(self, blob_id: bytes) -> bytes:
        """Read and verify a blob from the store itself, bypassing every cache (`verify`)."""
        return self._fetch(blob_id, cached=False)

    def _fetch(self, blob_id: bytes, cached: bool = True) -> bytes:
        try:
            return self._fetch_once(blob_id, cached)
        except BlobUnavailable:  # the store did not answer: a sync would not either
            raise
        except BlobMissing:
            # Another process may have repacked (gc) or pushed it: relearn packs, try again.
            self.index.sync(self.store, refs=False)
        except KeyMissing:
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
                size = self.store.pack_size(pack_id)
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
        store = self.store if cached else self.store.uncached
        try:
            return self._decode(blob_id, loc, self._read(store, blob_id, loc))
        except BlobCorrupt:
            # A disk cache under the store may hold a bad copy: drop it and read again, once.
            if not store.invalidate(loc.pack_id, loc.offset, loc.length):
                raise
            log.warning("blob %s: cached copy was damaged; read it again", blob_id.hex())
            return self._decode(blob_id, loc, self._read(store, blob_id, loc))

    @staticmethod
    def _read(store: Store, blob_id: bytes, loc: Location) -> bytes:
        try:
            return store.read(loc.pack_id, loc.offset, loc.length)
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
    """Random-access reads of one file: the one way to read a file's bytes (the mount, `cp`,
    `pull`, the mount's readahead). Cheap to create (`Vfs.open`); one per open handle.

    `read` serves any byte range and reads ahead when access is sequential; `chunk` serves
    one whole chunk (a copy writes a file chunk by chunk, its parts in parallel). With
    `remember=False` fetched chunks stay out of the LRU; `reuse(chunk_id)` may hand back a
    chunk's verified bytes from elsewhere (a copy's own output) before any fetch."""

    def __init__(self, blobs: BlobSource, entry: Entry, readahead: int = 8, *,
                 remember: bool = True, reuse: Callable[[bytes], bytes | None] | None = None
                 ) -> None:
        self.blobs = blobs
        self.ids = entry.chunk_ids()
        self.starts = [0, *itertools.accumulate(entry.sizes)]
        self.size = entry.size
        self.readahead = readahead
        self._remember = remember
        self._reuse = reuse
        self._next_offset = -1

    def start(self, chunks: int = START) -> None:
        """Begin fetching the first chunks in worker threads (on open: ready by the first
        read)."""
        self.blobs.prefetch(self.ids[:chunks])

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size, self._fetch)

    def read_cached(self, offset: int, size: int) -> bytes | None:
        """`read` from cached chunks only: None as soon as one is not cached (never blocks)."""
        return self._read(offset, size, self.blobs.peek)

    def chunk(self, i: int) -> bytes:
        """The verified bytes of chunk `i` (starting at `starts[i]`), as many as the tree says."""
        return self.check(i, self._fetch(self.ids[i]))

    def _fetch(self, chunk_id: bytes) -> bytes:
        if self._reuse is not None:
            data = self._reuse(chunk_id)
            if data is not None:
                return data
        return self.blobs.get(chunk_id, self._remember)

    def _read(self, offset: int, size: int, get: Callable[[bytes], bytes | None]) -> bytes | None:
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
            self.check(i, data)
            lo = max(offset - self.starts[i], 0)
            hi = min(end - self.starts[i], len(data))
            parts.append(data if lo == 0 and hi == len(data) else data[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def check(self, i: int, data: bytes) -> bytes:
        """`data`, the verified bytes of chunk `i`, if they are as many as the file's tree
        says (a crafted tree may claim 100 bytes of a 10-byte chunk); else ChunkSizeMismatch.
        Free: the blob's plain length was checked against its pack's trailer when decoded."""
        claimed = self.starts[i + 1] - self.starts[i]
        if len(data) != claimed:
            raise ChunkSizeMismatch(self.ids[i], claimed, len(data))
        return data
