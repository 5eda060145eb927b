"""Reading blobs and files: the one read path under the mount, `ls`, `cp` and `pull`.

`BlobSource.get` returns the verified plain bytes of a blob. It keeps a bounded cache of
decoded blobs (evicting at random, not the least recently used: `memo.RandomCache`) (a tree's as an `EncodedTree`: its bytes and where its entries start, one
budget for chunks and trees), merges concurrent requests for the same blob into one fetch, and can
prefetch blobs in worker threads. `FileReader` serves any byte range of a file by bisecting
the cumulative chunk offsets computed once at open, and reads ahead when access is sequential.

Thread-safe: the FUSE adapter calls it from worker threads, `cp` from a thread pool.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from c3fs.errors import (
    BlobCorrupt,
    BlobError,
    BlobMissing,
    BlobUnavailable,
    ChunkSizeMismatch,
    DataError,
    FormatError,
    UsageError,
)
from c3fs.index import Index, IndexDamaged, Location
from c3fs.memo import RandomCache, SingleFlight
from c3fs.objects import codec
from c3fs.objects.tree import EncodedTree, Entry, PagedTree, file_digest, open_tree
from c3fs.reader.ahead import Ahead
from c3fs.reader.holes import Holes
from c3fs.store.backend import LOCAL, BackendError, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)
MiB = 1024 * 1024
START = 4  # chunks fetched as soon as a file is opened
WINDOW_ENV = "C3FS_READ_WINDOW"  # MiB a sequential reader of a remote store keeps in flight
WINDOW_FIRST = 8 * MiB  # a remote reader's first window; it doubles as the reader keeps up
WINDOW_MAX = 64 * MiB
WINDOW_JUMP = 1 * MiB  # the first window of a run that starts after a jump (not at 0)
SLACK = 1 * MiB  # a read this close to where the last ended (or 4 reads' length) continues it
RUN_GAP = 64 * 1024  # `get_many` reads blobs of a pack this close to each other in one read
RUN_MAX = 4 * MiB  # (at most this much in one)


def window_max() -> int:
    """$C3FS_READ_WINDOW MiB (default 64): the most a sequential reader of a remote store
    fetches ahead; 0 turns fetching ahead in merged ranged GETs off."""
    raw = os.environ.get(WINDOW_ENV)
    try:
        return int(float(raw) * MiB) if raw else WINDOW_MAX
    except ValueError:
        raise UsageError(f"{WINDOW_ENV}={raw!r} is not a number of MiB") from None


def ahead_enabled() -> bool:
    return window_max() > 0


# What a cached blob costs beyond its bytes, counted in the cache size so that the size bounds
# the cache's real memory (at 256, a 256 MiB cache of the 50-400 B blobs of `cat` of a
# million small files peaked at 332 MiB of RSS). Measured in isolation (such blobs under
# 32-byte keys turning over 8 times; RSS and tracemalloc):
# - the entry's objects, 256: key 65 B, the value's header 33 B, the OrderedDict's node
#   32 B (130 B traced), ~210-250 B of RSS with pymalloc's size classes and part-filled pools
#   (that was the LRU's; `RandomCache` has a list slot of 8 B in the node's place);
# - its share of the table, at most 6 x 48: a rebuild sizes it at the power of two above 3x
#   the entries (3-6 slots an entry), 28 B a slot, and 20 B more while it is rebuilt (the old
#   and the new table both alive).
# 544 kept a 256 MiB cache's peak within it (349,000 entries: 192 MiB), 512 did not (261 MiB).
ENTRY_OVERHEAD = 256 + 6 * 48


Tree = EncodedTree | PagedTree


def _cached_size(value: bytes | Tree) -> int:
    return (len(value) if type(value) is bytes else value.nbytes) + ENTRY_OVERHEAD


class BlobSource:
    def __init__(self, store: Store, index: Index, cache_bytes: int = 128 * MiB, workers: int = 4):
        self.store = store
        self.index = index
        self.cache_bytes = cache_bytes
        self.holes = Holes(store.config.chunk_max)  # how a push stores a sparse file's holes
        self._cache: RandomCache[bytes, bytes | Tree] = RandomCache(cache_bytes, _cached_size)
        # the last tree too big for the cache (a directory of ~500,000 entries with the
        # default cache): without it every lookup in such a directory read all of it again
        self._big_tree: tuple[bytes, Tree] | None = None
        self._fetches: SingleFlight[bytes, bytes] = SingleFlight()
        self._workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-fetch")
        # a remote store: prefetches go out as merged ranged GETs, many at once (see ahead.py)
        self.ahead = None if LOCAL in store.backend.capabilities or not ahead_enabled() \
            else Ahead(store, index, self._decode)

    @property
    def remote(self) -> bool:
        """Whether prefetches go through `Ahead` (a remote store): readers then read ahead."""
        return self.ahead is not None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.ahead is not None:
            self.ahead.close()

    def pause(self) -> None:
        """Drop queued prefetches and wait for those in flight (before a fork: a thread that
        holds this source when the process forks leaves its references in the child, where
        they keep the parent's LMDB environment from being let go). `resume` after."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def resume(self) -> None:
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="c3fs-fetch")

    def get(self, blob_id: bytes, remember: bool = True) -> bytes:
        """Verified plain bytes of `blob_id`; BlobMissing / BlobCorrupt, never wrong bytes.
        `remember=False` leaves a fetched blob out of the cache (a copy reads each chunk once,
        and would only push out what the mount or a tree walk still wants)."""
        data = self._cache.get(blob_id)
        if data is not None:
            return data if type(data) is bytes else data.data
        if self.ahead is not None and (data := self.ahead.take(blob_id)) is not None:
            if remember:
                self._remember(blob_id, data)
            return data
        return self._fetches.run(blob_id, lambda: self._load(blob_id, remember))

    def get_many(self, blob_ids: list[bytes]) -> dict[bytes, bytes]:
        """Verified plain bytes of as many of `blob_ids` as a local store gives in a few
        reads: looked up in one index transaction, neighbours in a pack read with one pread
        (a copy's small files: a lookup, a read and a few Python calls less a file). Left
        out, for `get` to fetch one by one with its retries, repairs and errors: what is
        cached (`get` has it), missing, damaged, or in a remote store. Kept nowhere."""
        return read_located(self.store, self.locate(blob_ids))

    def locate(self, blob_ids: list[bytes]) -> dict[bytes, Location]:
        """Where `get_many` would read those of `blob_ids` it reads (`read_located`): a local
        store's, not cached, and known to the index; {} if the index is damaged (`get`
        repairs it)."""
        if LOCAL not in self.store.backend.capabilities or not blob_ids:
            return {}
        wanted = [b for b in dict.fromkeys(blob_ids) if b not in self._cache]
        try:
            locs = self.index.lookup_many(wanted)
        except IndexDamaged:
            return {}
        return {blob_id: loc for blob_id, loc in zip(wanted, locs, strict=True)
                if loc is not None}

    def keep(self, blobs: dict[bytes, bytes]) -> None:
        """Keep verified plain bytes (from `get_many`) in the cache, as `get` would have."""
        for blob_id, data in blobs.items():
            self._remember(blob_id, data)

    def _remember(self, blob_id: bytes, data: bytes) -> None:
        """Keep a blob's plain bytes in the cache, unless they would take over a quarter of it."""
        if len(data) <= self.cache_bytes // 4:
            self._cache.put(blob_id, data)

    def _load(self, blob_id: bytes, remember: bool) -> bytes:
        data = self._cache.get(blob_id)  # fetched by another caller just now
        if data is None:
            data = self._fetch(blob_id)
            if remember:
                self._remember(blob_id, data)
        return data if type(data) is bytes else data.data

    def tree(self, tree_id: bytes, keep: bool = True) -> Tree:
        """The tree `tree_id`, opened (FormatError if damaged) and kept in the cache in
        place of its bytes; a tree too big for the cache is kept aside, the last one only.
        `keep=False`: kept nowhere (a walk that reads each tree once: cp, pull, verify, gc),
        nor are the pages of a paged directory (`PagedTree`) read through it."""
        tree = self.cached_tree(tree_id)
        if tree is None:
            tree = open_tree(self.get(tree_id, remember=keep),  # (keep=False: nor its bytes)
                             lambda page: self._page(page, keep), self._cached_page)
            if not keep:
                return tree
            if len(tree.data) <= self.cache_bytes // 4:
                self._cache.put(tree_id, tree)
            else:
                self._big_tree = (tree_id, tree)
        return tree

    def cached_tree(self, tree_id: bytes) -> Tree | None:
        """The tree if it is opened already, else None (never blocks: for the event loop)."""
        tree = self._cache.get(tree_id)
        if tree is None or type(tree) is bytes:
            big = self._big_tree
            return big[1] if big is not None and big[0] == tree_id else None
        return tree

    def _page(self, page_id: bytes, keep: bool) -> EncodedTree:
        """A page of a paged directory (an ordinary tree: never an index itself)."""
        page = self._cached_page(page_id)
        if page is None:
            page = EncodedTree(self.get(page_id, remember=False))
            if keep and len(page.data) <= self.cache_bytes // 4:
                self._cache.put(page_id, page)
        return page

    def _cached_page(self, page_id: bytes) -> EncodedTree | None:
        page = self._cache.get(page_id)
        return page if type(page) is EncodedTree else None

    def peek(self, blob_id: bytes) -> bytes | None:
        """The cached bytes of `blob_id` (or fetched ahead and decoded already), or None:
        never fetches nor decodes, so it may run on the FUSE event loop (which then sends
        only the rest to a worker thread)."""
        data = self._cache.get(blob_id)
        if data is None and self.ahead is not None:
            data = self.ahead.take_decoded(blob_id)
            if data is not None:
                self._remember(blob_id, data)
        return data if data is None or type(data) is bytes else data.data

    def prefetch(self, blob_ids: list[bytes],
                 skip: Callable[[bytes], bool] | None = None, keep: bool = True,
                 first: bool = False, wave: bool = False) -> None:
        """Start fetching blobs not yet cached or in flight, in worker threads (a remote
        store: in this order, neighbours in a pack merged into one ranged GET). `skip`:
        blobs the caller has elsewhere (a copy's own output); `keep=False`: a copy's, read
        once, fetched exactly and kept out of the store's disk cache; `first`: a remote
        store fetches them before what was asked for earlier (few bytes that one thread
        waits for, one file after another: a copy's small files); `wave`: a remote store
        reads over wider gaps if that fetches them all in one wave of GETs (a replayed
        trace, wanted at once: c3fs/reader/ahead.py `spans_of`)."""
        if self.ahead is not None:
            self.ahead.want(blob_ids, lambda b: b in self._cache or b in self._fetches
                            or (skip is not None and skip(b)), keep, first, wave)
            return
        for blob_id in blob_ids:
            if blob_id not in self._cache and blob_id not in self._fetches:
                try:
                    self._pool.submit(self._quiet_get, blob_id)
                except RuntimeError:  # closed, or paused for a fork: a prefetch is optional
                    return

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


