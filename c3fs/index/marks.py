"""A set of blob ids whose memory does not grow with it: gc's marks, verify's checked blobs
(issue 16: verify and gc held a Python set of every blob id, ~100 B each).

Up to `SPILL` ids live in a Python set; past that they all move to an open-addressing hash
table (linear probing) in a temporary file of the cache directory, mapped shared: 32 bytes a
slot, at most half the slots used, doubled when that is reached. Blob ids are blake3 digests,
so their first 8 bytes are the hash: a lookup or an insert reads one or two slots, one page.
The pages the table maps are let go of (MADV_DONTNEED: they stay in the page cache, or go to
disk) once the process maps `MAPPED_BUDGET` more file pages than after the last release, as
the index does with its own map. Memory: the set until the spill, then a few MiB of mapped
pages; disk: 64-128 B an id (2x during a doubling). The file never has a name (O_TMPFILE):
the kernel frees it when the set is closed or the process dies. Its blocks are allocated
before it is mapped, so a full disk is an error here, never SIGBUS on a write through the map.

Thread-safe: one lock around every operation (verify checks blobs in worker threads).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
from pathlib import Path

from c3fs.errors import C3fsError
from c3fs.index import CHECK_EVERY, MAPPED_BUDGET, _file_pages
from c3fs.preload import cache_dir

SPILL = 65_536  # ids kept in a Python set (~100 B each) before the set moves to a file
ID = 32  # bytes of a blob id, and of a slot
_EMPTY = bytes(ID)  # a free slot (the all-zero id itself is kept apart: `_zero`)
_FIRST = 1 << 18  # slots of the first table (8 MiB), at least 2x SPILL


class MarkSet:
    """A set of 32-byte ids: `mark(id)` (True if it was not there), `id in marks`, `len`.
    Close it (or use it as a context manager) to free its file."""

    def __init__(self, spill: int | None = None, where: str | Path | None = None) -> None:
        self._set: set[bytes] | None = set()
        self._spill = SPILL if spill is None else spill
        self._where = where
        self._lock = threading.Lock()
        self._file = None
        self._map: mmap.mmap | None = None
        self._mask = 0  # slots - 1
        self._used = 0  # ids in the table (the zero id not counted)
        self._zero = False
        self._ops = 0
        self._limit = 0  # release the map's pages when the process maps more file bytes

    def __enter__(self) -> MarkSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._file.close()
                self._map = self._file = None
            self._set = set()
            self._used, self._zero = 0, False

    @property
    def spilled(self) -> bool:
        """Whether the ids are in the file (for tests)."""
        return self._set is None

    def __len__(self) -> int:
        if self._set is not None:
            return len(self._set)
        return self._used + self._zero

    def __contains__(self, blob_id: bytes) -> bool:
        with self._lock:
            if self._set is not None:
                return blob_id in self._set
            if blob_id == _EMPTY:
                return self._zero
            return self._slot(blob_id)[1]

    def mark(self, blob_id: bytes) -> bool:
        """Add `blob_id`; whether it was new."""
        if len(blob_id) != ID:
            raise ValueError(f"a mark is a {ID}-byte id, not {len(blob_id)} bytes")
        with self._lock:
            if self._set is not None:
                if blob_id in self._set:
                    return False
                self._set.add(blob_id)
                if len(self._set) > self._spill:
                    self._to_file()
                return True
            return self._insert(blob_id)

    # the table ----------------------------------------------------------------------------
    def _slot(self, blob_id: bytes) -> tuple[int, bool]:
        """The slot holding `blob_id`, or the free slot where it would go; whether it holds it."""
        self._ops += 1
        if self._ops >= CHECK_EVERY:
            self._check_mapped()
        table, mask = self._map, self._mask
        at = int.from_bytes(blob_id[:8], "little") & mask
        while True:
            held = table[at * ID:at * ID + ID]
            if held == blob_id:
                return at, True
            if held == _EMPTY:
                return at, False
            at = (at + 1) & mask

    def _insert(self, blob_id: bytes) -> bool:
        if blob_id == _EMPTY:
            new, self._zero = not self._zero, True
            return new
        at, found = self._slot(blob_id)
        if found:
            return False
        self._map[at * ID:at * ID + ID] = blob_id
        self._used += 1
        if self._used * 2 > self._mask + 1:
            self._grow((self._mask + 1) * 2)
        return True

    def _to_file(self) -> None:
        self._grow(max(_FIRST, 1 << (2 * len(self._set)).bit_length()))
        held, self._set = self._set, None  # (kept if the file could not be made)
        for blob_id in held:
            self._insert(blob_id)

    def _grow(self, slots: int) -> None:
        """Move the ids to a new table of `slots` slots."""
        old, old_file, old_slots = self._map, self._file, self._mask + 1
        self._file, self._map = self._new_table(slots), None
        self._map = mmap.mmap(self._file.fileno(), slots * ID)
        self._mask, self._used = slots - 1, 0
        self._limit = _file_pages() + MAPPED_BUDGET
        if old is None:
            return
        step = 1 << 15  # slots read at once (1 MiB)
        for start in range(0, old_slots, step):
            block = old[start * ID:(start + step) * ID]
            for at in range(0, len(block), ID):
                blob_id = block[at:at + ID]
                if blob_id != _EMPTY:
                    self._insert(blob_id)
            old.madvise(mmap.MADV_DONTNEED, start * ID, len(block))
        old.close()
        old_file.close()

    def _new_table(self, slots: int):
        where = Path(self._where or cache_dir())
        try:
            where.mkdir(parents=True, exist_ok=True)
            file = tempfile.TemporaryFile(dir=where, prefix="marks-")
            try:
                os.posix_fallocate(file.fileno(), 0, slots * ID)
            except BaseException:
                file.close()
                raise
        except OSError as exc:
            raise C3fsError(f"cannot keep a table of {slots * ID // 2**20} MiB of blob ids in "
                            f"{where}: {exc.strerror or exc}") from None
        return file

    def _check_mapped(self) -> None:
        self._ops = 0
        if _file_pages() > self._limit:
            self._map.madvise(mmap.MADV_DONTNEED)
            self._limit = _file_pages() + MAPPED_BUDGET
