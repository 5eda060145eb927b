"""A set of blob ids whose memory does not grow with it: gc's marks, verify's checked blobs
(issue 16: verify and gc held a Python set of every blob id, ~100 B each).

Up to `SPILL` ids live in a Python set; past that they all move to an open-addressing hash
table (linear probing) in a temporary file of the cache directory: 32 bytes a slot, at most
half the slots used, made 4x larger when that is reached (so 1/8 to 1/2 full). Blob ids are
blake3 digests, so their first 8 bytes are the hash: a lookup or an insert is one `pread` of a
few slots (and one `pwrite`). The table is read and written with pread/pwrite, never mapped:
its pages stay in the page cache, not in the process's RSS (a map of it, released every 1,024
lookups, still held 30-40 MiB: each fault maps a whole large folio). Memory: the set until
the spill, then nothing that grows; disk: 64-256 B an id, sparse. The file never has a name
(O_TMPFILE): the kernel frees it when the set is closed or the process dies; a full disk is
an error of the write (ENOSPC), as anywhere else. Measured, a million random ids: ~7 µs a
mark (moves included), ~1.7 µs a lookup; a Python set costs ~100 B an id.

Thread-safe: one lock around every operation (verify checks blobs in worker threads).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from c3fs.errors import C3fsError
from c3fs.preload import cache_dir

SPILL = 65_536  # ids kept in a Python set (~100 B each) before the set moves to a file
ID = 32  # bytes of a blob id, and of a slot
_EMPTY = bytes(ID)  # a free slot (the all-zero id itself is kept apart: `_zero`)
_FIRST = 1 << 18  # slots of the first table (8 MiB), at least 2x SPILL
_RUN = 4  # slots read by one pread (a probe rarely goes further at most half full)
_BLOCK = 1 << 20  # bytes of the old table read at once when the table doubles


class MarkSet:
    """A set of 32-byte ids: `mark(id)` (True if it was not there), `id in marks`, `len`.
    Close it (or use it as a context manager) to free its file."""

    def __init__(self, spill: int | None = None, where: str | Path | None = None,
                 expect: int = 0) -> None:
        """`expect`: how many ids it will likely hold (the table is made that large at once,
        sparse, rather than enlarged on the way: each enlargement moves every id)."""
        self._set: set[bytes] | None = set()
        self._expect = expect
        self._spill = SPILL if spill is None else spill
        self._where = where
        self._lock = threading.Lock()
        self._file = None  # the table (an unnamed file), and its descriptor
        self._fd = -1
        self._mask = 0  # slots - 1
        self._used = 0  # ids in the table (the zero id not counted)
        self._zero = False

    def __enter__(self) -> MarkSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file, self._fd = None, -1
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

    def __iter__(self) -> Iterator[bytes]:
        """Every id, in no useful order: one sequential read of the table (not to be called
        while another thread marks)."""
        if self._set is not None:
            yield from list(self._set)
            return
        if self._zero:
            yield _EMPTY
        for start in range(0, (self._mask + 1) * ID, _BLOCK):
            block = os.pread(self._fd, _BLOCK, start)
            for at in range(0, len(block), ID):
                if block[at:at + ID] != _EMPTY:
                    yield block[at:at + ID]

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
        fd, mask = self._fd, self._mask
        at = int.from_bytes(blob_id[:8], "little") & mask
        while True:
            run = os.pread(fd, _RUN * ID, at * ID)  # (fewer at the end of the table)
            for n in range(0, len(run), ID):
                held = run[n:n + ID]
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
        _write(self._fd, blob_id, at * ID)
        self._used += 1
        if self._used * 2 > self._mask + 1:
            self._grow((self._mask + 1) * 4)  # (fewer moves than doubling: n/3 in all)
        return True

    def _to_file(self) -> None:
        self._grow(max(_FIRST, 1 << (2 * max(len(self._set), self._expect)).bit_length()))
        held, self._set = self._set, None  # (kept if the file could not be made)
        for blob_id in held:
            self._insert(blob_id)

    def _grow(self, slots: int) -> None:
        """Move the ids to a new table of `slots` slots."""
        old, old_slots = self._file, self._mask + 1
        self._file = self._new_table(slots)
        self._fd, self._mask, self._used = self._file.fileno(), slots - 1, 0
        if old is None:
            return
        with old:
            for start in range(0, old_slots * ID, _BLOCK):
                block = os.pread(old.fileno(), _BLOCK, start)
                for at in range(0, len(block), ID):
                    if block[at:at + ID] != _EMPTY:
                        self._insert(block[at:at + ID])

    def _new_table(self, slots: int):
        where = Path(self._where or cache_dir())
        try:
            where.mkdir(parents=True, exist_ok=True)
            file = tempfile.TemporaryFile(dir=where, prefix="marks-")
            try:
                os.truncate(file.fileno(), slots * ID)  # (sparse: holes read as free slots)
            except BaseException:
                file.close()
                raise
        except OSError as exc:
            raise C3fsError(f"cannot keep a table of {slots * ID // 2**20} MiB of blob ids in "
                            f"{where}: {exc.strerror or exc}") from None
        return file


def _write(fd: int, data: bytes, offset: int) -> None:
    try:
        written = os.pwrite(fd, data, offset)
    except OSError as exc:  # (ENOSPC: the blocks of a sparse file are allocated now)
        raise C3fsError("cannot write the table of blob ids in the cache directory: "
                        f"{exc.strerror or exc}") from None
    if written != len(data):
        raise C3fsError(f"short write to the table of blob ids ({written} of {len(data)} bytes)")
