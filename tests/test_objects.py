"""Unit tests of the object formats: ids, blob codec, packs, trees, job records.

Round trips are hypothesis properties; damage (truncation, flipped bytes, crafted objects
that bypass the encoders) must always end in the one typed error of that format
(`BlobCorrupt`, `FormatError`), never another exception and never wrong data.
"""

from __future__ import annotations

import bisect
import json
import re
import tracemalloc

import blake3
import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from c3fs.errors import BlobCorrupt, FormatError, InvalidId
from c3fs.objects import codec
from c3fs.objects import pack as packfmt
from c3fs.objects import tree as tree_module
from c3fs.objects.ids import blob_id, check_name, new_job_id, parse_hex_id
from c3fs.objects.job import (
    DATASET,
    JOB,
    STATUSES,
    Input,
    JobRecord,
    decode_record,
    encode_record,
)
from c3fs.objects.tree import (
    DIR,
    FILE,
    LINK,
    MAX_NAME,
    TREE_VERSION,
    EncodedTree,
    Entry,
    Tree,
    decode_tree,
    encode_tree,
    file_digest,
    open_tree,
)

MiB = 1024 * 1024
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- ids ----------------------------------------------------------------------------------
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
VALID_NAMES = ["a", "Z", "0", "job_1", "job-2.final", "9.9", "a" * 128, "A" + "._-" * 42 + "x"]
INVALID_NAMES = ["", "-x", ".x", "_x", "..", ".", "../x", "a/b", "/a", "a b", "a\n", "\na",
                 "a" * 129, "é", "job:1", "a\0b", "a\\b", "~x", "x*", " a"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_accepted(name: str) -> None:
    assert check_name(name) == name
    assert check_name(name, "project") == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names_refused(name: str) -> None:
    with pytest.raises(InvalidId) as info:
        check_name(name, "project")
    assert "invalid project" in str(info.value)
    assert "\n" not in str(info.value).replace(repr(name), "")


@given(st.from_regex(NAME_RE, fullmatch=True))
def test_every_name_of_the_pattern_is_accepted(name: str) -> None:
    assert check_name(name) == name


@given(st.text(max_size=140))
def test_check_name_agrees_with_the_pattern(name: str) -> None:
    if NAME_RE.fullmatch(name):
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidId):
            check_name(name)


def test_non_strings_refused() -> None:
    for value in (None, b"job", 12):
        with pytest.raises(InvalidId):
            check_name(value)  # type: ignore[arg-type]


