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

import bisect
import os
import stat
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from itertools import accumulate
from typing import Annotated

import msgspec

from c3fs.errors import FormatError, UsageError
from c3fs.objects.codec import MAX_PLAIN

FILE = 0
DIR = 1
LINK = 2
TREE_VERSION = 2  # 2: files of 2+ chunks carry `digest`
PAGED = 3  # a paged directory's index (see `PagedTree`)
LEAF_VERSIONS = (1, 2)  # ordinary trees (and the pages of a paged directory)
TREE_VERSIONS = (1, 2, PAGED)  # what is read
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
        _check_version(_version_of(data), leaf=True)  # a newer tree or an index: say so
        raise FormatError(f"damaged tree: {exc}") from None
    _check(tree)
    return tree


def _version_of(data: bytes) -> int:
    """A tree's version, from its first two bytes when it starts as every tree c3fs writes
    does (an array of two, the version a small int), else by decoding it (its entries left
    encoded): opening a tree decoded it twice to learn its version, ~60 ns an entry."""
    if len(data) >= 2 and data[0] == 0x92 and data[1] < 0x80:
        return data[1]
    try:
        return _raw_decoder.decode(data).version
    except (msgspec.DecodeError, RecursionError):
        return TREE_VERSION


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


class Listed(msgspec.Struct, array_like=True, frozen=True):
    """What a plain listing (readdir) shows of an entry: its name and kind, decoded without
    the rest (the chunk list and sizes: ~80 ns an entry, a whole `Entry` ~230 + ~150 checked)."""

    name: bytes
    kind: Annotated[int, msgspec.Meta(ge=0, le=2)]


class Shown(msgspec.Struct, array_like=True, frozen=True):
    """What `stat` of an entry shows (readdirplus: its attributes), decoded without its
    chunk sizes (~130 ns an entry). Each field is checked as in an `Entry`; a symlink's
    size is its target's length, a file's generation a hash of its chunk list."""

    name: bytes
    kind: Annotated[int, msgspec.Meta(ge=0, le=2)]
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o7777)]
    size: NonNeg
    mtime_ns: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    target: Annotated[bytes, msgspec.Meta(max_length=MAX_TARGET)] = b""
    chunks: bytes = b""


_listed_decoder = msgspec.msgpack.Decoder(list[Listed])
_shown_decoder = msgspec.msgpack.Decoder(list[Shown])


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
        _check_version(raw.version, leaf=True)
        # where each entry starts: one pass from where the entries begin as c3fs writes
        # trees (`_entries_at`), else from the end (the entries are the end of the tree)
        starts = array("I", accumulate(map(len, raw.entries), initial=_entries_at(data)))
        if starts[-1] != len(data):
            starts = array("I", accumulate(map(len, raw.entries),
                                           initial=len(data) - sum(map(len, raw.entries))))
        self.version = raw.version
        self.data = data
        self._view = memoryview(data)
        self._starts = starts
        self._checked = False

    @property
    def entries(self) -> EncodedTree:
        return self

    pages: tuple[bytes, ...] = ()  # (a `PagedTree`'s page ids: an ordinary tree has none)

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

    def listed(self, i: int, count: int = RUN, shown: bool = False) -> list[Listed] | list[Shown]:
        """Entries `i` to `i + count` as a listing shows them (`Listed`, or with `shown` their
        attributes: `Shown`), decoded in one call; their names are checked (as a tree's, and
        their order within the run), the fields decoded by their types."""
        starts = self._starts
        end = min(i + count, len(starts) - 1)
        if not 0 <= i < end:
            return []
        decoder = _shown_decoder if shown else _listed_decoder
        try:
            entries = decoder.decode(_array_header(end - i) + self._view[starts[i]:starts[end]])
        except msgspec.DecodeError as exc:
            raise FormatError(f"damaged tree: entries {i}-{end - 1}: {exc}") from None
        _check_names([entry.name for entry in entries])
        return entries

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


# paged directories ----------------------------------------------------------------------------
PAGE_ENV = "C3FS_TREE_PAGE"  # a directory of more entries than this is stored paged
PAGE_ENTRIES = 65536
PAGE_SPLIT = 16  # its pages hold a 16th of that on average (4,096 entries)
PAGE_WEIGHT = 128  # `_weight` a page may hold: this much per entry of its size (512 KiB)


