"""A repository: one store, its local index and a blob source, opened together."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from c3fs.errors import NotFound
from c3fs.index import Index, IndexDamaged, open_index
from c3fs.objects.job import JobRecord
from c3fs.objects.tree import EncodedTree, PagedTree
from c3fs.reader import BlobSource
from c3fs.store.backend import LOCAL, Deadline
from c3fs.store.store import Store, open_backend

log = logging.getLogger(__name__)
T = TypeVar("T")
# records a read of the index when a listing streams them (`iter_records`)
RECORD_BATCH = 1024
MiB = 1024 * 1024


@dataclass
class Repo:
    store: Store
    index: Index
    blobs: BlobSource
    refresh_interval: float = 2.0
    _last_refresh: float = field(default=0.0, repr=False)

    @classmethod
    def open(cls, url: str | None = None, cache_bytes: int = 128 * MiB, create: bool = True,
             disk_cache_bytes: int | None = None, deadline: Deadline | None = None) -> Repo:
        """`cache_bytes`: decoded blobs in memory. `disk_cache_bytes`: for a remote store,
        the local disk cache of fetched pack blocks (default $C3FS_DISK_CACHE or 1 GiB).
        `deadline`: how long a remote store may leave requests unanswered (default: one
        $C3FS_STORE_DEADLINE for the whole of this repo's use, e.g. a command)."""
        backend = open_backend(url, create=create, disk_cache_bytes=disk_cache_bytes,
                               deadline=deadline)
        store = Store.open(backend, create=create)
        index = open_index(store)
        interval = 2.0 if LOCAL in backend.capabilities else 10.0
        return cls(store, index, BlobSource(store, index, cache_bytes), interval)

    def close(self) -> None:
        self.blobs.close()
        self.index.close()

    def refresh(self, force: bool = False, full: bool = False) -> None:
        """Learn jobs and packs added or removed elsewhere, at most every refresh_interval
        (`force`: now). `full`: list every ref and pack, not only the store's change log
        (what must see every pack or every ref whatever a writer logged: gc, accounting)."""
        now = time.monotonic()
        if force or full or now - self._last_refresh >= self.refresh_interval:
            self._last_refresh = now
            self.index.sync(self.store, full=full)

    def tree(self, tree_id: bytes, check: bool = True,
             keep: bool = True) -> EncodedTree | PagedTree:
        """A tree (kept in the blob cache: trees are immutable, named by content), every
        entry checked (FormatError if one is damaged). `check=False`: each entry is checked
        when it is decoded (the mount: a lookup decodes a few names and one entry).
        `keep=False`: a walk that reads each tree once (cp, pull, verify, gc) keeps it out of
        the cache. A paged directory (`PagedTree`) reads as one tree; `check` then reads
        every page of it."""
        tree = self.blobs.tree(tree_id, keep)
        if check:
            tree.check()
        return tree

    def cached_tree(self, tree_id: bytes) -> EncodedTree | PagedTree | None:
        """The tree if it is in memory already, else None (never blocks: for the event loop)."""
        return self.blobs.cached_tree(tree_id)

    def record(self, kind: str, name: str) -> JobRecord:
        """The record of a job or dataset; asks the store when the index does not know it."""
        record = self._healing(self.index.record, kind, name)
        if record is None:
            try:  # a damaged ref is a DamagedRef naming it (exit 6), not "no such job"
                record = self.store.get_ref(kind, name)
            except NotFound:
                raise NotFound(f"no {kind} {name!r}") from None
            self.index.put_record(record)
        return record

    def newest(self, kind: str, keep: Callable[[JobRecord], bool], limit: int | None,
               since: float | None = None) -> list[JobRecord]:
        """Up to `limit` records of `kind` that `keep`, created since `since`, the newest
        first: read from the index's order of creation, not by decoding every record."""
        def read() -> list[JobRecord]:
            found = (r for r in self.index.newest(kind, since) if keep(r))
            return list(itertools.islice(found, limit))

        return self._healing(read)

    def records(self, kind: str) -> list[JobRecord]:
        return self._healing(self.index.records, kind)

    def find_record(self, kind: str, name: str) -> JobRecord | None:
        """The record of a job or dataset as the index knows it, or None (no store fetch)."""
        return self._healing(self.index.record, kind, name)

    def consumers(self, kind: str, name: str) -> list[JobRecord]:
        """The jobs whose inputs name the job or dataset `name` of `kind`, by name."""
        return self._healing(self.index.consumers, kind, name)

    def iter_records(self, kind: str, by_created: bool = False,
                     since: float | None = None) -> Iterator[JobRecord]:
        """The records of `kind`, by name or the oldest first (from `since`), read as they
        are consumed, `RECORD_BATCH` to a read of the index: memory does not grow with the
        number of jobs."""
        after = None
        while True:
            batch = self._healing(self.index.record_batch, kind, by_created, after,
                                  RECORD_BATCH, since)
            for _, record in batch:
                yield record
            if len(batch) < RECORD_BATCH:
                return
            after = batch[-1][0]

    def _healing(self, read: Callable[..., T], *args) -> T:
        """`read(*args)` from the index; if it meets damage, the index has been replaced by a
        new, empty one (`Index._damaged`): fill that from the store and read again."""
        try:
            return read(*args)
        except IndexDamaged as exc:
            self.index.heal(exc, self.store)
            return read(*args)