def read_located(store: Store, where: dict[bytes, Location]) -> dict[bytes, bytes]:
    """The verified plain bytes of the blobs at those places in `store`'s packs, neighbours
    read at once (`_runs`); a blob whose pack cannot be read, or that is damaged, is left
    out (`BlobSource.get` says what is wrong). Needs no index: a copy's writing process
    (c3fs/jobs/copyproc.py) is sent the places."""
    got: dict[bytes, bytes] = {}
    for run in _runs(sorted((loc, blob_id) for blob_id, loc in where.items())):
        first, last = run[0][0], run[-1][0]
        try:
            stored = store.read(first.pack_id, first.offset,
                                last.offset + last.length - first.offset)
        except BackendError:  # (a missing pack too)
            continue
        for loc, blob_id in run:
            at = loc.offset - first.offset
            try:
                got[blob_id] = BlobSource._decode(blob_id, loc, stored[at : at + loc.length])
            except DataError:
                pass
    return got


def _runs(found: list[tuple[Location, bytes]], gap: int = RUN_GAP, most: int = RUN_MAX
          ) -> Iterator[list[tuple[Location, bytes]]]:
    """Sorted (location, blob id) pairs in runs that one read each covers: the same pack,
    at most `gap` bytes between neighbours, at most `most` bytes in all."""
    run: list[tuple[Location, bytes]] = []
    for item in found:
        loc = item[0]
        if run:
            first, last = run[0][0], run[-1][0]
            if (loc.pack_id != first.pack_id or loc.offset - (last.offset + last.length) > gap
                    or loc.offset + loc.length - first.offset > most):
                yield run
                run = []
        run.append(item)
    if run:
        yield run


