"""The read-only namespace, defined once; the mount, `ls`, `cp` and `pull` walk it alike.

    /jobs/<job id>/...                       a job's artifacts
    /projects/<project>/jobs/<job id>/...    the same nodes (same inode numbers)
    /datasets/<name>/...                     an uploaded dataset
    /projects/<project>/datasets/<name>/...  the same dataset
    /projects/<project>/jobs/latest          symlink to the newest SUCCEEDED job
    /projects/<project>/tags/<tag>           symlink to the job the tag names

The two kinds of symlink are virtual (nothing in a tree): `lookup` and `children` show them
as symlinks (the mount, `ls`), `resolve` follows them (every command taking a ref).

Every node has a canonical path (`/jobs/<id>/...` or `/datasets/<name>/...` for content) and
its inode number is a hash of that path, so inodes are stable across the two paths, across
lookups and across remounts. Names are bytes throughout.
"""

from __future__ import annotations

import heapq
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

import blake3

from c3fs.errors import DataError, FormatError, InvalidId, NotADirectory, NotFound
from c3fs.objects.ids import check_name
from c3fs.objects.job import DATASET, JOB, JobRecord
from c3fs.objects.tree import DIR, FILE, LINK, EncodedTree, Entry, PagedTree, st_mode
from c3fs.reader import FileReader
from c3fs.repo import Repo

ROOT_INO = 1
JOBS, PROJECTS, DATASETS = b"jobs", b"projects", b"datasets"
TAGS, LATEST = b"tags", b"latest"
MAX_LINKS = 8  # virtual links followed by one `resolve` (they never chain today)
_TOP = {JOBS: JOB, DATASETS: DATASET}
_KIND_DIR = {JOB: JOBS, DATASET: DATASETS}


@dataclass(frozen=True, slots=True)
class Node:
    """A file, directory or symlink. A node holds its name and its parent, never its whole
    path: the nodes of a path d/d/d/... 30,000 deep share their ancestors, so the mount's
    memory grows with the number of nodes, not with the square of the depth."""

    ino: int
    kind: int  # tree.FILE, DIR or LINK
    mode: int  # permission bits
    size: int
    mtime_ns: int
    name: bytes  # its name in its canonical parent (b"" for /)
    parent: Node | None  # the canonical parent (/jobs/<id> for a job's root): None for /
    key: bytes  # a hash of the canonical path, chained from the parent's (see `child_key`)
    depth: int  # components in the canonical path
    ref: tuple[str, str] | None = None  # (kind, name) of the job or dataset it belongs to
    tree_id: bytes | None = None  # a directory backed by a tree
    entry: Entry | None = None  # a file or symlink
    index: int = -1  # its position in its parent's tree (-1: not in a tree)
    record: JobRecord | None = None  # a job's or dataset's root, as listed: its record

    @property
    def is_dir(self) -> bool:
        return self.kind == DIR

    @property
    def st_mode(self) -> int:
        return st_mode(self.kind, self.mode)

    @property
    def is_ref_root(self) -> bool:
        """Whether this is a job's or dataset's root: /jobs/<id>, /datasets/<name>."""
        return self.ref is not None and self.depth == 2

    @property
    def path(self) -> tuple[bytes, ...]:
        """The canonical path (made by walking up: for messages and the namespace's top)."""
        names = []
        node: Node | None = self
        while node is not None and node.depth:
            names.append(node.name)
            node = node.parent
        return tuple(reversed(names))

    @property
    def display(self) -> str:
        return "/" + "/".join(p.decode(errors="backslashreplace") for p in self.path)

    def child_display(self, name: bytes) -> str:
        return self.display.rstrip("/") + "/" + name.decode(errors="backslashreplace")


ROOT_KEY = b""


def _mtime_ns(record: JobRecord) -> int:
    return int((record.ended or record.created) * 1e9)


class RecordListing(Sequence):
    """The entries of a /jobs/-like directory, sorted by name, as a mount's opendir holds them
    while the kernel reads them: a record's name, root id and mtime (~170 B a job, where a
    node each took ~400 B: 100,000 jobs), its node made when the entry is read; links
    (`latest`) as their nodes."""

    def __init__(self, vfs: Vfs, kind: str) -> None:
        self._vfs, self._kind = vfs, kind
        self._names: list[bytes] = []
        self._roots: list[bytes | Node] = []  # a record's root id, or a link's node
        self._mtimes = array("q")

    def add(self, name: bytes, item: JobRecord | Node) -> None:
        self._names.append(name)
        if isinstance(item, Node):
            self._roots.append(item)
            self._mtimes.append(0)
        else:
            self._roots.append(item.root_id)
            self._mtimes.append(_mtime_ns(item))

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, i):  # (an index or a slice, as a list's)
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        name, root = self._names[i], self._roots[i]
        if isinstance(root, Node):
            return name, root
        return name, self._vfs.ref_root_of(self._kind, name, self._mtimes[i], root)


