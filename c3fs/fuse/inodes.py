"""The inodes the kernel knows, in a compact table: no Python object per node.

After `ls -lR` of a million files the kernel holds a million inodes (readdirplus: every listed
entry is a lookup) until it forgets them. The mount keeps, per inode, one row of an
open-addressing hash table made of parallel arrays (~28 bytes a slot, at most 3/4 full):

    ino -> parent ino, index of the entry in the parent's tree, lookup count, rows below

A node is rebuilt from its row when a request needs it: its parent's node (rebuilt the same
way, or one of the few kept whole), the parent's tree (the repo's tree cache) and the entry
at `index`; the rebuilt node's inode number is checked against the row (a path whose content
changed answers ENOENT rather than another entry). Nodes outside any tree (/, /jobs,
/projects/..., a job's root, the virtual links) are few and kept whole.

A row goes when the kernel has forgotten it (FORGET) and no row below it still needs it as a
parent; the table shrinks when it is 1/8 full.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from itertools import compress

from c3fs.errors import NotFound
from c3fs.memo import LRU
from c3fs.objects.tree import Tree
from c3fs.vfs import ROOT_INO, Node, Vfs

WHOLE = 0xFFFF_FFFF  # `index` of a node kept whole (outside any tree)
MAX_COUNT = 0xFFFF_FFFF  # lookup counts saturate here (such an inode is never forgotten)
MIN_SLOTS = 1024
DIRECTORIES = 4096  # rebuilt directory nodes kept (each keeps its ancestors)


class InodeTable:
    """ino -> (parent ino, index, lookup count, rows below): linear probing over arrays,
    deletion by backward shift (no tombstones). Inode numbers are hashes: bits 2.. index."""

    def __init__(self, slots: int = MIN_SLOTS) -> None:
        self.count = 0
        self._allocate(slots)

    def _allocate(self, slots: int) -> None:
        self._mask = slots - 1
        self._keys = array("Q", bytes(8 * slots))
        self._parents = array("Q", bytes(8 * slots))
        self._index = array("I", bytes(4 * slots))
        self._counts = array("I", bytes(4 * slots))
        self._below = array("I", bytes(4 * slots))

    def __len__(self) -> int:
        return self.count

    @property
    def slots(self) -> int:
        return self._mask + 1

    def _slot(self, ino: int) -> int:
        """The slot holding `ino`, or -1."""
        keys, mask = self._keys, self._mask
        i = (ino >> 2) & mask
        while True:
            key = keys[i]
            if key == ino:
                return i
            if key == 0:
                return -1
            i = (i + 1) & mask

    def __contains__(self, ino: int) -> bool:
        return self._slot(ino) >= 0

    def row(self, ino: int) -> tuple[int, int] | None:
        """(parent ino, index) of a known inode, else None."""
        i = self._slot(ino)
        return None if i < 0 else (self._parents[i], self._index[i])

    def lookups(self, ino: int) -> int:
        i = self._slot(ino)
        return 0 if i < 0 else self._counts[i]

    def add(self, ino: int, parent: int, index: int) -> None:
        """One more kernel reference to `ino`, the entry `index` of directory `parent`
        (`parent` 0 and `index` WHOLE: a node kept whole, which pins no parent row)."""
        self.add_children(parent, [(ino, index)])

    def add_children(self, parent: int, children: list[tuple[int, int]]) -> None:
        """`add` of several entries (ino, index) of one directory (a readdir reply)."""
        if parent > ROOT_INO:
            if self._slot(parent) < 0:
                raise NotFound(f"inode {parent} is not known (forgotten)")
        else:
            parent = 0
        if 4 * (self.count + len(children)) > 3 * (self._mask + 1):
            self._resize(self._grown(self.count + len(children)))
        keys, parents, index, counts, below = (self._keys, self._parents, self._index,
                                               self._counts, self._below)
        mask, new = self._mask, 0
        for ino, at in children:
            i = (ino >> 2) & mask
            while True:
                key = keys[i]
                if key == ino:  # known: one more reference (a job pushed again may shift it)
                    index[i] = at
                    if counts[i] < MAX_COUNT:
                        counts[i] += 1
                    break
                if key == 0:
                    keys[i], parents[i], index[i], counts[i], below[i] = ino, parent, at, 1, 0
                    new += 1
                    break
                i = (i + 1) & mask
        self.count += new
        if parent and new:
            below[self._slot(parent)] += new

    def _grown(self, rows: int) -> int:
        slots = self._mask + 1
        while 4 * rows > 3 * slots:
            slots *= 2
        return slots

    def forget(self, ino: int, count: int) -> list[int]:
        """Drop `count` kernel references to `ino`; the inodes whose rows went (`ino`, then
        parents no longer needed). Unknown inodes are ignored."""
        gone: list[int] = []
        self.forget_many([(ino, count)], gone)
        return gone

    def forget_many(self, forgets: list[tuple[int, int]], gone: list[int]) -> None:
        """`forget` of each (ino, count) (a FORGET batch); appends to `gone` the inodes
        whose rows went."""
        counts, below, parents = self._counts, self._below, self._parents
        for ino, count in forgets:
            i = self._slot(ino)
            if i < 0:
                continue
            if counts[i] < MAX_COUNT:
                counts[i] = max(0, counts[i] - count)
            while i >= 0 and counts[i] == 0 and below[i] == 0:
                parent = parents[i]
                self._delete(i)
                gone.append(ino)
                if not parent:
                    break
                ino, i = parent, self._slot(parent)
                if i >= 0:
                    below[i] -= 1
        slots = self._mask + 1
        if slots > MIN_SLOTS and 8 * self.count < slots:
            while slots > MIN_SLOTS and 8 * self.count < slots:
                slots //= 2
            self._resize(slots)

    def _delete(self, i: int) -> None:
        keys, parents, index, counts, below = (self._keys, self._parents, self._index,
                                               self._counts, self._below)
        mask = self._mask
        j = i
        while True:  # shift back the rows that probed past slot i
            j = (j + 1) & mask
            key = keys[j]
            if key == 0:
                break
            home = (key >> 2) & mask
            if (i < j and (home <= i or home > j)) or (j < i and home <= i and home > j):
                keys[i], parents[i], index[i] = key, parents[j], index[j]
                counts[i], below[i] = counts[j], below[j]
                i = j
        keys[i] = 0
        self.count -= 1

    def _resize(self, slots: int) -> None:
        old_keys, old_parents, old_index, old_counts, old_below = (
            self._keys, self._parents, self._index, self._counts, self._below)
        self._allocate(max(MIN_SLOTS, slots))
        keys, parents, index, counts, below = (self._keys, self._parents, self._index,
                                               self._counts, self._below)
        mask = self._mask
        for j in compress(range(len(old_keys)), old_keys):  # the used slots only
            key = old_keys[j]
            i = (key >> 2) & mask
            while keys[i]:
                i = (i + 1) & mask
            keys[i], parents[i], index[i] = key, old_parents[j], old_index[j]
            counts[i], below[i] = old_counts[j], old_below[j]


class Inodes:
    """The nodes the kernel knows, with their lookup counts (released in `forget`)."""

    def __init__(self, vfs: Vfs, root: Node) -> None:
        self.vfs = vfs
        self.root = root
        self.table = InodeTable()
        self._whole: dict[int, Node] = {}  # nodes outside any tree
        self._dirs: LRU[int, Node] = LRU(DIRECTORIES)  # rebuilt directories

    def __len__(self) -> int:
        return len(self.table) + 1

    def __contains__(self, ino: int) -> bool:
        return ino == ROOT_INO or ino in self.table

    def remember(self, node: Node) -> None:
        """The kernel took one more reference to `node` (a lookup or a readdirplus entry)."""
        if node.ino == ROOT_INO:
            return
        parent = node.parent
        if node.index >= 0 and parent is not None and parent.tree_id is not None:
            self.table.add(node.ino, parent.ino, node.index)
            if node.is_dir:
                self._dirs.put(node.ino, node)
        else:
            self.table.add(node.ino, 0, WHOLE)
            self._whole[node.ino] = node

    def remember_children(self, parent: Node, children: list[tuple[int, int]]) -> None:
        """`remember` of entries of a tree directory, given as (ino, index)."""
        if children:
            self.table.add_children(parent.ino, children)

    def forget(self, ino: int, count: int) -> bool:
        """Drop `count` references; True if the kernel no longer knows the inode."""
        return ino in self.forget_many([(ino, count)])

    def forget_many(self, forgets: list[tuple[int, int]]) -> list[int]:
        """A FORGET batch; the inodes whose rows went (the kernel knows them no more)."""
        gone: list[int] = []
        self.table.forget_many([f for f in forgets if f[0] != ROOT_INO], gone)
        whole, dirs = self._whole, self._dirs
        for ino in gone:
            if whole:
                whole.pop(ino, None)
            if ino in dirs:
                dirs.pop(ino)
        return gone

    def cached(self, ino: int, loaded: dict[bytes, Tree] | None = None) -> Node | bytes:
        """The node of a known inode, rebuilt from memory (the tree cache, or `loaded`); or
        the id of a tree to read first (in a worker thread), then ask again with it in
        `loaded`. NotFound for an inode the kernel forgot. On the event loop only: the table
        is not thread-safe."""
        def tree_of(tree_id: bytes) -> Tree | None:
            found = loaded.get(tree_id) if loaded else None
            return found if found is not None else self.vfs.repo.cached_tree(tree_id)

        return self._rebuild(ino, tree_of)

    def find(self, ino: int) -> Node | None:
        """The node if known and in memory, else None (never raises)."""
        try:
            node = self.cached(ino)
        except NotFound:
            return None
        return node if isinstance(node, Node) else None

    def _kept(self, ino: int) -> Node | None:
        if ino == ROOT_INO:
            return self.root
        return self._whole.get(ino) or self._dirs.get(ino)

    def _rebuild(self, ino: int, tree_of: Callable[[bytes], Tree | None]) -> Node | bytes:
        node = self._kept(ino)
        if node is not None:
            return node
        chain: list[tuple[int, int]] = []  # (ino, index) from `ino` up to a kept node
        while node is None:
            row = self.table.row(ino)
            if row is None or row[1] == WHOLE:
                raise NotFound(f"inode {ino} is not known (forgotten)")
            chain.append((ino, row[1]))
            ino = row[0] or ROOT_INO
            node = self._kept(ino)
        for ino, index in reversed(chain):
            if node.tree_id is None:
                raise NotFound(f"inode {ino} is not known (its parent is not a directory)")
            tree = tree_of(node.tree_id)
            if tree is None:
                return node.tree_id
            entries = tree.entries
            node = self.vfs.entry_node(node, entries[index], index) if index < len(entries) else None
            if node is None or node.ino != ino:  # the path holds other content now
                raise NotFound(f"inode {ino} is stale (its directory changed)")
            if node.is_dir:
                self._dirs.put(ino, node)
        return node
