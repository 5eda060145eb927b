"""Compare two trees (jobs, datasets or folders in them) from their trees alone.

Directories with the same tree id are identical and skipped without being read, so a job of
a million files whose one file changed costs the trees on that file's path. A file is
changed when its kind, content (its chunk ids) or link target differs; modes and mtimes are
not compared (as `diff -r`). A directory only one side has is its files, and each empty
directory in it, listed as "path/" (as `diff -r` says "Only in"). For a changed file, `shared` is how many of its bytes in B are
chunks A has too (what the store deduplicates).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from c3fs.fsutil import SpilledSort, json_name
from c3fs.objects.tree import DIR, FILE, EncodedTree, Entry, PagedTree
from c3fs.repo import Repo

log = logging.getLogger(__name__)


@dataclass
class Change:
    path: bytes
    size_a: int | None  # None: not in A (added)
    size_b: int | None  # None: not in B (removed)
    shared: int = 0  # changed files: bytes of B's chunks that A has too

    def as_dict(self) -> dict:
        """`path` exactly: also `path_b64` when it is not UTF-8 (`json_name`)."""
        return {**json_name("path", self.path), "size_a": self.size_a, "size_b": self.size_b,
                "shared": self.shared}


_SIZES = struct.Struct(">qqq")  # size_a, size_b (-1: None), shared
SORT_RUN = 65536  # changes of one kind held before a sorted run goes to a temporary file


class Changes:
    """Changes of one kind, read back in the order of their paths (once): past `SORT_RUN`
    they wait sorted in temporary files, so two trees of a million files that share
    nothing are compared in the memory of a few (a list of Change was ~300 B a file)."""

    def __init__(self) -> None:
        self._sorted = SpilledSort(SORT_RUN)

    def append(self, change: Change) -> None:
        # NUL ends the path (no name holds one) and sorts before every byte, so the items
        # sort as their paths do
        self._sorted.add(change.path + b"\0" + _SIZES.pack(
            -1 if change.size_a is None else change.size_a,
            -1 if change.size_b is None else change.size_b, change.shared))

    def __len__(self) -> int:
        return len(self._sorted)

    def __iter__(self) -> Iterator[Change]:
        for item in self._sorted:
            end = len(item) - _SIZES.size  # the path, NUL, the sizes
            size_a, size_b, shared = _SIZES.unpack_from(item, end)
            yield Change(item[:end - 1], None if size_a < 0 else size_a,
                         None if size_b < 0 else size_b, shared)


@dataclass
class DiffReport:
    added: Changes = field(default_factory=Changes)
    removed: Changes = field(default_factory=Changes)
    changed: Changes = field(default_factory=Changes)
    trees_read: int = 0
    subtrees_skipped: int = 0  # directories found identical by their tree id

    @property
    def identical(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_trees(repo: Repo, a: bytes, b: bytes) -> DiffReport:
    """The differences between tree `a` and tree `b` (depth first, explicit stack); each
    kind of change is read back in the order of its paths."""
    report = DiffReport()
    stack: list[tuple[bytes, bytes, bytes]] = [(b"", a, b)]
    while stack:
        prefix, ta, tb = stack.pop()
        if ta == tb:
            report.subtrees_skipped += 1
            continue
        tree_a, tree_b = repo.tree(ta, False, False), repo.tree(tb, False, False)  # read once
        same = set(tree_a.pages) & set(tree_b.pages)  # paged: pages both have, skipped unread
        report.subtrees_skipped += len(same)
        merged = _merged(_read(tree_a, report, same), _read(tree_b, report, same))
        for name, ea, eb in merged:  # (two directories read side by side, never held whole)
            path = prefix + b"/" + name if prefix else name
            if ea is not None and eb is not None and ea.kind == eb.kind == DIR:
                stack.append((path, ea.target, eb.target))
                continue
            if ea is not None:
                _one_side(repo, path, ea, report, report.removed if eb is None or
                          ea.kind == DIR or eb.kind == DIR else None, a_side=True)
            if eb is not None:
                _one_side(repo, path, eb, report, report.added if ea is None or
                          ea.kind == DIR or eb.kind == DIR else None, a_side=False)
            if ea is not None and eb is not None and DIR not in (ea.kind, eb.kind):
                _compare(path, ea, eb, report)
    return report


def _entries(repo: Repo, tree_id: bytes, report: DiffReport) -> Iterator[Entry]:
    return _read(repo.tree(tree_id, check=False, keep=False), report)


def _read(tree: EncodedTree | PagedTree, report: DiffReport,
          skip: set[bytes] | frozenset = frozenset()) -> Iterator[Entry]:
    """The entries of a tree, checked before any is used; of a paged one, those of its
    pages not in `skip` (each checked as it is read). A page both sides hold has the same
    entries, a contiguous run of names on each side: leaving it out of both changes no
    difference."""
    report.trees_read += 1
    if not tree.pages:
        tree.check()
        return iter(tree)
    return (entry for k, page in enumerate(tree.pages) if page not in skip
            for entry in tree.page(k))


def _merged(a: Iterator[Entry], b: Iterator[Entry]) -> Iterator[tuple[bytes, Entry | None,
                                                                      Entry | None]]:
    """(name, entry of a or None, entry of b or None) of two sorted listings, in order."""
    ea, eb = next(a, None), next(b, None)
    while ea is not None or eb is not None:
        if eb is None or (ea is not None and ea.name < eb.name):
            yield ea.name, ea, None
            ea = next(a, None)
        elif ea is None or eb.name < ea.name:
            yield eb.name, None, eb
            eb = next(b, None)
        else:
            yield ea.name, ea, eb
            ea, eb = next(a, None), next(b, None)


def _one_side(repo: Repo, path: bytes, entry: Entry, report: DiffReport,
              into: list[Change] | None, a_side: bool) -> None:
    """Everything at `path` that only one side has (a directory: every file below it, and
    each empty directory, as "path/" of size 0)."""
    if into is None:
        return
    for sub, item in _files(repo, path, entry, report):
        size = 0 if item.kind == DIR else item.size
        into.append(Change(sub, size if a_side else None, None if a_side else size))


def _files(repo: Repo, path: bytes, entry: Entry,
           report: DiffReport) -> Iterator[tuple[bytes, Entry]]:
    """The files and links at or below `path`, and its empty directories ("path/"): a copy
    makes those too, so two trees that differ by one are not identical."""
    stack = [(path, entry)]
    while stack:
        path, entry = stack.pop()
        if entry.kind != DIR:
            yield path, entry
            continue
        empty = True
        for child in _entries(repo, entry.target, report):
            empty = False
            stack.append((path + b"/" + child.name, child))
        if empty:
            yield path + b"/", entry


def _compare(path: bytes, ea: Entry, eb: Entry, report: DiffReport) -> None:
    if ea.kind == eb.kind and (ea.chunks, ea.target) == (eb.chunks, eb.target):
        return
    shared = 0
    if ea.kind == eb.kind == FILE:
        have = set(ea.chunk_ids())
        shared = sum(size for cid, size in zip(eb.chunk_ids(), eb.sizes, strict=False)
                     if cid in have)
    report.changed.append(Change(path, ea.size, eb.size, shared))