def lists_records(path: tuple[bytes, ...]) -> bool:
    """Whether `path` is /jobs/, /datasets/ or /projects/<p>/jobs|datasets/: a listing of
    job or dataset records."""
    return (len(path) == 1 and path[0] in _TOP) or (
        len(path) == 3 and path[0] == PROJECTS and path[2] in _TOP)


def child_key(parent_key: bytes, name: bytes) -> bytes:
    """The key of a path from its parent's: the same path always gets the same key."""
    return blake3.blake3(parent_key + b"/" + name).digest(16)


def ino_from_key(key: bytes) -> int:
    if key == ROOT_KEY:
        return ROOT_INO
    return (int.from_bytes(key[:8], "little") >> 1) | 2  # never 0 or 1, fits in 63 bits


def ino_of(path: tuple[bytes, ...]) -> int:
    """The inode number of a canonical path."""
    key = ROOT_KEY
    for name in path:
        key = child_key(key, name)
    return ino_from_key(key)


def child_ino(parent: Node, name: bytes) -> int:
    return ino_from_key(child_key(parent.key, name))


def child_inos(parent_key: bytes, names: Iterable[bytes]) -> list[int]:
    """`ino_from_key(child_key(parent_key, name))` of each name (a readdir reply's run: the
    digests' first 8 bytes turned into numbers at once, ~0.1 µs a name less than one by one)."""
    prefix, hash_of = parent_key + b"/", blake3.blake3
    keys = array("Q", b"".join([hash_of(prefix + name).digest(8) for name in names]))
    if sys.byteorder != "little":
        keys.byteswap()
    return [(key >> 1) | 2 for key in keys]  # `ino_from_key`'s, inline (a call a name costs)


def split_path(path: str | bytes) -> tuple[bytes, ...]:
    raw = path.encode(errors="surrogateescape") if isinstance(path, str) else path
    parts = tuple(p for p in raw.split(b"/") if p and p != b".")
    if b".." in parts:
        raise NotFound(f"{path!r}: '..' is not allowed in c3fs paths")
    return parts


