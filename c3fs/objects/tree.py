"""Trees: one directory, entries sorted by name bytes, encoded with msgspec (msgpack).

Readers hold a tree as an `EncodedTree`: its encoded bytes and where each entry starts (4
bytes an entry), decoding an entry when it is asked for, and a lookup by name bisects names
(a decoded entry costs ~400 B, ~70 B encoded: a cache of decoded trees held 100 MiB after
`find` of a million files, and a lookup in a directory of 100,000 entries that had left it
decoded all of them again, 150 ms). `decode_tree` decodes a whole tree (`Tree`) at once.

A file lists its chunk ids (concatenated, 32 bytes each) and their plain sizes, so a reader
computes offsets without touching the index, and (version 2) the blake3 of its whole content
when that is not already a chunk id: a file of one chunk has its chunk's id as digest, an
empty file blake3 of nothing, so only files of two or more chunks carry one (`file_digest`).
Version 1 trees (written before 0.2) have no digests and are read as they are. A directory names its subtree's id, a symlink
its target. Names are bytes: any POSIX name survives; a name that could escape a directory
(empty, `.`, `..`, `/` or NUL inside) is refused when a tree is decoded, not when it is used.
"""

from __future__ import annotations

import stat
from array import array
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Annotated

import msgspec

from c3fs.errors import FormatError
from c3fs.objects.codec import MAX_PLAIN

FILE = 0
DIR = 1
LINK = 2
TREE_VERSION = 2  # 2: files of 2+ chunks carry `digest`
TREE_VERSIONS = (1, 2)  # what is read
MAX_NAME = 255
MAX_TARGET = 4096

