"""Fetching blobs ahead of their readers from a remote store: many ranged GETs in flight.

On a remote store every request costs a round trip (20 ms on the bench's rig), so one
reader fetching chunk after chunk, or 4 fetch threads, leave the link mostly idle. `Ahead`
takes the blobs a reader (or a copy, or a directory's readahead) will want next, groups
them by pack, merges neighbours into one ranged GET of at most `SPAN` bytes (reading over
gaps of up to `GAP` bytes), and runs up to `workers` GETs at once. Each GET's blobs wait here
until `take` hands them over (once), decoded and verified (a mount's big ones in the fetching
worker; small ones, and a copy's, by `take`: see DECODE_AHEAD).

A wanted blob that lies inside a span queued or in flight already (in the unwanted bytes
a GET reads over, or wanted before) is taken from that span's GET, never fetched again:
a copy asks for its small files and for each big file's parts separately, and a push lays
their blobs side by side in the same packs.

Bounded: the plain bytes in flight and waiting never pass `budget` (a span starts only
when it fits; blobs waiting longest go first when over); wanted spans not yet started wait
in a queue of at most `QUEUED` spans (more are dropped: their blobs are then fetched by
their reader, as without `Ahead`). A blob whose span is queued but not started when its
reader wants it starts at once, whatever the budget (the reader would fetch it anyway).

Failures are never reported here: a blob whose span failed (store not answering, damaged
bytes) is not handed over, and its reader fetches it on the normal path, which retries,
repairs and reports. Thread-safe.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field

from c3fs.errors import DataError, FormatError
from c3fs.index import Index, IndexDamaged, Location
from c3fs.memo import LRU
from c3fs.objects import codec
from c3fs.store.backend import BackendError
from c3fs.store.store import Store

log = logging.getLogger(__name__)
KiB, MiB = 1024, 1024 * 1024
SPAN = 4 * MiB  # at most this many bytes of one pack in one ranged GET
GAP = 256 * KiB  # a GET reads over up to this many unwanted bytes between two wanted blobs
WIDE_GAP = 2 * MiB  # ... or this many, if that fits a wave into the workers (`spans_of`)
WORKERS = 16  # ranged GETs in flight
BUDGET = 48 * MiB  # plain bytes in flight and waiting to be taken
QUEUED = 4096  # spans wanted but not yet started
# Blobs at least this big are decoded (and verified) in the fetching worker, overlapped with
# the reader; smaller ones by their reader: decoding many small blobs in 16 threads kept the
# mount's event loop waiting for the GIL (2,500 small files: 5.5 s against 4.0 s). A copy's
# blobs (`keep=False`: read once, by a writer thread) wait undecoded too, as views of their
# GET's buffer: the writer decodes, writes and frees each in its own thread, so the decoded
# bytes do not pile up in 16 fetching threads' heaps (a pull of the bench job: peak RSS 130
# -> 99 MiB, page faults 40k -> 31k)
DECODE_AHEAD = 64 * KiB


@dataclass
class Span:
    pack_id: str
    offset: int
    end: int
    blobs: list[tuple[bytes, Location]] = field(default_factory=list)
    plain: int = 0
    keep: bool = True  # kept in the store's disk cache (a copy's are fetched exactly, kept nowhere)
    started: bool = False
    read: bool = False  # its bytes have arrived: no blob joins it any more
    done: Future = field(default_factory=Future)
    seq: int = 0  # orders spans of one pack that start at the same offset (`Ahead._live`)


class Ahead:
    def __init__(self, store: Store, index: Index,
                 decode: Callable[[bytes, Location, bytes], bytes],
                 workers: int = WORKERS, budget: int = BUDGET) -> None:
        self.store = store
        self.index = index
        self.budget = budget
        self.gets = 0  # ranged GETs made (spans fetched)
        self._decode = decode
        self._lock = threading.Lock()
        self._spans: dict[bytes, Span] = {}  # blob id -> its span, queued or in flight
        self._queue: OrderedDict[int, Span] = OrderedDict()  # not started, in wanted order
        # pack -> its spans queued or in flight, not yet read, sorted: (offset, seq, span)
        self._live: dict[str, list[tuple[int, int, Span]]] = {}
        self._seq = itertools.count()
        # blob id -> (its location if still to be decoded, bytes); one still to be decoded
        # weighs its plain length, what it becomes (a copy's is a view that holds its GET's
        # buffer: weighed by its few stored bytes, a well-compressed blob would let
        # many 4 MiB buffers pile up within the budget)
        self._ready: LRU[bytes, tuple[Location | None, bytes]] = LRU(
            budget, weigh=lambda item: len(item[1]) if item[0] is None else item[0].plain_len)
        self._in_flight = 0  # plain bytes of started spans
        self._closed = False
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-ahead")

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            spans = list({id(span): span for span in self._spans.values()}.values())
            self._queue.clear()
            self._live.clear()
        for span in spans:  # nobody waits for a GET that will never run
            _finish(span)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._spans or blob_id in self._ready

    def want(self, blob_ids: list[bytes], known: Callable[[bytes], bool], keep: bool = True,
             first: bool = False, wave: bool = False) -> None:
        """Fetch these blobs ahead, in this order (`known`: already cached elsewhere; `keep`:
        their GETs go through the store's disk cache, which keeps the blocks a GET holds
        whole: one over 4+ blocks none of which is cached is exact, its edge blocks not
        kept, see EXACT_SPAN in c3fs/store/cache.py; `first`: before the spans queued
        already, see `BlobSource.prefetch`; `wave`: in one wave of GETs if reading over
        wider gaps makes them fit the workers, see `spans_of`)."""
        wanted = [b for b in dict.fromkeys(blob_ids) if b not in self and not known(b)]
        try:  # one index transaction for all of them (a batch of 64 small files)
            located = [(blob_id, loc) for blob_id, loc in
                       zip(wanted, self.index.lookup_many(wanted) if wanted else [], strict=True)
                       if loc is not None]
        except IndexDamaged:
            return  # the reader's own fetch heals the index
        with self._lock:
            joined: dict[int, Span] = {}  # spans queued already that now hold wanted blobs
            rest = []
            for blob_id, loc in located:
                if blob_id in self._spans:
                    continue
                span = self._covering(loc, keep)
                if span is None:
                    rest.append((blob_id, loc))
                    continue
                self._join(span, blob_id, loc)
                if not span.started:
                    joined.setdefault(id(span), span)
            added = list(joined.values())
            for span in spans_of(rest, self.workers if wave else None):
                if len(self._queue) >= QUEUED:
                    break
                for blob_id, _ in span.blobs:
                    self._spans[blob_id] = span
                span.keep = keep
                span.seq = next(self._seq)
                bisect.insort(self._live.setdefault(span.pack_id, []), (span.offset, span.seq, span))
                self._queue[id(span)] = span
                added.append(span)
            if first:
                for span in reversed(added):
                    self._queue.move_to_end(id(span), last=False)
            self._start_fitting()

    def _covering(self, loc: Location, keep: bool) -> Span | None:
        """A span queued or in flight whose GET holds all of `loc` (a span's bytes go to the
        disk cache or not as it says: a blob to keep joins only a span that keeps)."""
        live = self._live.get(loc.pack_id)
        if not live:
            return None
        end = loc.offset + loc.length
        lo = bisect.bisect_left(live, (loc.offset - SPAN, -1))
        for offset, _, span in live[lo : bisect.bisect_right(live, (loc.offset, 1 << 62))]:
            if offset <= loc.offset and end <= span.end and (span.keep or not keep):
                return span
        return None

    def _join(self, span: Span, blob_id: bytes, loc: Location) -> None:
        span.blobs.append((blob_id, loc))
        span.plain += loc.plain_len
        if span.started:
            self._in_flight += loc.plain_len
        self._spans[blob_id] = span

    def _retire(self, span: Span) -> None:
        """No blob joins `span` any more (its bytes arrived, or it failed)."""
        if span.read:
            return
        span.read = True
        live = self._live.get(span.pack_id, [])
        i = bisect.bisect_left(live, (span.offset, span.seq))
        if i < len(live) and live[i][2] is span:
            del live[i]
            if not live:
                del self._live[span.pack_id]

    def take(self, blob_id: bytes) -> bytes | None:
        """The decoded bytes of a blob fetched ahead (waiting for its GET if in flight, and
        starting it if still queued), or None: then the caller fetches it itself."""
        span = self._spans.get(blob_id)
        if span is not None:
            with self._lock:
                if not span.started and not self._closed:
                    self._start(span)
            if span.started:
                span.done.result()
        item = self._ready.pop(blob_id)
        return None if item is None else self._hand_over(blob_id, item)

    def take_decoded(self, blob_id: bytes) -> bytes | None:
        """`take`, but only a blob already fetched: never waits; decodes only a small one
        (left for its reader, see DECODE_AHEAD: ~10 µs, less than a thread round trip; a
        copy's big ones also wait undecoded: those are left for `take`)."""
        item = self._ready.get(blob_id)
        if item is None or (item[0] is not None and item[0].plain_len >= DECODE_AHEAD):
            return None
        item = self._ready.pop(blob_id)
        return None if item is None else self._hand_over(blob_id, item)

    def _hand_over(self, blob_id: bytes, item: tuple[Location | None, bytes]) -> bytes | None:
        """The bytes of a blob just taken out of `_ready` (room for more GETs now), decoded if
        still encoded; None if damaged: the caller's own fetch reads it again, and reports it."""
        with self._lock:
            self._start_fitting()
        loc, data = item
        if loc is None:
            return data
        try:
            return self._decode(blob_id, loc, data)
        except (DataError, FormatError):
            return None

    # scheduling (under the lock) ------------------------------------------------------------
    def _start_fitting(self) -> None:
        while self._queue and not self._closed:
            span = next(iter(self._queue.values()))
            if self._in_flight and self._in_flight + self._ready.weight + span.plain > self.budget:
                return
            self._start(span)

    def _start(self, span: Span) -> None:
        del self._queue[id(span)]
        span.started = True
        self._in_flight += span.plain
        self._pool.submit(self._fetch, span)

    # in a worker ------------------------------------------------------------------------------
    def _fetch(self, span: Span) -> None:
        try:
            store = self.store if span.keep else self.store.direct
            stored = memoryview(store.read(span.pack_id, span.offset, span.end - span.offset))
            with self._lock:
                self._retire(span)  # its blobs are settled now
            for blob_id, loc in span.blobs:
                start = loc.offset - span.offset
                piece = stored[start : start + loc.length]  # no copy (raw blobs: one, below)
                if loc.plain_len < DECODE_AHEAD:  # decoded by its reader: see DECODE_AHEAD
                    self._ready.put(blob_id, (loc, bytes(piece)))
                    continue
                if not span.keep and loc.codec != codec.RAW:  # a copy's: see DECODE_AHEAD
                    self._ready.put(blob_id, (loc, piece))  # (a view: holds the GET's buffer)
                    continue
                if loc.codec == codec.RAW:
                    piece = bytes(piece)
                try:
                    self._ready.put(blob_id, (None, self._decode(blob_id, loc, piece)))
                except (DataError, FormatError):
                    pass  # its reader fetches it again, and reports it
        except (BackendError, DataError, OSError) as exc:
            log.debug("fetching ahead from pack %s failed: %s", span.pack_id, exc)
        finally:
            with self._lock:
                self._retire(span)
                for blob_id, _ in span.blobs:
                    if self._spans.get(blob_id) is span:
                        del self._spans[blob_id]
                self._in_flight -= span.plain
                self.gets += 1
                self._start_fitting()
            _finish(span)


def _finish(span: Span) -> None:
    with contextlib.suppress(InvalidStateError):  # `close` may have finished it
        span.done.set_result(None)


def spans_of(located: list[tuple[bytes, Location]], fit: int | None = None) -> list[Span]:
    """Blobs grouped into spans: neighbours in one pack (at most GAP apart) merged, each span
    at most SPAN bytes; spans in the order of their first blob. `fit`: if there are more
    spans than this, neighbours up to WIDE_GAP apart are merged instead, when that makes
    them fit (more bytes read over, one round trip less: a replayed trace's small files lie
    in short runs between other data of their packs, 22 runs for the bench's 1,000)."""
    spans = _spans(located, GAP)
    if fit is not None and len(spans) > fit:
        wide = _spans(located, WIDE_GAP)
        if len(wide) <= fit:
            spans = wide
    return spans


def _spans(located: list[tuple[bytes, Location]], gap: int) -> list[Span]:
    spans: list[Span] = []
    last: dict[str, Span] = {}  # pack -> its latest span
    for blob_id, loc in sorted(located, key=lambda item: (item[1].pack_id, item[1].offset)):
        span = last.get(loc.pack_id)
        end = loc.offset + loc.length
        if span is None or loc.offset - span.end > gap or end - span.offset > SPAN \
                or loc.offset < span.end:
            span = last[loc.pack_id] = Span(loc.pack_id, loc.offset, end)
            spans.append(span)
        span.end = max(span.end, end)
        span.blobs.append((blob_id, loc))
        span.plain += loc.plain_len
    order = {blob_id: i for i, (blob_id, _) in enumerate(located)}
    spans.sort(key=lambda span: min(order[b] for b, _ in span.blobs))
    return spans