class Vfs:
    """Paths to nodes over one Repo. `root` may name a sub-tree (a mount of one job)."""

    def __init__(self, repo: Repo, root: str = "/") -> None:
        self.repo = repo
        self._created_ns = int(repo.store.config.created * 1e9)  # the virtual dirs' mtime
        self._tops = {kind: self._virtual((name,)) for kind, name in _KIND_DIR.items()}
        self.root = (replace(self.resolve(root), ino=ROOT_INO) if split_path(root)
                     else self._virtual(()))

    def _virtual(self, path: tuple[bytes, ...]) -> Node:
        """A directory of the namespace (/, /jobs, /projects/<p>, ...), not of a tree."""
        node = Node(ROOT_INO, DIR, 0o555, 0, self._created_ns, b"", None, ROOT_KEY, 0)
        for name in path:
            key = child_key(node.key, name)
            node = Node(ino_from_key(key), DIR, 0o555, 0, self._created_ns, name, node, key,
                        node.depth + 1)
        return node

    # walking ------------------------------------------------------------------------------
    def resolve(self, path: str | bytes, _links: int = 0) -> Node:
        """The node at `path`, following the namespace's virtual links (`latest`, tags)."""
        node = self._virtual(())
        for name in split_path(path):
            try:
                node = self.lookup(node, name)
            except (DataError, FormatError) as exc:
                raise exc.reading(node.display) from None
            if node.kind == LINK and node.ref is None and node.entry is not None:
                node = self._follow(node, _links + 1)
        return node

    def _follow(self, link: Node, links: int) -> Node:
        if links > MAX_LINKS:
            raise NotFound(f"{link.display}: too many levels of virtual links")
        target = b"/".join(link.path[:-1]) + b"/" + link.entry.target
        try:
            return self.resolve(target.replace(b"/tags/../", b"/"), links)
        except NotFound as exc:
            raise NotFound(f"{link.display} -> {link.entry.target.decode(errors='replace')}: "
                           f"{exc}") from None

    def lookup(self, parent: Node, name: bytes) -> Node:
        if not parent.is_dir:
            raise NotADirectory(f"{parent.display} is not a directory")
        if parent.tree_id is not None:
            return self._tree_child(parent, name)
        return self._virtual_child(parent, name)

    def lookup_cached(self, parent: Node, name: bytes) -> Node | None:
        """`lookup` answered from memory, or None where it would read a tree or the store."""
        if parent.tree_id is None:  # (only directories have one)
            return None
        tree = self.repo.cached_tree(parent.tree_id)
        if tree is not None and tree.pages:  # a paged directory: its page must be in memory
            k = tree.page_for(name)
            page = tree.cached_page(k)
            if page is None:
                return None
            i = page.find(name)
            if i < 0:
                raise NotFound(f"{parent.child_display(name)}: no such file or directory")
            return self.entry_node(parent, page[i], tree.starts[k] + i)
        return None if tree is None else self._child_of(parent, tree, name)

    def children(self, node: Node) -> Sequence[tuple[bytes, Node]]:
        """(name, node) of every entry of a directory, sorted by name."""
        if not node.is_dir:
            raise NotADirectory(f"{node.display} is not a directory")
        if node.tree_id is not None:  # (iterating checks every entry, before this returns)
            tree = self.repo.tree(node.tree_id, check=False)
            return [(e.name, self.entry_node(node, e, i)) for i, e in enumerate(tree)]
        if lists_records(node.path):
            return self.record_listing(node)
        return sorted(self._virtual_children(node.path), key=lambda item: item[0])

    def children_slice(self, node: Node, start: int,
                       stop: int) -> tuple[int, list[tuple[bytes, Node]]]:
        """(how many entries, `children(node)[start:stop]`), reading only those of a tree
        (a page of a catalog listing of a paged directory of 10 M entries)."""
        if node.tree_id is None and lists_records(node.path):  # 100,000 jobs: one page held
            total, shown = 0, []
            for total, item in enumerate(self.iter_record_children(node), 1):
                if start < total <= stop:
                    shown.append(item)
            return total, shown
        if node.tree_id is None or not node.is_dir:
            found = self.children(node)
            return len(found), found[start:stop]
        tree = self.repo.tree(node.tree_id, check=False)
        stop = min(stop, len(tree))
        return len(tree), [(e.name, self.entry_node(node, e, i))
                           for i, e in zip(range(start, stop), tree[start:stop], strict=True)]

    def iter_children(self, node: Node, keep: bool = True) -> Iterator[tuple[bytes, Node]]:
        """`children`, with a tree's nodes made as they are consumed (its tree is read at
        once, so a damaged one fails here, not halfway). `keep`: see `Repo.tree`."""
        if node.tree_id is None:
            if lists_records(node.path):
                return self.iter_record_children(node)
            return iter(self.children(node))
        tree = self.repo.tree(node.tree_id, keep=keep)
        return ((e.name, self.entry_node(node, e, i)) for i, e in enumerate(tree))

    def iter_names(self, node: Node) -> Iterator[tuple[bytes, bool]]:
        """(name, is a directory) of every entry of a directory, in order, made as they are
        consumed and without a node each (`ls` of 100,000 names; checked first, as
        `iter_children`)."""
        if node.tree_id is None:
            children = (self.iter_record_children(node) if lists_records(node.path)
                        else self.children(node))
            return ((name, child.is_dir) for name, child in children)
        return ((e.name, e.kind == DIR) for e in self.iter_entries(node))

    def iter_entries(self, node: Node) -> Iterator[Entry]:
        """The entries of a directory backed by a tree, in order, decoded as they are
        consumed (a paged one page by page): no node each, and the tree kept nowhere, so
        `ls`, `ls -l` and `ls --json` of 2 M entries hold a page, not 2 M nodes nor the cache's
        worth of pages. The whole tree is checked first (a paged one: each page read twice),
        so a damaged entry fails here, before anything is printed."""
        if node.tree_id is None or not node.is_dir:
            raise NotADirectory(f"{node.display} is not a directory of a tree")
        return iter(self.repo.tree(node.tree_id, keep=False))

    def open(self, node: Node, readahead: int = 8, *, remember: bool = True,
             reuse: Callable[[bytes], bytes | None] | None = None) -> FileReader:
        """A reader of a file's bytes (see `FileReader` for `remember` and `reuse`)."""
        if node.entry is None or node.kind != FILE:
            raise NotFound(f"{node.display} is not a regular file")
        return FileReader(self.repo.blobs, node.entry, readahead, remember=remember, reuse=reuse)

    def readlink(self, node: Node) -> bytes:
        if node.kind != LINK or node.entry is None:
            raise NotFound(f"{node.display} is not a symlink")
        return node.entry.target

    def walk(self, node: Node, keep: bool = True) -> Iterator[Node]:
        """Yield `node` and every node below it, depth first with an explicit stack (any
        depth, no recursion) of the directories being listed, whose nodes are made as they
        are reached (`keep`: see `Repo.tree`)."""
        yield node
        stack = [self.iter_children(node, keep)] if node.is_dir else []
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            yield item[1]
            if item[1].is_dir:
                stack.append(self.iter_children(item[1], keep))

    # content ------------------------------------------------------------------------------
    def _tree_child(self, parent: Node, name: bytes) -> Node:
        return self._child_of(parent, self.repo.tree(parent.tree_id, check=False), name)

    def _child_of(self, parent: Node, tree: EncodedTree | PagedTree, name: bytes) -> Node:
        i = tree.find(name)  # (O(log n): decodes a few names and the one entry)
        if i < 0:
            raise NotFound(f"{parent.child_display(name)}: no such file or directory")
        return self.entry_node(parent, tree[i], i)

    @staticmethod
    def entry_node(parent: Node, entry: Entry, index: int = -1) -> Node:
        """The node of `entry`, entry `index` of the tree of directory `parent`."""
        key = child_key(parent.key, entry.name)
        tree_id = entry.target if entry.kind == DIR else None
        return Node(ino_from_key(key), entry.kind, entry.mode, entry.size, entry.mtime_ns,
                    entry.name, parent, key, parent.depth + 1, parent.ref, tree_id, entry, index)

    def ref_root(self, record: JobRecord, keep: bool = True) -> Node:
        """The root of a job or dataset; `keep`: with its record (a listing's rows), else
        without (~1.3 KB less a node: what a mount remembers of 100,000 listed jobs)."""
        return self.ref_root_of(record.kind, record.id.encode(), _mtime_ns(record),
                                record.root_id, record if keep else None)

    def ref_root_of(self, kind: str, name: bytes, mtime_ns: int, root_id: bytes,
                    record: JobRecord | None = None) -> Node:
        """`ref_root` from the parts of its record a node needs (a `RecordListing`'s row)."""
        top = self._tops[kind]  # canonical: /jobs/<id>, /datasets/<n>
        key = child_key(top.key, name)
        return Node(ino_from_key(key), DIR, 0o755, 0, mtime_ns, name, top, key, 2,
                    (kind, name.decode()), root_id, record=record)

    def ref_node(self, kind: str, name: str) -> Node:
        """The root of job or dataset `name` (`kind`) again, from the index: NotFound if it
        is gone (a mount keeps only the (kind, name) of each listed job it must answer for)."""
        return self.ref_root(self._record(kind, name.encode()), keep=False)

    # the virtual part ---------------------------------------------------------------------
    def _virtual_child(self, parent: Node, name: bytes) -> Node:
        path = parent.path
        link = self._link_child(path, name)
        if link is not None:
            return link
        if len(path) == 0 and name in (JOBS, PROJECTS, DATASETS):
            return self._virtual((name,))
        if len(path) == 1 and path[0] in _TOP:
            return self.ref_root(self._record(_TOP[path[0]], name))
        if len(path) == 1 and path[0] == PROJECTS and self._project_exists(name):
            return self._virtual((PROJECTS, name))
        if len(path) == 2 and name in (JOBS, DATASETS, TAGS):
            return self._virtual((*path, name))
        if len(path) == 3 and path[0] == PROJECTS:
            record = self._record(_TOP[path[2]], name)
            if record.project.encode() == path[1]:
                return self.ref_root(record)
        raise NotFound(f"{parent.child_display(name)}: no such file or directory")

    def _virtual_children(self, path: tuple[bytes, ...]) -> list[tuple[bytes, Node]]:
        self.repo.refresh()
        if len(path) == 0:
            return [(n, self._virtual((n,))) for n in (DATASETS, JOBS, PROJECTS)]
        if len(path) == 1:
            projects = {r.project.encode() for kind in (JOB, DATASET)
                        for r in self.repo.iter_records(kind)}
            return [(p, self._virtual((PROJECTS, p))) for p in projects]
        if len(path) == 2:
            return [(n, self._virtual((*path, n))) for n in (DATASETS, JOBS, TAGS)]
        return self._tag_links(path)  # (the others list records: `record_listing`)

    def record_listing(self, node: Node) -> RecordListing:
        """`children` of a /jobs/-like directory, held compactly (a mount's opendir of 100,000
        jobs): per record its name, root id and mtime; a node made as each entry is read."""
        records, links = self.listed_records(node)
        kind = _TOP[node.path[-1]]
        listing = RecordListing(self, kind)
        for name, item in heapq.merge(((r.id.encode(), r) for r in records), links,
                                      key=lambda item: item[0]):
            listing.add(name, item)
        return listing

    def listed_records(self, node: Node, by_created: bool = False, since: float | None = None
                       ) -> tuple[Iterator[JobRecord], list[tuple[bytes, Node]]]:
        """What a /jobs/-like directory (/jobs/, /datasets/, /projects/<p>/jobs|datasets/)
        lists: its records, by name or the oldest first (created from `since` on), read as
        they are consumed, and its links (`latest`). `ls` of 100,000 jobs makes no node a
        record and holds none of them. The same entries as `children`."""
        self.repo.refresh()
        return self._listed_records(node.path, by_created, since)

    def _listed_records(self, path: tuple[bytes, ...], by_created: bool = False,
                        since: float | None = None
                        ) -> tuple[Iterator[JobRecord], list[tuple[bytes, Node]]]:
        kind = _TOP[path[-1]]
        records = self.repo.iter_records(kind, by_created, since)
        if len(path) != 3:
            return records, []
        project = path[1]
        # (a pass of its own: the newest by end time, which the listing's order is not)
        newest = self._latest_link(path, self.repo.iter_records(kind)) if path[2] == JOBS else None
        if newest is None:
            return (r for r in records if r.project.encode() == project), []
        # (the link hides a job named `latest` in this view only)
        return ((r for r in records if r.project.encode() == project and r.id.encode() != LATEST),
                [(LATEST, newest)])

    def iter_record_children(self, node: Node) -> Iterator[tuple[bytes, Node]]:
        """`children` of a /jobs/-like directory, a node made as each is consumed."""
        records, links = self.listed_records(node)
        return heapq.merge(((r.id.encode(), self.ref_root(r)) for r in records), links,
                           key=lambda item: item[0])

    def _latest_link(self, path: tuple[bytes, ...], records: Iterable[JobRecord]) -> Node | None:
        """/projects/<p>/jobs/latest: a link to the newest SUCCEEDED job of <p> in `records`."""
        from c3fs.jobs import tags

        record = tags.latest(records, path[1].decode(errors="replace"))
        return None if record is None else self._link(path, LATEST, record.id.encode(),
                                                      record.ended or record.created)

    # virtual links: latest and tags -------------------------------------------------------
    def _link_child(self, path: tuple[bytes, ...], name: bytes) -> Node | None:
        """The link `name` in /projects/<p>/jobs (`latest`) or /projects/<p>/tags, if any."""
        if len(path) != 3 or path[0] != PROJECTS:
            return None
        from c3fs.jobs import tags

        project = path[1].decode(errors="replace")
        if path[2] == JOBS and name == LATEST:
            self.repo.refresh()
            return self._latest_link(path, self.repo.iter_records(JOB))
        if path[2] != TAGS:
            return None
        try:
            tag = tags.get_tag(self.repo.store, project, name.decode())
        except (NotFound, InvalidId, UnicodeDecodeError):
            raise NotFound(f"/{'/'.join(p.decode(errors='replace') for p in path)}/"
                           f"{name.decode(errors='replace')}: no such tag") from None
        return self._link(path, name, b"../jobs/" + tag.job.encode(), tag.created)

    def _tag_links(self, path: tuple[bytes, ...]) -> list[tuple[bytes, Node]]:
        from c3fs.jobs import tags

        found = tags.list_tags(self.repo.store, path[1].decode(errors="replace"))
        return [(t.name.encode(), self._link(path, t.name.encode(), b"../jobs/" + t.job.encode(),
                                             t.created)) for t in found]

    def _link(self, path: tuple[bytes, ...], name: bytes, target: bytes, when: float) -> Node:
        parent = self._virtual(path)
        key = child_key(parent.key, name)
        mtime = int(when * 1e9)
        entry = Entry(name, LINK, 0o777, len(target), mtime, target)
        return Node(ino_from_key(key), LINK, 0o777, len(target), mtime, name, parent, key,
                    parent.depth + 1, None, None, entry)

    def _record(self, kind: str, name: bytes) -> JobRecord:
        try:
            text = check_name(name.decode(), kind)
        except Exception:  # (worded as `Repo.record` words a valid id it does not know)
            raise NotFound(f"no {kind} {name.decode(errors='backslashreplace')!r}") from None
        return self.repo.record(kind, text)

    def _project_exists(self, name: bytes) -> bool:
        self.repo.refresh()
        return any(r.project.encode() == name for kind in (JOB, DATASET)
                   for r in self.repo.iter_records(kind))