NonNeg = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class Entry(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    name: bytes
    kind: Annotated[int, msgspec.Meta(ge=0, le=2)]
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    size: NonNeg
    mtime_ns: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    target: bytes = b""  # subtree id (DIR) or link target (LINK)
    chunks: bytes = b""  # FILE: concatenated 32-byte chunk ids
    sizes: list[NonNeg] = []  # FILE: plain size of each chunk
    digest: bytes = b""  # FILE of 2+ chunks (tree version 2): blake3 of its whole content

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR

    @property
    def st_mode(self) -> int:
        return st_mode(self.kind, self.mode)

    def chunk_ids(self) -> list[bytes]:
        return [self.chunks[i : i + 32] for i in range(0, len(self.chunks), 32)]


EMPTY_DIGEST = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")


def file_digest(entry: Entry) -> bytes | None:
    """blake3 of a file's whole content (what `b3sum` prints), when the tree knows it: None
    only for a file of 2+ chunks from a version 1 tree, whose digest needs its bytes."""
    if entry.digest:
        return entry.digest
    if len(entry.chunks) <= 32:
        return entry.chunks or EMPTY_DIGEST
    return None


def st_mode(kind: int, mode: int) -> int:
    """The POSIX st_mode of an entry: its file-type bits and permission bits."""
    return {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, LINK: stat.S_IFLNK}[kind] | mode


class Tree(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    entries: list[Entry]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Tree)


def encode_tree(entries: list[Entry]) -> bytes:
    """Encode entries (sorted here by name bytes) after checking them as decode would."""
    ordered = sorted(entries, key=lambda e: e.name)
    tree = Tree(TREE_VERSION, ordered)
    _check(tree)
    return _encoder.encode(tree)


def decode_tree(data: bytes) -> Tree:
    try:
        tree = _decoder.decode(data)
    except msgspec.DecodeError as exc:  # its schema is closed, so no nesting past Entry.sizes
        raise FormatError(f"damaged tree: {exc}") from None
    _check(tree)
    return tree


class _RawTree(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    entries: list[msgspec.Raw]


class _Name(msgspec.Struct, array_like=True):  # an entry's first field (the rest skipped)
    name: bytes


_raw_decoder = msgspec.msgpack.Decoder(_RawTree)
_entry_decoder = msgspec.msgpack.Decoder(Entry)
_run_decoder = msgspec.msgpack.Decoder(list[Entry])
RUN = 256  # entries decoded in one call when read in order (~190 ns an entry, alone ~500)
_name_decoder = msgspec.msgpack.Decoder(_Name)


class EncodedTree(Sequence[Entry]):
    """A tree whose entries stay encoded until asked for: `tree[i]` decodes and checks entry
    `i` (as `decode_tree` would: a name that could escape a directory is refused before it
    is used), `find(name)` bisects the names (O(log n) small decodes). Opening one decodes
    only the entries' boundaries (~50 ns an entry). Iterating checks the order of the names
    too, and `check()` checks every entry once; a lookup checks only what it decodes (a
    crafted tree out of order may then miss a name, never yield an unsafe one).

    `entries` is the tree itself (as `Tree.entries`); `nbytes` what it holds in memory.
    Immutable, so shared by threads."""

    __slots__ = ("version", "data", "_view", "_starts", "_checked")

    def __init__(self, data: bytes) -> None:
        try:
            raw = _raw_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:  # (an entry may nest anything)
            raise FormatError(f"damaged tree: {exc}") from None
        _check_version(raw.version)
        lengths = array("I", map(len, raw.entries))
        first = len(data) - sum(lengths)  # the entries are the end of the tree
        self.version = raw.version
        self.data = data
        self._view = memoryview(data)
        self._starts = array("I", accumulate(lengths, initial=first))
        self._checked = False

    @property
    def entries(self) -> EncodedTree:
        return self

    @property
    def nbytes(self) -> int:
        return len(self.data) + self._starts.itemsize * len(self._starts)

    def __len__(self) -> int:
        return len(self._starts) - 1

    def __getitem__(self, i):  # (int -> Entry, slice -> list[Entry])
        if type(i) is not int:
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self._starts) - 1:
            raise IndexError("tree entry index out of range")
        return self._decode(i)

    def _decode(self, i: int) -> Entry:
        starts = self._starts
        try:
            entry = _entry_decoder.decode(self._view[starts[i]:starts[i + 1]])
        except msgspec.DecodeError as exc:
            raise FormatError(f"damaged tree: entry {i}: {exc}") from None
        check_name(entry.name)
        _check_entry(entry)
        if entry.digest and self.version == 1:
            raise FormatError(f"{entry.name!r} has a digest in a version 1 tree")
        return entry

    def run(self, i: int, count: int = RUN, check: bool = True) -> list[Entry]:
        """Entries `i` to `i + count` (fewer at the end), decoded in one call and checked,
        their order too (`check=False`: for a tree whose `check()` passed)."""
        starts = self._starts
        end = min(i + count, len(starts) - 1)
        if not 0 <= i < end:
            return []
        try:
            entries = _run_decoder.decode(_array_header(end - i) + self._view[starts[i]:starts[end]])
        except msgspec.DecodeError as exc:
            raise FormatError(f"damaged tree: entries {i}-{end - 1}: {exc}") from None
        if check:
            _check_entries(entries, self.version)
        return entries

    def sequential(self) -> Sequence[Entry]:
        """The entries as a sequence for one reader that goes through them in order (a
        directory handle's readdir): `RUN` decoded at a time."""
        return _Sequential(self)

    def name(self, i: int) -> bytes:
        """The name of entry `i` (decoded alone: for bisecting, not checked)."""
        try:
            return _name_decoder.decode(self._view[self._starts[i]:self._starts[i + 1]]).name
        except msgspec.DecodeError as exc:
            raise FormatError(f"damaged tree: entry {i}: {exc}") from None

    def bisect(self, name: bytes, right: bool = False) -> int:
        """Where `name` is or would go in the sorted names (bisect_left, or bisect_right)."""
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            here = self.name(mid)
            if here < name or (right and here == name):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def find(self, name: bytes) -> int:
        """The index of the entry named `name`, or -1."""
        i = self.bisect(name)
        return i if i < len(self) and self.name(i) == name else -1

    def __iter__(self) -> Iterator[Entry]:
        previous, check = None, not self._checked
        for i in range(0, len(self), RUN):
            entries = self.run(i, check=check)
            if previous is not None and entries[0].name <= previous:
                raise FormatError(f"tree entries out of order at {entries[0].name!r}")
            previous = entries[-1].name
            yield from entries

    def check(self) -> None:
        """Check every entry and their order (as `decode_tree` does), once per tree."""
        if not self._checked:
            for _ in self:
                pass
            self._checked = True  # (iterating again decodes without checking)


class _Sequential(Sequence[Entry]):
    """`EncodedTree.sequential`: the last run decoded, and the tree."""

    __slots__ = ("tree", "_first", "_run")

    def __init__(self, tree: EncodedTree) -> None:
        self.tree = tree
        self._first = 0
        self._run: list[Entry] = []

    def __len__(self) -> int:
        return len(self.tree)

    def __getitem__(self, i):
        if type(i) is int and 0 <= i - self._first < len(self._run):
            return self._run[i - self._first]
        if type(i) is not int or not 0 <= i < len(self.tree):
            return self.tree[i]
        self._run, self._first = self.tree.run(i), i
        return self._run[0]


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def check_name(name: bytes) -> None:
    if not name or len(name) > MAX_NAME or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FormatError(f"unsafe name in tree: {name!r}")


def _check_version(version: int) -> None:
    if version not in TREE_VERSIONS:
        raise FormatError(f"tree version {version} is not supported by c3fs "
                          f"{_c3fs_version()}: a newer c3fs wrote it")


def _check(tree: Tree) -> None:
    _check_version(tree.version)
    _check_entries(tree.entries, tree.version)


def _check_slowly(tree: Tree) -> None:
    """`_check`, every entry checked one by one (what the bulk checks must agree with)."""
    _check_version(tree.version)
    _check_entries_slowly(tree.entries, tree.version)


def _check_entries(entries: list[Entry], version: int) -> None:
    """What a tree's entries must hold (every check of `_check_entries_slowly`), the common
    entries checked in bulk: a directory of 1,000 small files, 1.7 ms entry by entry, ~0.3 ms
    (`find` through the mount decodes every tree it lists). Anything unusual is checked the
    slow way, which names the fault."""
    names = [entry.name for entry in entries]
    if not names:
        return
    joined = b"/".join(names)
    if (b"" in names or max(map(len, names)) > MAX_NAME or b"." in names or b".." in names
            or joined.count(b"/") != len(names) - 1 or b"\0" in joined
            or not all(map(bytes.__lt__, names, names[1:]))):
        _check_entries_slowly(entries, version)
        return
    for entry in entries:
        kind = entry.kind
        if kind == FILE:
            sizes = entry.sizes
            if (len(sizes) == 1 and 0 < sizes[0] <= MAX_PLAIN and sizes[0] == entry.size
                    and len(entry.chunks) == 32 and not entry.target and not entry.digest):
                continue  # a file of one chunk: the common case
        elif kind == DIR:
            if len(entry.target) == 32 and not entry.chunks and not entry.sizes and not entry.digest:
                continue
        _check_entry(entry)
        if entry.digest and version == 1:
            raise FormatError(f"{entry.name!r} has a digest in a version 1 tree")


def _check_entries_slowly(entries: list[Entry], version: int) -> None:
    previous = None
    for entry in entries:
        check_name(entry.name)
        if previous is not None and entry.name <= previous:
            raise FormatError(f"tree entries out of order at {entry.name!r}")
        previous = entry.name
        _check_entry(entry)
        if entry.digest and version == 1:
            raise FormatError(f"{entry.name!r} has a digest in a version 1 tree")


def _check_entry(entry: Entry) -> None:
    kind = entry.kind
    if kind == FILE:
        _check_file(entry)
        return
    if kind == DIR and len(entry.target) != 32:
        raise FormatError(f"directory {entry.name!r} has no subtree id")
    if kind == LINK and (
        not entry.target or len(entry.target) > MAX_TARGET or b"\0" in entry.target
    ):
        raise FormatError(f"symlink {entry.name!r} has a bad target")
    if entry.chunks or entry.sizes or entry.digest:
        raise FormatError(f"{entry.name!r} is not a file but lists chunks or a digest")


def _check_file(entry: Entry) -> None:
    sizes = entry.sizes
    if entry.target or len(entry.chunks) != 32 * len(sizes):
        raise FormatError(f"file {entry.name!r} has a bad chunk list")
    if sizes and (min(sizes) == 0 or max(sizes) > MAX_PLAIN) or sum(sizes) != entry.size:
        raise FormatError(f"file {entry.name!r}: chunk sizes do not add up to {entry.size}")
    if entry.digest and (len(entry.digest) != 32 or len(entry.chunks) < 64):
        raise FormatError(f"file {entry.name!r} has a bad digest")


def _c3fs_version() -> str:
    from c3fs import __version__

    return __version__
