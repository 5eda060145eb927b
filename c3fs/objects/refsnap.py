"""Ref snapshots: every job and dataset record of a store as of one moment, in one object.

A new machine's first command on a store of 100,000 jobs would otherwise list every ref and
fetch each one (on S3: 100 LIST requests and 100,000 GETs, minutes at 20 ms a round trip).
With a snapshot it fetches one object, then reads the ref change log from the snapshot's
moment on, as a machine that had listed everything then would (`c3fs.index`).

Layout: a zstd stream of `MAGIC`, the moment (u64, milliseconds since the epoch, when the
listing that made it began), then each record as a u32 length and its bytes (the ref's own
encoding, `encode_record`), and a u32 zero that ends it (a truncated snapshot has none).
Its key names the moment and the blake3 of the whole object, which a reader checks: a
snapshot is never trusted beyond what a ref is (each record is decoded and checked as a
ref's is), and a damaged one is skipped.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator

import zstandard
from blake3 import blake3

from c3fs.errors import FormatError
from c3fs.objects.job import JobRecord, decode_record

MAGIC = b"c3fs-refs-1\n"
_MS = struct.Struct("<Q")
_LEN = struct.Struct("<I")
MAX_RECORD = 1 << 20  # a ref is a few hundred bytes; a length past this is damage
DIGEST_HEX = 32  # the blake3 prefix in the key (128 bits)


def encode(ms: int, records: Iterable[bytes], level: int = 3) -> bytes:
    """The snapshot of `records` (each a ref's encoded bytes), taken at `ms`; streamed
    through the compressor, so only the compressed object is held whole."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=level).stream_writer(out, closefd=False) as z:
        z.write(MAGIC + _MS.pack(ms))
        for raw in records:
            z.write(_LEN.pack(len(raw)))
            z.write(raw)
        z.write(_LEN.pack(0))
    return out.getvalue()


def digest(data: bytes) -> str:
    return blake3(data).hexdigest()[:DIGEST_HEX]


def decode(data: bytes, ms: int, want_digest: str) -> Iterator[JobRecord]:
    """The records of the snapshot `data`, whose key said `ms` and `want_digest`; raises
    FormatError (also part way through: the caller applies nothing until the end)."""
    if digest(data) != want_digest:
        raise FormatError("ref snapshot: its content does not match its name")
    try:
        stream = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data))
        head = _read(stream, len(MAGIC) + _MS.size)
        if head[: len(MAGIC)] != MAGIC or _MS.unpack(head[len(MAGIC):])[0] != ms:
            raise FormatError("ref snapshot: not a snapshot of the moment its name says")
        while length := _LEN.unpack(_read(stream, _LEN.size))[0]:
            if length > MAX_RECORD:
                raise FormatError(f"ref snapshot: a record of {length} bytes")
            yield decode_record(_read(stream, length))
    except zstandard.ZstdError as exc:
        raise FormatError(f"ref snapshot: {exc}") from None


def _read(stream, n: int) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise FormatError("ref snapshot: truncated")
        data += more
    return data


__all__ = ["JobRecord", "decode", "digest", "encode"]