def test_new_job_ids_are_valid_and_unique() -> None:
    ids = {new_job_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(check_name(i) for i in ids)


def test_blob_id_and_hex_ids() -> None:
    assert blob_id(b"abc") == blake3.blake3(b"abc").digest()
    assert len(blob_id(b"")) == 32
    raw = blob_id(b"x")
    assert parse_hex_id(raw.hex()) == raw
    for bad in ("", "zz" * 32, raw.hex()[:-2], raw.hex() + "00"):
        with pytest.raises(InvalidId):
            parse_hex_id(bad)


# ---- codec --------------------------------------------------------------------------------
def roundtrip(data: bytes, level: int = 1) -> tuple[int, bytes]:
    codec_id, stored = codec.encode(data, level)
    assert codec.decode(blob_id(data), codec_id, stored, len(data)) == data
    return codec_id, stored


@FAST
@given(st.binary(max_size=64 * 1024), st.sampled_from([1, 3, 19]))
def test_codec_roundtrip(data: bytes, level: int) -> None:
    codec_id, stored = roundtrip(data, level)
    assert codec_id in codec.CODECS
    if codec_id == codec.RAW:
        assert stored == data
    else:
        assert len(stored) < len(data)  # zstd only when it saves


@FAST
@given(st.binary(min_size=1, max_size=200), st.integers(1, 3000))
def test_codec_roundtrip_repetitive(unit: bytes, repeat: int) -> None:
    roundtrip(unit * repeat)


def test_codec_chooses_zstd_only_when_it_shrinks() -> None:
    assert codec.encode(b"")[0] == codec.RAW
    assert codec.encode(b"abc")[0] == codec.RAW  # a frame header costs more than it saves
    codec_id, stored = codec.encode(b"metric,0.5\n" * 10_000)
    assert codec_id == codec.ZSTD and len(stored) < 1000
    noise = blake3.blake3(b"seed").digest(length=256 * 1024)
    assert codec.encode(noise) == (codec.RAW, noise)


def test_codec_accepts_memoryview() -> None:
    data = b"x" * 100_000
    codec_id, stored = codec.encode(memoryview(data))
    assert codec.decode(blob_id(data), codec_id, stored, len(data)) == data


@FAST
@given(st.binary(min_size=1, max_size=4096), st.data())
def test_codec_flipped_byte_is_blob_corrupt(data: bytes, draw: st.DataObject) -> None:
    for payload in (data, data * 50):  # raw and (usually) zstd
        codec_id, stored = codec.encode(payload)
        pos = draw.draw(st.integers(0, len(stored) - 1))
        flip = draw.draw(st.integers(1, 255))
        damaged = bytearray(stored)
        damaged[pos] ^= flip
        with pytest.raises(BlobCorrupt) as info:
            codec.decode(blob_id(payload), codec_id, bytes(damaged), len(payload))
        assert info.value.blob_id == blob_id(payload)


@FAST
@given(st.binary(max_size=2048), st.binary(max_size=2048), st.sampled_from(codec.CODECS),
       st.integers(-5, 5000))
def test_codec_decode_of_garbage_never_lies(data: bytes, garbage: bytes, codec_id: int,
                                            plain_len: int) -> None:
    """Any (codec, bytes, length) either decodes to the bytes named by the id or is refused."""
    try:
        result = codec.decode(blob_id(data), codec_id, garbage, plain_len)
    except BlobCorrupt:
        return
    assert result == data


def test_codec_wrong_id_length_or_codec() -> None:
    data = b"payload " * 100
    codec_id, stored = codec.encode(data)
    with pytest.raises(BlobCorrupt, match="does not match"):
        codec.decode(blob_id(b"other"), codec_id, stored, len(data))
    with pytest.raises(BlobCorrupt):
        codec.decode(blob_id(data), codec_id, stored, len(data) - 1)
    with pytest.raises(BlobCorrupt, match="unknown codec 7"):
        codec.decode(blob_id(data), 7, stored, len(data))
    with pytest.raises(BlobCorrupt, match="claims -1"):
        codec.decode(blob_id(data), codec_id, stored, -1)
    with pytest.raises(BlobCorrupt):  # raw blob decoded as zstd
        codec.decode(blob_id(data), codec.ZSTD, data, len(data))


def test_codec_refuses_claim_over_max_plain_before_decompressing() -> None:
    """A zstd bomb that honestly declares MAX_PLAIN + 1 bytes is refused without inflating."""
    size = codec.MAX_PLAIN + 1
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * size)
    assert len(bomb) < 64 * 1024
    assert zstandard.frame_content_size(bomb) == size
    tracemalloc.start()
    try:
        with pytest.raises(BlobCorrupt, match=r"claims \d+ plain bytes"):
            codec.decode(b"\1" * 32, codec.ZSTD, bomb, size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, f"decode allocated {peak} bytes before refusing"


def test_codec_zstd_frame_size_must_agree_with_claim() -> None:
    data = b"0123456789" * 10_000
    codec_id, stored = codec.encode(data)
    assert codec_id == codec.ZSTD
    for claim in (len(data) - 1, len(data) + 1, 10, 0):
        with pytest.raises(BlobCorrupt, match="zstd frame says"):
            codec.decode(blob_id(data), codec.ZSTD, stored, claim)
    # a frame that does not declare its size at all is refused too
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    with pytest.raises(BlobCorrupt):
        codec.decode(blob_id(data), codec.ZSTD, undeclared, len(data))
    # a frame that lies: its header declares 100 bytes but its blocks inflate to 200
    data = bytes(range(200))
    frame = bytearray(zstandard.ZstdCompressor(write_content_size=True).compress(data))
    assert frame[4] & 0xE0 == 0x20 and frame[5] == 200  # single segment, 1-byte size field
    frame[5] = 100
    assert zstandard.frame_content_size(bytes(frame)) == 100
    with pytest.raises(BlobCorrupt):
        codec.decode(blob_id(data[:100]), codec.ZSTD, bytes(frame), 100)


def test_codec_refuses_empty_and_truncated_zstd() -> None:
    data = b"abcdef" * 5000
    _, stored = codec.encode(data)
    for cut in (0, 1, 4, len(stored) // 2, len(stored) - 1):
        with pytest.raises(BlobCorrupt):
            codec.decode(blob_id(data), codec.ZSTD, stored[:cut], len(data))


# ---- packs --------------------------------------------------------------------------------
blobs_strategy = st.lists(
    st.tuples(st.sampled_from(packfmt.KINDS),
              st.one_of(st.binary(max_size=3000), st.binary(max_size=40).map(lambda b: b * 100))),
    max_size=12,
)


def build_pack(blobs: list[tuple[int, bytes]]) -> tuple[str, bytes, list[packfmt.PackEntry]]:
    builder = packfmt.PackBuilder()
    for kind, data in blobs:
        codec_id, stored = codec.encode(data)
        builder.add(kind, blob_id(data), codec_id, stored, len(data))
    pack_id, raw = builder.finish()
    return pack_id, raw, builder.entries


def decode_entry(raw: bytes, entry: packfmt.PackEntry) -> bytes:
    stored = raw[entry.offset : entry.offset + entry.length]
    return codec.decode(entry.id, entry.codec, stored, entry.plain_len)


@FAST
@given(blobs_strategy)
def test_pack_roundtrip(blobs: list[tuple[int, bytes]]) -> None:
    pack_id, raw, entries = build_pack(blobs)
    assert raw.startswith(packfmt.MAGIC) and raw.endswith(packfmt.END)
    parsed = packfmt.read_trailer(raw)
    assert parsed == entries
    assert [(e.kind, decode_entry(raw, e)) for e in parsed] == blobs
    length, digest = packfmt.parse_footer(raw[-packfmt.FOOTER.size :], len(raw))
    assert digest.hex() == pack_id
    trailer = raw[-packfmt.FOOTER.size - length : -packfmt.FOOTER.size]
    assert blake3.blake3(trailer).hexdigest() == pack_id


@pytest.mark.parametrize("count", [0, 1, 15, 16, 4097, 65535, 65536])
def test_a_trailer_encoded_in_batches_is_the_msgpack_of_all_entries(count: int) -> None:
    """The builder keeps 50-byte records and encodes its trailer 4,096 entries at a time:
    the bytes are those of one msgpack array of every entry (the header's three sizes)."""
    builder = packfmt.PackBuilder()
    for i in range(count):
        builder.add(i % 2, i.to_bytes(32, "big"), i % 2, b"x" * (i % 7), 100 + i)
    entries = builder.entries
    assert [e.offset for e in entries[:3]] == [8, 8, 9][:count]
    pack_id, raw = builder.finish()
    trailer = msgspec.msgpack.encode(entries)
    assert raw.endswith(trailer + packfmt.FOOTER.pack(len(trailer), blake3.blake3(trailer).digest(),
                                                      packfmt.END))
    assert packfmt.read_trailer(raw) == entries
    assert pack_id == blake3.blake3(trailer).hexdigest()


def test_pack_ids_name_their_content() -> None:
    a = build_pack([(packfmt.CHUNK, b"one"), (packfmt.TREE, b"two")])
    b = build_pack([(packfmt.CHUNK, b"one"), (packfmt.TREE, b"two")])
    c = build_pack([(packfmt.CHUNK, b"one"), (packfmt.CHUNK, b"two")])
    assert a[0] == b[0] != c[0]
    assert len(a[0]) == 64


@FAST
@given(blobs_strategy, st.data())
def test_pack_truncated_is_format_error(blobs, draw: st.DataObject) -> None:
    _, raw, _ = build_pack(blobs)
    cut = draw.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(FormatError):
        packfmt.read_trailer(raw[:cut])


@FAST
@given(blobs_strategy, st.data())
def test_pack_flipped_byte_never_gives_wrong_data(blobs, draw: st.DataObject) -> None:
    """A flip in the header, trailer or footer is a FormatError; in a blob, BlobCorrupt."""
    _, raw, entries = build_pack(blobs)
    pos = draw.draw(st.integers(0, len(raw) - 1))
    damaged = bytearray(raw)
    damaged[pos] ^= draw.draw(st.integers(1, 255))
    damaged = bytes(damaged)
    try:
        parsed = packfmt.read_trailer(damaged)
    except FormatError:
        return
    assert parsed == entries  # only blob bytes were hit: the trailer is intact
    hit = [e for e in parsed if e.offset <= pos < e.offset + e.length]
    assert len(hit) == 1
    with pytest.raises(BlobCorrupt):
        decode_entry(damaged, hit[0])


@FAST
@given(st.binary(max_size=300))
def test_pack_garbage_is_format_error(garbage: bytes) -> None:
    for data in (garbage, packfmt.MAGIC + garbage, packfmt.MAGIC + garbage + packfmt.END):
        with pytest.raises(FormatError):
            packfmt.read_trailer(data)


def crafted_pack(trailer: bytes, body: bytes = b"") -> bytes:
    digest = blake3.blake3(trailer).digest()
    return packfmt.MAGIC + body + trailer + packfmt.FOOTER.pack(len(trailer), digest, packfmt.END)


BAD_ENTRIES = [
    [9, b"\1" * 32, 8, 0, 0, 0],  # unknown kind
    [0, b"\1" * 32, 8, 0, 0, 9],  # unknown codec
    [0, b"\1" * 31, 8, 0, 0, 0],  # short id
    [0, b"\1" * 32, 0, 4, 4, 0],  # inside the magic
    [0, b"\1" * 32, 8, 5000, 5000, 0],  # past the data
    [0, b"\1" * 32, 8, -1, 0, 0],  # negative length
    [0, b"\1" * 32, 8, 0, codec.MAX_PLAIN + 1, 0],  # claims too much
]


@pytest.mark.parametrize("entry", BAD_ENTRIES, ids=lambda e: repr(e)[:40])
def test_pack_crafted_trailer_entries_refused(entry: list) -> None:
    raw = crafted_pack(msgspec.msgpack.encode([entry]), body=b"x" * 16)
    with pytest.raises(FormatError):
        packfmt.read_trailer(raw)


@pytest.mark.parametrize("trailer", [b"\xc1", msgspec.msgpack.encode({"a": 1}),
                                     msgspec.msgpack.encode([[0, 1, 2]]),
                                     msgspec.msgpack.encode("entries")])
def test_pack_undecodable_trailer_with_valid_digest_refused(trailer: bytes) -> None:
    with pytest.raises(FormatError):
        packfmt.read_trailer(crafted_pack(trailer))


def test_pack_footer_claiming_huge_trailer_refused() -> None:
    _, raw, _ = build_pack([(packfmt.CHUNK, b"abc")])
    length, digest = packfmt.parse_footer(raw[-packfmt.FOOTER.size :], len(raw))
    for bogus in (len(raw), packfmt.MAX_TRAILER + 1, 2**64 - 1):
        footer = packfmt.FOOTER.pack(bogus, digest, packfmt.END)
        with pytest.raises(FormatError):
            packfmt.read_trailer(raw[: -packfmt.FOOTER.size] + footer)


# ---- trees --------------------------------------------------------------------------------
def _valid_name(name: bytes) -> bool:
    return name not in (b".", b"..") and b"/" not in name and b"\0" not in name


names = st.binary(min_size=1, max_size=MAX_NAME).filter(_valid_name)
mtimes = st.integers(-(2**63), 2**63 - 1)
modes = st.integers(0, 0o7777)
ids32 = st.binary(min_size=32, max_size=32)


@st.composite
def file_entries(draw, name) -> Entry:
    sizes = draw(st.lists(st.integers(1, 1 << 20), max_size=6))
    chunks = b"".join(draw(ids32) for _ in sizes)
    return Entry(name, FILE, draw(modes), sum(sizes), draw(mtimes), chunks=chunks, sizes=sizes)


@st.composite
def entries(draw) -> Entry:
    name = draw(names)
    kind = draw(st.sampled_from([FILE, DIR, LINK]))
    if kind == FILE:
        return draw(file_entries(name))
    if kind == DIR:
        return Entry(name, DIR, draw(modes), 0, draw(mtimes), target=draw(ids32))
    target = draw(st.binary(min_size=1, max_size=300).filter(lambda t: b"\0" not in t))
    return Entry(name, LINK, draw(modes), 0, draw(mtimes), target=target)


entry_lists = st.lists(entries(), max_size=20, unique_by=lambda e: e.name)


@FAST
@given(entry_lists)
def test_tree_roundtrip(items: list[Entry]) -> None:
    data = encode_tree(items)
    tree = decode_tree(data)
    assert tree.version == TREE_VERSION
    assert tree.entries == sorted(items, key=lambda e: e.name)
    assert encode_tree(tree.entries) == data  # canonical: same entries, same bytes, same id
    encoded = EncodedTree(data)
    assert encoded.version == TREE_VERSION and len(encoded) == len(items)
    assert list(encoded) == tree.entries and encoded[:] == tree.entries
    assert [encoded[i] for i in range(-len(items), 0)] == tree.entries
    sequential = encoded.sequential()
    assert [sequential[i] for i in range(len(items))] == tree.entries
    for i, entry in enumerate(tree.entries):
        assert encoded.find(entry.name) == i
        assert encoded.bisect(entry.name) == i and encoded.bisect(entry.name, right=True) == i + 1
        assert encoded.find(entry.name + b"\x00x") == -1  # (never a name: sorts right after)
    encoded.check()


def test_a_listing_decodes_what_it_shows_of_each_entry() -> None:
    """readdir's runs: names and kinds (`Listed`), or the attributes without chunk sizes
    (`Shown`), equal to the entries' own fields; out of order or out of range: refused."""
    items = [file_entry(b"f%04d" % i, mtime_ns=i) for i in range(300)]
    items += [Entry(b"g", DIR, 0o755, 0, 7, target=b"\3" * 32),
              Entry(b"h", LINK, 0o777, 0, 8, target=b"f0001")]
    tree = EncodedTree(encode_tree(items))
    listed = tree.listed(250, 100)
    assert [(e.name, e.kind) for e in listed] == [(e.name, e.kind) for e in items[250:]]
    shown = tree.listed(0, 400, True)
    assert [(e.name, e.kind, e.mode, e.size, e.mtime_ns, e.target, e.chunks) for e in shown] == [
        (e.name, e.kind, e.mode, e.size, e.mtime_ns, e.target, e.chunks) for e in items]
    assert tree.listed(302) == [] and tree.listed(-1) == []
    out_of_order = EncodedTree(raw_tree([file_entry(b"b"), file_entry(b"a")]))
    with pytest.raises(FormatError, match="out of order"):
        out_of_order.listed(0)
    bad_kind = EncodedTree(raw_tree([Entry(b"a", 7, 0o644, 0, 0)]))
    with pytest.raises(FormatError):
        bad_kind.listed(0, shown=True)


def test_an_encoded_tree_is_read_in_place() -> None:
    """Opening a tree decodes only where its entries start: 4 bytes an entry beside its
    bytes, entries decoded when asked for, in runs when read in order."""
    items = [file_entry(b"f%06d" % i) for i in range(3000)]
    data = encode_tree(items)
    tree = EncodedTree(data)
    assert tree.data is data and tree.nbytes == len(data) + 4 * 3001
    assert tree.run(2990) == items[2990:] and tree.run(3000) == [] and tree.run(0, 5) == items[:5]
    assert tree.find(b"f002999") == 2999 and tree.find(b"f0030") == -1 and tree.find(b"") == -1
    assert tree.bisect(b"f0015") == 1500 and tree.bisect(b"g") == 3000
    with pytest.raises(IndexError):
        tree[3000]


@pytest.mark.parametrize("count", [0, 3, 20, 70_000])
def test_a_tree_encoded_otherwise_opens_as_the_canonical_one(count: int, monkeypatch) -> None:
    """Where entries start is found from the header c3fs writes (an array of two, a small
    version, the entries' array header): a tree whose header is encoded otherwise (legal
    msgpack, bigger ints) opens the same, and opening decodes its entries only once."""
    items = [file_entry(b"f%06d" % i) for i in range(count)]
    data = encode_tree(items)
    body = b"".join(map(msgspec.msgpack.encode, items))
    n = len(items)
    for header in (b"\x92\x02", b"\x92\xcc\x02", b"\xdc\x00\x02\x02", b"\xdd\x00\x00\x00\x02\x02"):
        for entries_header in ([b"\xdc" + n.to_bytes(2, "big")] if n < 1 << 16 else []) + [
                b"\xdd" + n.to_bytes(4, "big")]:
            other = header + entries_header + body
            tree = open_tree(other, None, None)
            assert tree.version == TREE_VERSION and len(tree) == n
            assert tree[:] == items and (not n or tree.find(items[-1].name) == n - 1)
    calls = []
    real = tree_module._raw_decoder

    class Counting:
        def decode(self, buf):
            calls.append(len(buf))
            return real.decode(buf)

    monkeypatch.setattr(tree_module, "_raw_decoder", Counting())
    opened = open_tree(data, None, None)
    assert opened[:] == items and calls == [len(data)]


@FAST
@given(entry_lists, st.randoms())
def test_tree_encoding_ignores_input_order(items: list[Entry], rnd) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert encode_tree(shuffled) == encode_tree(items)


def test_tree_entry_helpers() -> None:
    ids = [b"\1" * 32, b"\2" * 32]
    entry = Entry(b"f", FILE, 0o640, 30, 5, chunks=b"".join(ids), sizes=[10, 20])
    assert entry.chunk_ids() == ids
    assert entry.st_mode == 0o100640 and not entry.is_dir
    assert Entry(b"d", DIR, 0o755, 0, 0, target=b"\0" * 32).st_mode == 0o40755
    assert Entry(b"l", LINK, 0o777, 0, 0, target=b"x").st_mode == 0o120777


def raw_tree(items: list[Entry], version: int = TREE_VERSION) -> bytes:
    """Encode without any check, as an attacker (or a bug) could."""
    return msgspec.msgpack.encode(Tree(version, items))


def file_entry(name: bytes, mtime_ns: int = 0) -> Entry:
    return Entry(name, FILE, 0o644, 3, mtime_ns, chunks=b"\1" * 32, sizes=[3])


UNSAFE_NAMES = [b"", b".", b"..", b"/", b"a/b", b"../etc", b"/etc/passwd", b"a\0b", b"\0",
                b"x" * (MAX_NAME + 1)]


@pytest.mark.parametrize("name", UNSAFE_NAMES, ids=lambda n: repr(n)[:30])
def test_tree_decode_refuses_unsafe_names(name: bytes) -> None:
    for entry in (file_entry(name), Entry(name, DIR, 0o755, 0, 0, target=b"\3" * 32),
                  Entry(name, LINK, 0o777, 0, 0, target=b"t")):
        with pytest.raises(FormatError):
            decode_tree(raw_tree([entry]))
        with pytest.raises(FormatError):
            encode_tree([entry])
        encoded = EncodedTree(raw_tree([file_entry(b"a"), entry]))  # refused when decoded
        with pytest.raises(FormatError):
            encoded[1]
        with pytest.raises(FormatError):
            encoded.check()
        for shown in (False, True):  # a listing (readdir) refuses it too
            with pytest.raises(FormatError):
                encoded.listed(0, 2, shown)
        assert encoded[0] == file_entry(b"a")


def test_tree_decode_refuses_unsorted_and_duplicate_names() -> None:
    a, b = file_entry(b"a"), file_entry(b"b")
    assert decode_tree(raw_tree([a, b])).entries == [a, b]
    with pytest.raises(FormatError, match="out of order"):
        decode_tree(raw_tree([b, a]))
    with pytest.raises(FormatError, match="out of order"):
        decode_tree(raw_tree([a, a]))
    for entries in ([b, a], [a, a], [*(file_entry(b"%04d" % i) for i in range(300)), a, a],
                    [*(file_entry(b"%04d" % i) for i in range(256)), file_entry(b"0000")]):
        with pytest.raises(FormatError, match="out of order"):
            EncodedTree(raw_tree(entries)).check()
    with pytest.raises(FormatError):
        encode_tree([a, file_entry(b"a", mtime_ns=0)])


BAD_ENTRIES_TREE = {
    "chunk list not a multiple of 32": Entry(b"f", FILE, 0o644, 3, 0, chunks=b"\1" * 31, sizes=[3]),
    "more ids than sizes": Entry(b"f", FILE, 0o644, 3, 0, chunks=b"\1" * 64, sizes=[3]),
    "more sizes than ids": Entry(b"f", FILE, 0o644, 6, 0, chunks=b"\1" * 32, sizes=[3, 3]),
    "sizes do not add up": Entry(b"f", FILE, 0o644, 4, 0, chunks=b"\1" * 32, sizes=[3]),
    "size without chunks": Entry(b"f", FILE, 0o644, 4, 0),
    "zero-size chunk": Entry(b"f", FILE, 0o644, 0, 0, chunks=b"\1" * 32, sizes=[0]),
    "chunk over MAX_PLAIN": Entry(b"f", FILE, 0o644, codec.MAX_PLAIN + 1, 0, chunks=b"\1" * 32,
                                  sizes=[codec.MAX_PLAIN + 1]),
    "file with target": Entry(b"f", FILE, 0o644, 0, 0, target=b"x"),
    "dir without subtree": Entry(b"d", DIR, 0o755, 0, 0),
    "dir with short subtree id": Entry(b"d", DIR, 0o755, 0, 0, target=b"\1" * 31),
    "dir with chunks": Entry(b"d", DIR, 0o755, 0, 0, target=b"\1" * 32, chunks=b"\1" * 32,
                             sizes=[1]),
    "link without target": Entry(b"l", LINK, 0o777, 0, 0),
    "link target with NUL": Entry(b"l", LINK, 0o777, 0, 0, target=b"a\0b"),
    "link target too long": Entry(b"l", LINK, 0o777, 0, 0, target=b"x" * 5000),
    "link with chunks": Entry(b"l", LINK, 0o777, 0, 0, target=b"t", chunks=b"\1" * 32, sizes=[1]),
    "unknown kind": Entry(b"x", 3, 0o644, 0, 0),
    "mode beyond 0o7777": Entry(b"f", FILE, 0o10000, 0, 0),
    "negative size": Entry(b"f", FILE, 0o644, -1, 0),
}


@pytest.mark.parametrize("case", sorted(BAD_ENTRIES_TREE))
def test_tree_decode_refuses_bad_entries(case: str) -> None:
    with pytest.raises(FormatError):
        decode_tree(raw_tree([BAD_ENTRIES_TREE[case]]))
    encoded = EncodedTree(raw_tree([BAD_ENTRIES_TREE[case]]))
    with pytest.raises(FormatError):
        encoded[0]
    with pytest.raises(FormatError):
        encoded.check()


DIGEST_ENTRIES = [  # valid in a version 2 tree only, and never on a file of one chunk
    Entry(b"g", FILE, 0o644, 6, 0, chunks=b"\1" * 64, sizes=[3, 3], digest=b"\2" * 32),
    Entry(b"g", FILE, 0o644, 3, 0, chunks=b"\1" * 32, sizes=[3], digest=b"\2" * 32),
]


@settings(max_examples=20, deadline=None)
@given(entry_lists)
def test_tree_checks_in_bulk_find_what_the_entry_by_entry_ones_find(items) -> None:
    """`_check` (common entries in bulk) refuses exactly what `_check_slowly` does, with the
    same message, for every odd entry, file of an unsafe (or repeated) name, each in its place
    by name, with or without two entries swapped, in trees of either version."""
    from c3fs.objects import tree as trees

    def outcome(check, tree: Tree) -> str | None:
        try:
            check(tree)
        except FormatError as exc:
            return str(exc)
        return None

    ordered = sorted(items, key=lambda e: e.name)
    for odd in (None, *BAD_ENTRIES_TREE.values(), *DIGEST_ENTRIES):
        for name in (None, *UNSAFE_NAMES, b"a", b"b"):
            for swap, version in ((False, 1), (False, 2), (True, 2)):
                tree = Tree(version, list(ordered))
                for extra in (odd, None if name is None else file_entry(name)):
                    if extra is not None:
                        at = bisect.bisect([e.name for e in tree.entries], extra.name)
                        tree.entries.insert(at, extra)
                if swap and len(tree.entries) >= 2:
                    tree.entries[0], tree.entries[-1] = tree.entries[-1], tree.entries[0]
                assert outcome(trees._check, tree) == outcome(trees._check_slowly, tree)


def test_tree_decode_refuses_other_versions_and_shapes() -> None:
    for version in (0, 4):
        with pytest.raises(FormatError, match="version"):
            decode_tree(raw_tree([], version=version))
        with pytest.raises(FormatError, match="version"):
            EncodedTree(raw_tree([], version=version))
    for tree in (decode_tree, EncodedTree):  # version 3: a paged directory's index
        with pytest.raises(FormatError, match="paged directory"):
            tree(raw_tree([], version=3))
    for data in (b"", b"\xc1", msgspec.msgpack.encode([1]), msgspec.msgpack.encode({"v": 1}),
                 msgspec.msgpack.encode([1, [[b"a", 0]]]), msgspec.msgpack.encode([1, [["a", 0, 0, 0, 0]]]),
                 msgspec.msgpack.encode([1, [1]]), msgspec.msgpack.encode([1, [[b"a", 0]], 3])):
        with pytest.raises(FormatError):
            decode_tree(data)
        with pytest.raises(FormatError):
            EncodedTree(data).check()


@FAST
@given(entry_lists, st.data())
def test_tree_damaged_bytes_are_format_error_or_a_valid_tree(items, draw: st.DataObject) -> None:
    data = bytearray(encode_tree(items))
    assume(data)
    pos = draw.draw(st.integers(0, len(data) - 1))
    data[pos] ^= draw.draw(st.integers(1, 255))
    cut = draw.draw(st.integers(0, len(data)))
    try:
        tree = decode_tree(bytes(data[:cut]))
    except FormatError:
        tree = None
    if tree is not None:
        for entry in tree.entries:  # whatever decodes has passed every check
            assert _valid_name(entry.name) and len(entry.name) <= MAX_NAME
    try:
        encoded = EncodedTree(bytes(data[:cut]))
        decoded = [encoded[i] for i in range(len(encoded))]
    except FormatError:
        return
    for entry in decoded:  # each entry decoded alone has passed every check of an entry
        assert _valid_name(entry.name) and len(entry.name) <= MAX_NAME


@FAST
@given(st.binary(max_size=500))
def test_tree_garbage_is_format_error_or_a_valid_tree(data: bytes) -> None:
    try:
        decode_tree(data)
    except FormatError:
        pass
    try:
        EncodedTree(data).check()
    except FormatError:
        pass


# ---- job records --------------------------------------------------------------------------
valid_names = st.from_regex(NAME_RE, fullmatch=True)
floats = st.floats(0, 4e9, allow_nan=False)


@st.composite
def records(draw) -> JobRecord:
    return JobRecord(
        kind=draw(st.sampled_from([JOB, DATASET])),
        id=draw(valid_names),
        project=draw(valid_names),
        status=draw(st.sampled_from(STATUSES)),
        reason=draw(st.text(max_size=50)),
        exit_code=draw(st.none() | st.integers(-255, 255)),
        command=draw(st.lists(st.text(max_size=20), max_size=4)),
        created=draw(floats),
        started=draw(st.none() | floats),
        ended=draw(st.none() | floats),
        root=draw(ids32).hex(),
        logical_bytes=draw(st.integers(0, 2**62)),
        files=draw(st.integers(0, 2**40)),
        stored_delta=draw(st.integers(0, 2**62)),
        inputs=draw(st.lists(st.builds(Input, valid_names, ids32.map(bytes.hex), st.text(max_size=20)),
                             max_size=3)),
        host=draw(st.text(max_size=30)),
    )


@FAST
@given(records())
def test_job_record_roundtrip(record: JobRecord) -> None:
    data = encode_record(record)
    assert decode_record(data) == record
    assert json.loads(data)["id"] == record.id
    assert decode_record(data).root_id == bytes.fromhex(record.root)


def sample_record(**changes) -> dict:
    base = dict(id="job_1", project="vision", created=1.5, root="ab" * 32)
    base.update(changes)
    return base


@pytest.mark.parametrize("changes", [
    {"id": "../x"}, {"id": ""}, {"project": "a/b"}, {"root": "zz"}, {"root": "ab" * 31},
    {"status": "DONE"}, {"version": 2}, {"kind": "folder"}, {"created": "yesterday"},
    {"files": "many"},
], ids=lambda c: ",".join(f"{k}={v!r}"[:20] for k, v in c.items()))
def test_job_record_bad_fields_are_format_error(changes: dict) -> None:
    with pytest.raises(FormatError):
        decode_record(json.dumps(sample_record(**changes)).encode())


def test_job_record_missing_fields_and_non_json() -> None:
    for data in (b"", b"{", b"[]", b"null", b'{"id": "x"}', b"\xff\xfe", json.dumps(
            {k: v for k, v in sample_record().items() if k != "root"}).encode()):
        with pytest.raises(FormatError):
            decode_record(data)


@FAST
@given(records(), st.data())
def test_job_record_damaged_json_is_format_error_or_valid(record, draw: st.DataObject) -> None:
    data = bytearray(encode_record(record))
    cut = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(FormatError):
        decode_record(bytes(data[:cut]))  # every proper prefix of a JSON object is invalid
    pos = draw.draw(st.integers(0, len(data) - 1))
    data[pos] ^= draw.draw(st.integers(1, 255))
    try:
        damaged = decode_record(bytes(data))
    except FormatError:
        return
    check_name(damaged.id)
    check_name(damaged.project, "project")
    assert len(damaged.root_id) == 32


# file digests (tree version 2) ---------------------------------------------------------------
def two_chunks(digest: bytes = b"") -> Entry:
    return Entry(b"f", FILE, 0o644, 3, 0, chunks=b"\1" * 32 + b"\2" * 32, sizes=[1, 2],
                 digest=digest)


def test_tree_version_1_is_read_without_digests() -> None:
    """A tree written before 0.2 (8 fields an entry, version 1) decodes as it is."""
    old = msgspec.msgpack.encode([1, [[b"f", FILE, 0o644, 3, 0, b"", b"\1" * 32 + b"\2" * 32,
                                       [1, 2]]]])
    (entry,) = decode_tree(old).entries
    assert entry.digest == b"" and file_digest(entry) is None
    assert file_digest(file_entry(b"one")) == b"\1" * 32  # one chunk: its id
    assert file_digest(Entry(b"e", FILE, 0o644, 0, 0)) == blake3.blake3(b"").digest()


def test_tree_digest_is_kept_and_checked() -> None:
    entry = two_chunks(b"\3" * 32)
    (decoded,) = decode_tree(encode_tree([entry])).entries
    assert decoded.digest == b"\3" * 32 and file_digest(decoded) == b"\3" * 32
    bad = {
        "short": two_chunks(b"\3" * 31),
        "one chunk": Entry(b"f", FILE, 0o644, 3, 0, chunks=b"\1" * 32, sizes=[3], digest=b"\3" * 32),
        "directory": Entry(b"d", DIR, 0o755, 0, 0, target=b"\0" * 32, digest=b"\3" * 32),
    }
    for case, item in bad.items():
        with pytest.raises(FormatError, match="digest"):
            decode_tree(raw_tree([item]))
        assert case
    with pytest.raises(FormatError, match="version 1"):
        decode_tree(raw_tree([entry], version=1))
