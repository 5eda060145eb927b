"""Packs: many encoded blobs in one object, closed by a trailer that lists them.

Layout::

    b"C3PACK1\\n" | blob | blob | ... | trailer | footer
    trailer = msgpack [[kind, id, offset, length, plain_len, codec], ...]
    footer  = trailer length (u64 LE) | blake3(trailer) (32 B) | b"C3PKEND\\n"

The pack id is the hex blake3 of the trailer: it names every blob, offset and codec, so two
packs with one id hold the same blobs. The trailer alone rebuilds the index.
"""

from __future__ import annotations

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


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[PackEntry])


class PackBuilder:
    """Collects encoded blobs in memory until `finish` returns (pack id, pack bytes)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = [MAGIC]
        self._size = len(MAGIC)
        self.entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, kind: int, blob_id: bytes, codec: int, stored: bytes, plain_len: int) -> PackEntry:
        entry = PackEntry(kind, blob_id, self._size, len(stored), plain_len, codec)
        self._parts.append(stored)
        self._size += len(stored)
        self.entries.append(entry)
        return entry

    def finish(self) -> tuple[str, bytes]:
        pack_id, parts = self.finish_parts()
        return pack_id, b"".join(parts)

    def finish_parts(self) -> tuple[str, list[bytes]]:
        """(pack id, the pack as a list of byte strings), for writers that gather (writev).
        The builder lets go of the parts (only `entries` stay), so they are freed as soon
        as the caller is done with them."""
        trailer = _encoder.encode(self.entries)
        digest = blake3.blake3(trailer).digest()
        parts, self._parts = self._parts, []
        return digest.hex(), [*parts, trailer, FOOTER.pack(len(trailer), digest, END)]


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