def page_entries() -> int:
    """$C3FS_TREE_PAGE (default 65,536): a directory of more entries than this (or weighing
    more than `PAGE_WEIGHT` times this) is stored paged, its pages `page_size` of this on
    average. It decides tree ids, so every writer of a store should use the same (tests
    set ~100)."""
    raw = os.environ.get(PAGE_ENV)
    try:
        value = int(raw) if raw else PAGE_ENTRIES
    except ValueError:
        value = 0
    if value < 4:
        raise UsageError(f"{PAGE_ENV}={raw!r}: a number of entries, at least 4")
    return value


def page_size(paged_above: int) -> int:
    """The entries a page holds on average in a directory paged past `paged_above` entries:
    a 16th of it, at least 4. The first builds that paged wrote pages as big as the
    threshold (~65,536 entries, ~1-3 MB): a lookup in a fresh mount then read, decompressed,
    verified and found the entries of up to 131,072 of them, ~8 ms of CPU for one `stat`.
    Readers take pages of any size (their index counts each page's entries): only the ids of
    paged directories written from now on differ from those builds'."""
    return max(paged_above // PAGE_SPLIT, 4)


class PageRef(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """A page of a paged directory: its first name, its tree id and how many entries."""

    first: bytes
    tree: Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
    count: Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]


class _Index(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    pages: list[PageRef]


_index_decoder = msgspec.msgpack.Decoder(_Index)


def open_tree(data: bytes, load: Callable[[bytes], EncodedTree],
              cached: Callable[[bytes], EncodedTree | None]) -> EncodedTree | PagedTree:
    """A tree's blob opened: an `EncodedTree`, or a `PagedTree` whose pages `load(id)`
    reads (blocking) and `cached(id)` answers from memory (never blocking)."""
    if _version_of(data) == PAGED:
        return PagedTree(data, load, cached)
    return EncodedTree(data)


class PagedTree(Sequence[Entry]):
    """A directory too big for one tree (more than `page_entries()` entries): its entries
    in pages, ordinary trees of contiguous ranges of names, and this index of them (tree
    version 3: the first name, tree id and entry count of each page, in name order; older
    readers refuse it by its version). It reads as an `EncodedTree` of all the entries:
    `tree[i]` and `run` find the page by the entries' counts, `find`/`bisect` by the
    pages' first names (then bisect the page: O(log n)), iterating goes page by page.
    Nothing but the index and the last page used is held (the pages are blobs: the blob
    cache keeps them, or not, like any tree). A page is checked against the index when it
    is read: its count, its first name, its last name before the next page's first
    (with each page's own order, the whole directory is in order)."""

    version = PAGED
    __slots__ = ("data", "pages", "firsts", "starts", "_load", "_cached", "_last", "_checked")

    def __init__(self, data: bytes, load: Callable[[bytes], EncodedTree],
                 cached: Callable[[bytes], EncodedTree | None]) -> None:
        try:
            index = _index_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise FormatError(f"damaged paged directory: {exc}") from None
        refs = index.pages
        if not refs:
            raise FormatError("damaged paged directory: no pages")
        self.data = data
        self.pages = tuple(ref.tree for ref in refs)
        self.firsts = [ref.first for ref in refs]
        if not _names_ok(self.firsts):  # (in bulk: 2,441 pages of a 10 M-entry directory)
            for name in self.firsts:
                check_name(name)
            raise FormatError("damaged paged directory: its pages are out of order")
        self.starts = array("Q", accumulate((ref.count for ref in refs), initial=0))
        self._load, self._cached = load, cached
        self._last: tuple[int, EncodedTree] | None = None
        self._checked = False

    @property
    def entries(self) -> PagedTree:
        return self

    @property
    def nbytes(self) -> int:
        return len(self.data) * 2 + 48 * len(self.pages)

    def __len__(self) -> int:
        return self.starts[-1]

    # pages --------------------------------------------------------------------------------
    def page_at(self, i: int) -> int:
        """The page holding entry `i` (0 <= i < len)."""
        return bisect.bisect_right(self.starts, i) - 1

    def page_for(self, name: bytes) -> int:
        """The page where `name` is or would be."""
        return max(bisect.bisect_right(self.firsts, name) - 1, 0)

    def page(self, k: int) -> EncodedTree:
        """Page `k`, read if it is not in memory, and checked against the index."""
        last = self._last
        if last is not None and last[0] == k:
            return last[1]
        found = self._cached(self.pages[k])
        page = self.checked_page(k, found if found is not None else self._load(self.pages[k]))
        self._last = (k, page)
        return page

    def cached_page(self, k: int) -> EncodedTree | None:
        """Page `k` if it is in memory (checked), else None: never blocks."""
        last = self._last
        if last is not None and last[0] == k:
            return last[1]
        found = self._cached(self.pages[k])
        return None if found is None else self.checked_page(k, found)

    def checked_page(self, k: int, page: EncodedTree) -> EncodedTree:
        """`page` (page `k`, read elsewhere) once it agrees with the index."""
        if type(page) is not EncodedTree:
            raise FormatError(f"damaged paged directory: page {k} is itself paged")
        count = self.starts[k + 1] - self.starts[k]
        if len(page) != count:
            raise FormatError(f"damaged paged directory: page {k} has {len(page)} entries, "
                              f"its index says {count}")
        if page.name(0) != self.firsts[k]:
            raise FormatError(f"damaged paged directory: page {k} starts at "
                              f"{page.name(0)!r}, its index says {self.firsts[k]!r}")
        if k + 1 < len(self.pages) and page.name(count - 1) >= self.firsts[k + 1]:
            raise FormatError(f"damaged paged directory: page {k} overlaps the next")
        return page

    # as an EncodedTree --------------------------------------------------------------------
    def __getitem__(self, i):  # (int -> Entry, slice -> list[Entry])
        if type(i) is not int:
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("tree entry index out of range")
        k = self.page_at(i)
        return self.page(k)[i - self.starts[k]]

    def run(self, i: int, count: int = RUN, check: bool = True) -> list[Entry]:
        """Entries from `i` on, at most `count`, within one page (see `EncodedTree.run`)."""
        if not 0 <= i < len(self):
            return []
        k = self.page_at(i)
        start = self.starts[k]
        return self.page(k).run(i - start, min(count, self.starts[k + 1] - i), check)

    def sequential(self) -> Sequence[Entry]:
        return _Sequential(self)

    def listed(self, i: int, count: int = RUN, shown: bool = False) -> list[Listed] | list[Shown]:
        """`EncodedTree.listed`, within one page."""
        if not 0 <= i < len(self):
            return []
        k = self.page_at(i)
        start = self.starts[k]
        return self.page(k).listed(i - start, min(count, self.starts[k + 1] - i), shown)

    def name(self, i: int) -> bytes:
        k = self.page_at(i)
        return self.page(k).name(i - self.starts[k])

    def bisect(self, name: bytes, right: bool = False) -> int:
        k = self.page_for(name)
        return self.starts[k] + self.page(k).bisect(name, right)

    def find(self, name: bytes) -> int:
        k = self.page_for(name)
        i = self.page(k).find(name)
        return -1 if i < 0 else self.starts[k] + i

    def __iter__(self) -> Iterator[Entry]:
        for k in range(len(self.pages)):
            yield from self.page(k)  # (checks its order, the index the order across pages)

    def check(self) -> None:
        if not self._checked:
            for k in range(len(self.pages)):
                self.page(k).check()
            self._checked = True


def _weight(entry: Entry) -> int:
    """About what an entry takes encoded (what cuts pages: it must never change)."""
    return (16 + len(entry.name) + len(entry.target) + len(entry.chunks) + len(entry.digest)
            + 5 * len(entry.sizes))


class TreeWriter:
    """Writes one directory from its entries given in name order, holding at most about
    `paged_above` of them: an ordinary tree (byte for byte what `encode_tree` makes) while
    it has at most `paged_above` entries (default `page_entries()`) weighing at most
    `PAGE_WEIGHT` each on average; past that, pages of `page_size(paged_above)` entries on
    average and their index (`PagedTree`). `put(data, count)` stores a tree's bytes (of
    `count` entries) and returns its id.

    Where a page ends depends on that page's own entries only: after an entry whose name
    hashes to 0 modulo page/2 once the page holds page/2 entries, or at 2 x page entries,
    or at the weight limit. So a change in a huge directory rewrites the pages around it,
    not every page after it (a file added to a 10 M-entry directory: one page of ~4 k
    entries, not on average half of the directory)."""

    def __init__(self, put: Callable[[bytes, int], bytes], paged_above: int | None = None) -> None:
        self.put = put
        self.above = paged_above or page_entries()
        self.page = page_size(self.above)
        self.weight = self.page * PAGE_WEIGHT
        self.count = 0
        self._entries: list[Entry] = []  # the page being filled (all of them until paged)
        self._weight = 0  # of `_entries`
        self._refs: list[PageRef] | None = None  # once paged: the pages written
        self._last: bytes | None = None

    def add(self, entry: Entry) -> None:
        if self._last is not None and entry.name <= self._last:
            raise FormatError(f"tree entries out of order at {entry.name!r}")
        self._last = entry.name
        self.count += 1
        self._entries.append(entry)
        self._weight += _weight(entry)
        if self._refs is not None:
            if self._ends_page(len(self._entries), self._weight, entry.name):
                self._write_page(self._entries)
                self._entries, self._weight = [], 0
        elif len(self._entries) > self.above or self._weight > self.above * PAGE_WEIGHT:
            self._refs = []
            entries, self._entries, self._weight = self._entries, [], 0
            for item in entries:  # (the rule as it would have been applied from the start)
                self.count -= 1
                self._last = None
                self.add(item)

    def _ends_page(self, count: int, weight: int, name: bytes) -> bool:
        half = self.page // 2
        return (count >= 2 * self.page or weight >= self.weight
                or (count >= half and zlib.crc32(name) % half == 0))

    def _write_page(self, entries: list[Entry]) -> None:
        data = _encoder.encode(Tree(TREE_VERSION, entries))
        _check_entries(entries, TREE_VERSION)
        self._refs.append(PageRef(entries[0].name, self.put(data, len(entries)), len(entries)))

    def finish(self) -> bytes:
        """Write what is left and return the directory's tree id."""
        if self._refs is None:
            return self.put(encode_tree(self._entries), len(self._entries))
        if self._entries:
            self._write_page(self._entries)
            self._entries = []
        return self.put(_encoder.encode(_Index(PAGED, self._refs)), self.count)


def _entries_at(data: bytes) -> int:
    """Where a tree's first entry starts if it begins as c3fs writes trees (an array of two,
    a small version, then the entries' array header), else 0 (then found from the end)."""
    if len(data) < 3 or data[0] != 0x92 or data[1] >= 0x80:
        return 0
    return {0xdc: 5, 0xdd: 7}.get(data[2], 3 if 0x90 <= data[2] <= 0x9f else 0)


def _array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 1 << 16:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def check_name(name: bytes) -> None:
    if not name or len(name) > MAX_NAME or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise FormatError(f"unsafe name in tree: {name!r}")


def _check_version(version: int, leaf: bool = False) -> None:
    if version not in TREE_VERSIONS:
        raise FormatError(f"tree version {version} is not supported by c3fs "
                          f"{_c3fs_version()}: a newer c3fs wrote it")
    if leaf and version == PAGED:
        raise FormatError("a paged directory's index where an ordinary tree (or a page of "
                          "one) was expected")


def _check(tree: Tree) -> None:
    _check_version(tree.version, leaf=True)
    _check_entries(tree.entries, tree.version)


def _check_slowly(tree: Tree) -> None:
    """`_check`, every entry checked one by one (what the bulk checks must agree with)."""
    _check_version(tree.version, leaf=True)
    _check_entries_slowly(tree.entries, tree.version)


def _check_entries(entries: list[Entry], version: int) -> None:
    """What a tree's entries must hold (every check of `_check_entries_slowly`), the common
    entries checked in bulk: a directory of 1,000 small files, 1.7 ms entry by entry, ~0.3 ms
    (`find` through the mount decodes every tree it lists). Anything unusual is checked the
    slow way, which names the fault."""
    names = [entry.name for entry in entries]
    if not names:
        return
    if not _names_ok(names):
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


def _names_ok(names: list[bytes]) -> bool:
    """Whether every name is safe and they are in order (in bulk; False: look closer)."""
    joined = b"/".join(names)
    return not (b"" in names or max(map(len, names)) > MAX_NAME or b"." in names
                or b".." in names or joined.count(b"/") != len(names) - 1 or b"\0" in joined
                or not all(map(bytes.__lt__, names, names[1:])))


def _check_names(names: list[bytes]) -> None:
    """The names of a tree's entries (or a run of them): safe, and in order."""
    if names and not _names_ok(names):
        previous = None
        for name in names:
            check_name(name)
            if previous is not None and name <= previous:
                raise FormatError(f"tree entries out of order at {name!r}")
            previous = name


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
