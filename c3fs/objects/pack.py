"""Packs: many encoded blobs in one object, closed by a trailer that lists them.

Layout::

    b"C3PACK1\\n" | blob | blob | ... | trailer | footer
    trailer = msgpack [[kind, id, offset, length, plain_len, codec], ...]
    footer  = trailer length (u64 LE) | blake3(trailer) (32 B) | b"C3PKEND\\n"

The pack id is the hex blake3 of the trailer: it names every blob, offset and codec, so two
packs with one id hold the same blobs. The trailer alone rebuilds the index.
"""

from __future__ import annotations

import mmap
import struct

import blake3
import msgspec

from c3fs.errors import FormatError
from c3fs.objects.codec import CODECS, MAX_PLAIN

MAGIC = b"C3PACK1\n"
END = b"C3PKEND\n"
FOOTER = struct.Struct("<Q32s8s")
CHUNK = 0
TREE = 1
KINDS = (CHUNK, TREE)
MAX_TRAILER = 64 * 1024 * 1024


class PackEntry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    kind: int
    id: bytes
    offset: int
    length: int
    plain_len: int
    codec: int


# A pack's entry as the builder and the index keep it: id, offset, length, plain_len, codec,
# kind (50 bytes, where a PackEntry and its id cost ~200).
PACK_TABLE = struct.Struct("<32sQIIBB")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[PackEntry])
_TRAILER_BATCH = 4096  # entries encoded at once when a trailer is made
_FIRST_BUFFER = 1024 * 1024  # a builder's first buffer, unless given one (doubled as needed)


def entry_table(entries: list[PackEntry]) -> bytes:
    """`entries` as `PACK_TABLE` records."""
    pack = PACK_TABLE.pack
    return b"".join(pack(e.id, e.offset, e.length, e.plain_len, e.codec, e.kind) for e in entries)


def table_entries(table: bytes | bytearray) -> list[PackEntry]:
    return [PackEntry(kind, blob, offset, length, plain_len, codec)
            for blob, offset, length, plain_len, codec, kind in PACK_TABLE.iter_unpack(table)]


def page_buffer(size: int) -> mmap.mmap:
    """`size` bytes of private anonymous memory, page-aligned: a local store writes a pack
    built in it with O_DIRECT (the disk reads it from here, no copy into the page cache).
    Huge pages where the system allows them (fewer faults when first touched)."""
    buffer = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            buffer.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return buffer


class PackBuilder:
    """Collects encoded blobs in memory until `finish` returns (pack id, pack bytes).

    The blobs are copied into one page-aligned buffer (`page_buffer`, or `buffer` given by
    a caller that reuses a few, see `PackSink`; it is replaced by a bigger one, copied, when
    a blob does not fit) and their entries kept as a table of fixed-size records (`table`):
    a pack of 100,000 small blobs held as a bytes object, a PackEntry and an id object each
    cost ~45 MiB, 30 of them Python's per-object overhead."""

    def __init__(self, buffer: mmap.mmap | None = None) -> None:
        self._data: mmap.mmap | None = buffer if buffer is not None else page_buffer(_FIRST_BUFFER)
        self._data[: len(MAGIC)] = MAGIC
        self._size = len(MAGIC)
        self.table = bytearray()

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.table) // PACK_TABLE.size

    @property
    def entries(self) -> list[PackEntry]:
        return table_entries(self.table)

    def add(self, kind: int, blob_id: bytes, codec: int, stored: bytes, plain_len: int) -> None:
        end = self._size + len(stored)
        if end > len(self._data):
            bigger = page_buffer(max(2 * len(self._data), end))
            bigger[: self._size] = self._data[: self._size]
            self._data = bigger
        self.table += PACK_TABLE.pack(blob_id, self._size, len(stored), plain_len, codec, kind)
        self._data[self._size : end] = stored
        self._size = end

    def finish(self) -> tuple[str, bytes]:
        pack_id, parts = self.finish_parts()
        return pack_id, b"".join(parts)

    def finish_parts(self) -> tuple[str, list[bytes | memoryview]]:
        """(pack id, the pack as a list of byte strings), for writers that gather (writev).
        The first part is a view of the builder's buffer, which the builder lets go of (only
        `table` stays): it is freed, or reused by whoever gave it, once the caller is done."""
        trailer = self._trailer()
        digest = blake3.blake3(trailer).digest()
        data, self._data = memoryview(self._data)[: self._size], None
        return digest.hex(), [data, trailer, FOOTER.pack(len(trailer), digest, END)]

    def _trailer(self) -> bytes:
        """The msgpack array of every entry, encoded a batch at a time (never a PackEntry
        per blob at once): the array's header, then each batch's items without theirs."""
        parts = [_array_header(len(self))]
        step = _TRAILER_BATCH * PACK_TABLE.size
        for start in range(0, len(self.table), step):
            batch = table_entries(self.table[start : start + step])
            parts.append(_encoder.encode(batch)[len(_array_header(len(batch))):])
        return b"".join(parts)


def _array_header(count: int) -> bytes:
    """msgpack's header of an array of `count` items (fixarray, array 16, array 32)."""
    if count < 16:
        return bytes([0x90 | count])
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def parse_footer(footer: bytes, pack_size: int) -> tuple[int, bytes]:
    """Return (trailer length, trailer digest) from a pack's last FOOTER.size bytes."""
    if len(footer) != FOOTER.size:
        raise FormatError("pack too short for a footer")
    length, digest, end = FOOTER.unpack(footer)
    if end != END or length > min(MAX_TRAILER, pack_size - len(MAGIC) - FOOTER.size):
        raise FormatError("pack footer is damaged")
    return length, digest


def parse_trailer(trailer: bytes, digest: bytes, data_end: int) -> list[PackEntry]:
    """Decode and check a trailer: digest, kinds, codecs, offsets inside the pack."""
    if blake3.blake3(trailer).digest() != digest:
        raise FormatError("pack trailer does not match its digest")
    try:
        entries = _decoder.decode(trailer)
    except msgspec.DecodeError as exc:
        raise FormatError(f"pack trailer: {exc}") from None
    for entry in entries:
        _check_entry(entry, data_end)
    return entries


def _check_entry(entry: PackEntry, data_end: int) -> None:
    ok = (
        entry.kind in KINDS
        and entry.codec in CODECS
        and len(entry.id) == 32
        and len(MAGIC) <= entry.offset
        and 0 <= entry.length <= data_end - entry.offset
        and 0 <= entry.plain_len <= MAX_PLAIN
    )
    if not ok:
        raise FormatError(f"pack trailer entry out of bounds: {entry!r}")


def read_trailer(data: bytes) -> list[PackEntry]:
    """Parse the trailer of a whole pack held in memory."""
    if not data.startswith(MAGIC):
        raise FormatError("not a c3fs pack")
    length, digest = parse_footer(data[-FOOTER.size :], len(data))
    start = len(data) - FOOTER.size - length
    return parse_trailer(data[start : start + length], digest, start)
