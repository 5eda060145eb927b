"""The holes of sparse files, as a push stores them and as readers find them again.

A push stores a hole as the chunks reading its zeros would give (c3fs/ingest: FastCDC cuts
a run of zeros into chunks of exactly `chunk_max`, checked, not assumed), so a hole is a run
of one chunk, `chunk_max` zeros, whose id is known. Readers take each such chunk for a hole:
`cp -r` and `pull` neither fetch nor write it (the copy has a hole there), and the mount
counts it out of the file's `st_blocks` and answers SEEK_DATA and SEEK_HOLE with it
(c3fs/fuse/ops.py). Other zeros are data: a run shorter than `chunk_max`, and those cut with
the data around them (up to a chunk's worth on either side of each run of data). The id
names the bytes, so nothing goes unchecked; the tree's chunk list is all it takes (no field
of the store's format says where holes are).
"""

from __future__ import annotations

import functools

from c3fs.objects.ids import blob_id

BLOCK = 1024  # hole chunks compared at once when looking for the end of a hole (one slice)


@functools.lru_cache(maxsize=4)
def zeros_id(size: int) -> bytes:
    """The chunk id of `size` zeros (once a process: blake3 of 1 MiB, ~0.3 ms)."""
    return blob_id(bytes(size))


class Holes:
    """The hole chunk of a store (`chunk_max` zeros; its id hashed when first needed) and
    where the holes of a file's chunk list are. Immutable once its id is known: shared by
    threads."""

    __slots__ = ("size", "_id", "_block")

    def __init__(self, chunk_max: int) -> None:
        self.size = chunk_max
        self._id: bytes | None = None
        self._block: tuple[list[bytes], list[int]] | None = None

    @property
    def id(self) -> bytes:
        if self._id is None:
            self._id = zeros_id(self.size)
        return self._id

    def blocks(self, size: int, chunks: bytes) -> int:
        """`st_blocks` of a file of `size` bytes and chunk ids `chunks` (concatenated, as a
        tree holds them): its bytes that are not hole chunks, in 512-byte units, rounded up.
        A file smaller than one hole chunk has none: its chunk list is not looked at. (The
        count is `bytes.count`'s: finding the id across two others would take a blake3
        preimage.)"""
        if size < self.size:
            return (size + 511) // 512
        data = max(size - chunks.count(self.id) * self.size, 0)
        return (data + 511) // 512

    def is_hole(self, chunk_id: bytes, size: int) -> bool:
        return size == self.size and chunk_id == self.id

    def next_hole(self, ids: list[bytes], sizes: list[int], i: int) -> int:
        """The index of the first hole chunk at or after chunk `i`, or len(ids)."""
        zero, size = self.id, self.size
        while True:
            try:
                i = ids.index(zero, i)
            except ValueError:
                return len(ids)
            if sizes[i] == size:
                return i
            i += 1  # (a tree claiming another size for it: damaged, and data here)

    def next_data(self, ids: list[bytes], sizes: list[int], i: int) -> int:
        """The index of the first chunk at or after chunk `i` that is not a hole, or
        len(ids). A hole of a TiB is a million chunks: they are compared `BLOCK` at a
        time."""
        ids_block, sizes_block = self._blocks()
        n = len(ids)
        while i + BLOCK <= n and ids[i : i + BLOCK] == ids_block and (
                sizes[i : i + BLOCK] == sizes_block):
            i += BLOCK
        zero, size = self.id, self.size
        while i < n and ids[i] == zero and sizes[i] == size:
            i += 1
        return i

    def _blocks(self) -> tuple[list[bytes], list[int]]:
        if self._block is None:
            self._block = ([self.id] * BLOCK, [self.size] * BLOCK)
        return self._block