class FileReader:
    """Random-access reads of one file: the one way to read a file's bytes (the mount, `cp`,
    `pull`, the mount's readahead). Cheap to create (`Vfs.open`); one per open handle.

    `read` serves any byte range and reads ahead when access is sequential; `chunk` serves
    one whole chunk (a copy writes a file chunk by chunk, its parts in parallel). With
    `remember=False` fetched chunks stay out of the cache; `reuse(chunk_id)` may hand back a
    chunk's verified bytes from elsewhere (a copy's own output) before any fetch."""

    def __init__(self, blobs: BlobSource, entry: Entry, readahead: int = 8, *,
                 remember: bool = True, reuse: Callable[[bytes], bytes | None] | None = None
                 ) -> None:
        self.blobs = blobs
        self.ids = entry.chunk_ids()
        self.starts = [0, *itertools.accumulate(entry.sizes)]
        self.size = entry.size
        self._sizes = entry.sizes
        self.readahead = readahead
        self._remember = remember
        self._reuse = reuse
        self._next_offset = -1
        self._digest = file_digest(entry)
        self._wanted = 0  # chunks before this one were asked for ahead (a remote store)
        self._window = WINDOW_FIRST
        self._run = 0  # where the run of sequential reads the window belongs to started

    def start(self, chunks: int = START) -> None:
        """Begin fetching the first chunks in worker threads (on open: ready by the first
        read)."""
        self.blobs.prefetch(self.ids[:chunks])

    def read(self, offset: int, size: int, view: bool = False) -> bytes | memoryview:
        """Bytes `offset` to `offset + size` (fewer at the end). `view`: a range inside one
        chunk comes as a memoryview of the decoded chunk instead of a copy."""
        return _joined(self._parts(offset, size, self._fetch), view)

    def ids_between(self, offset: int, size: int) -> list[bytes]:
        """The ids of the chunks that bytes `offset`..`offset + size` lie in."""
        end = min(offset + size, self.size)
        if offset >= end:
            return []
        first = bisect.bisect_right(self.starts, offset) - 1
        return self.ids[first : bisect.bisect_left(self.starts, end)]

    def read_cached(self, offset: int, size: int, view: bool = False) -> bytes | memoryview | None:
        """`read` from cached chunks only: None as soon as one is not cached (never blocks)."""
        parts = self._parts(offset, size, self.blobs.peek)
        return None if parts is None else _joined(parts, view)

    def read_parts(self, offset: int, size: int, cached: bool = False) -> list[bytes | memoryview] | None:
        """`read` as the pieces of the chunks it spans, in order, views of the decoded chunks
        (never copied: the mount's reply sends them as they are). `cached`: from cached
        chunks only, None as soon as one is not cached (never blocks)."""
        return self._parts(offset, size, self.blobs.peek if cached else self._fetch)

    def digest(self) -> bytes:
        """blake3 of the whole content (what `b3sum` prints): from the tree when it holds it
        (tree version 2, or a file of at most one chunk), else by reading every chunk in
        order (a file of 2+ chunks from a version 1 tree)."""
        if self._digest is None:
            import blake3

            whole = blake3.blake3()
            for i in range(len(self.ids)):
                if i % START == 0:  # the next chunks fetched while these are hashed
                    self.blobs.prefetch(self.ids[i + 1 : i + 1 + 2 * START])
                whole.update(self.chunk(i))
            self._digest = whole.digest()
        return self._digest

    def hole(self, i: int) -> int:
        """The size of chunk `i` if it is a hole (a chunk of zeros as a push cuts a sparse
        file's holes: c3fs/reader/holes.py), else 0."""
        size = self._sizes[i]
        return size if self.blobs.holes.is_hole(self.ids[i], size) else 0

    def seek(self, offset: int, data: bool) -> int | None:
        """lseek(2)'s SEEK_DATA (`data`) or SEEK_HOLE from `offset`: where the first data,
        or hole, at or after `offset` starts, the end of the file counting as a hole; None
        where lseek fails with ENXIO (`offset` outside the file, or no data after it). A hole
        is a run of hole chunks (c3fs/reader/holes.py); the chunk list alone answers."""
        if not 0 <= offset < self.size:
            return None
        i = bisect.bisect_right(self.starts, offset) - 1
        holes = self.blobs.holes
        if data:
            i = holes.next_data(self.ids, self._sizes, i)
            return None if i == len(self.ids) else max(self.starts[i], offset)
        return max(self.starts[holes.next_hole(self.ids, self._sizes, i)], offset)

    def chunk(self, i: int) -> bytes:
        """The verified bytes of chunk `i` (starting at `starts[i]`), as many as the tree says."""
        return self.check(i, self._fetch(self.ids[i]))

    def _fetch(self, chunk_id: bytes) -> bytes:
        if self._reuse is not None:
            data = self._reuse(chunk_id)
            if data is not None:
                return data
        return self.blobs.get(chunk_id, self._remember)

    def _parts(self, offset: int, size: int, get: Callable[[bytes], bytes | None]
               ) -> list[bytes | memoryview] | None:
        end = min(offset + size, self.size)
        if offset >= end:
            return []
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_left(self.starts, end) - 1
        if self.readahead and self.blobs.remote:
            self._remote_ahead(offset, end, last)
        elif self.readahead and offset == self._next_offset:
            self.blobs.prefetch(self.ids[last + 1 : last + 1 + self.readahead])
        self._next_offset = end  # before fetching: concurrent sequential reads still prefetch
        parts: list[bytes | memoryview] = []
        for i in range(first, last + 1):
            data = get(self.ids[i])
            if data is None:
                return None
            self.check(i, data)
            lo = max(offset - self.starts[i], 0)
            hi = min(end - self.starts[i], len(data))
            parts.append(data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi])
        return parts

    def _remote_ahead(self, offset: int, end: int, last: int) -> None:
        """A remote store: read ahead of a read that continues the last one, as Linux and
        mountpoint-s3 decide: one that starts where the last ended, give or take a slack
        (`SLACK`, or 4 reads' length: the kernel's READs of a window reach the worker
        threads slightly out of order). A read elsewhere inside what this run asked for
        ahead (an out-of-order READ further off) leaves the run as it is; any other is a
        jump: a random read, which fetches only its own chunks, and starts a new run whose
        window grows from `WINDOW_JUMP` once the reads after it are sequential. The first
        read counts as sequential only at offset 0. A forward jump counted as sequential
        (within the window: up to 64 MiB) read a whole file for 20 reads of 4 KiB."""
        if self._next_offset < 0:
            near = offset == 0
        else:
            slack = max(SLACK, 4 * (end - offset))
            near = self._next_offset - slack <= offset <= self._next_offset + slack
        if near:
            self._read_ahead(last)
        elif not self._run <= offset < self.starts[self._wanted]:
            self._run, self._wanted, self._window = offset, 0, WINDOW_JUMP

    def _read_ahead(self, last: int) -> None:
        """A remote store: once less than half the window lies fetched ahead of chunk `last`,
        ask for the chunks up to a window past it (in one go, so that neighbours merge into
        big ranged GETs), and double the window, up to $C3FS_READ_WINDOW (mountpoint-s3
        grows its window the same way)."""
        end = self.starts[last + 1]
        if last + 1 >= len(self.ids):  # nothing after it (a small file read whole)
            return
        if self.starts[self._wanted] - end >= self._window // 2 or self._wanted >= len(self.ids):
            return
        goal = bisect.bisect_left(self.starts, end + self._window, lo=last + 1)
        goal = min(goal, len(self.ids))
        self.blobs.prefetch(self.ids[max(self._wanted, last + 1) : goal])
        self._wanted = goal
        self._window = min(2 * self._window, max(window_max(), WINDOW_FIRST))

    def check(self, i: int, data: bytes) -> bytes:
        """`data`, the verified bytes of chunk `i`, if they are as many as the file's tree
        says (a crafted tree may claim 100 bytes of a 10-byte chunk); else ChunkSizeMismatch.
        Free: the blob's plain length was checked against its pack's trailer when decoded."""
        claimed = self.starts[i + 1] - self.starts[i]
        if len(data) != claimed:
            raise ChunkSizeMismatch(self.ids[i], claimed, len(data))
        return data


def _joined(parts: list[bytes | memoryview] | None, view: bool) -> bytes | memoryview:
    """The parts as one buffer: joined (one copy), or alone as they are (`view`), or as bytes."""
    if not parts:
        return b""
    if len(parts) > 1:
        return b"".join(parts)
    return parts[0] if view or isinstance(parts[0], bytes) else bytes(parts[0])
