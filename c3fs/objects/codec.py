"""Blob codec: one chunk or tree, zstd-compressed when that shrinks it, raw otherwise.

The codec and the plain length live beside the blob (pack trailer, index), never inside it,
so a reader knows how much memory a blob may take *before* decompressing it: a blob that
claims more than `MAX_PLAIN` is refused, and the zstd frame must agree with the claim.
Every decode checks blake3 of the result against the blob id.
"""

from __future__ import annotations

import threading

import zstandard

from c3fs.errors import BlobCorrupt
from c3fs.objects.ids import blob_id

RAW = 0
ZSTD = 1
CODECS = (RAW, ZSTD)
MAX_PLAIN = 64 * 1024 * 1024  # chunks are far smaller; this bounds trees too

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def encode(plain: bytes | memoryview, level: int = 1) -> tuple[int, bytes]:
    """Return (codec, stored bytes): zstd if it saves at least 1/32 of the size, else raw."""
    packed = _compressor(level).compress(plain)
    if len(packed) + (len(plain) >> 5) < len(plain):
        return ZSTD, packed
    return RAW, bytes(plain)


def encode_many(plains: list[bytes | memoryview], level: int = 1) -> list[tuple[int, bytes | memoryview]]:
    """`encode` of each of `plains` (one zstd frame each, as `encode` makes it), in one call
    that holds no GIL while it compresses: a batch of small files or of one block's chunks
    costs one GIL hand-off, not one per blob (each a wait behind the other threads). The
    stored bytes may be views of one buffer, alive as long as they are."""
    if not plains:
        return []
    packed = _compressor(level).multi_compress_to_buffer(plains, threads=0)
    out: list[tuple[int, bytes | memoryview]] = []
    for i, plain in enumerate(plains):
        frame = memoryview(packed[i])
        if len(frame) + (len(plain) >> 5) < len(plain):
            out.append((ZSTD, frame))
        else:
            out.append((RAW, plain))
    return out


def decode(expected_id: bytes, codec: int, stored: bytes, plain_len: int,
           pack_id: str | None = None) -> bytes:
    """Decode and verify one blob (read from `pack_id`, named in errors). Raises
    BlobCorrupt, never returns wrong bytes."""
    if not 0 <= plain_len <= MAX_PLAIN:
        raise BlobCorrupt(expected_id, pack_id, f"claims {plain_len} plain bytes (max {MAX_PLAIN})")
    if codec == RAW:
        plain = stored
    elif codec == ZSTD:
        plain = _unzstd(expected_id, stored, plain_len, pack_id)
    else:
        raise BlobCorrupt(expected_id, pack_id, f"unknown codec {codec}")
    if len(plain) != plain_len or blob_id(plain) != expected_id:
        raise BlobCorrupt(expected_id, pack_id, "content does not match its id")
    return plain


def _unzstd(expected_id: bytes, stored: bytes, plain_len: int, pack_id: str | None) -> bytes:
    try:
        declared = zstandard.frame_content_size(stored)
    except zstandard.ZstdError as exc:
        raise BlobCorrupt(expected_id, pack_id, f"bad zstd frame: {exc}") from None
    if declared != plain_len:
        raise BlobCorrupt(expected_id, pack_id, f"zstd frame says {declared} bytes, index {plain_len}")
    try:
        return _decompressor().decompress(stored, max_output_size=plain_len)
    except zstandard.ZstdError as exc:
        raise BlobCorrupt(expected_id, pack_id, f"zstd: {exc}") from None
