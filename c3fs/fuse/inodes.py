"""The inodes the kernel knows, in a compact table: no Python object per node.

After `ls -lR` of a million files the kernel holds a million inodes (readdirplus: every listed
entry is a lookup) until it forgets them. The mount keeps, per inode, one row of parallel
arrays (24 bytes) and a slot of a hash table (4 bytes, at most half full), ~32 MiB for a
million (with the parent's 8-byte ino in each 28-byte slot of the hash itself: 56 MiB):

    ino -> parent ino, index of the entry in the parent's tree, lookup count, rows below

A node is rebuilt from its row when a request needs it: its parent's node (rebuilt the same
way, or one of the few kept whole), the parent's tree (the blob cache) and the entry
at `index`; the rebuilt node's inode number is checked against the row (a path whose content
changed answers ENOENT rather than another entry). Nodes outside any tree (/, /jobs,
/projects/..., the virtual links) are few and kept whole; a job's or dataset's root (`ls -l`
of /jobs/ looks up every one: 100,000 in a big store) is kept as its (kind, name) only, and
made again from the index when a request needs it (~650 B a job as a node). The nodes of the
files looked up last (FILES) are kept for the READ that comes right after each LOOKUP (`cat`
of small files): a row naming the same directory node and the same index is the same entry.

A row goes when the kernel has forgotten it (FORGET) and no row below it still needs it as a
parent; the hash shrinks when it is 1/8 full, the rows when 3/4 of them are free.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from itertools import compress

from c3fs.errors import NotFound
from c3fs.memo import LRU
from c3fs.objects.tree import EncodedTree, PagedTree
from c3fs.vfs import ROOT_INO, Node, Vfs

WHOLE = 0xFFFF_FFFF  # `index` of a node kept whole (outside any tree)
MAX_COUNT = 0xFFFF_FFFF  # lookup counts saturate here (such an inode is never forgotten)
MIN_SLOTS = 1024
DIRECTORIES = 4096  # rebuilt directory nodes kept (each keeps its ancestors)
FILES = 256  # nodes of files just looked up, kept for the READ that follows each LOOKUP


class InodeTable:
    """ino -> (parent ino, index, lookup count, rows below). Rows are parallel arrays, dense
    (a freed row is reused, and the rows are compacted when 3/4 are free): the key, the
    parent's row (4 bytes, not its 8-byte ino), index, count, rows below: 24 bytes a row. An
    open-addressing hash of row numbers finds a row by its ino (4 bytes a slot, at most half
    full, linear probing, deletion by backward shift: no tombstones). Inode numbers are
    hashes: bits 2.. index. (Half, not 3/4: linear probing's runs grow as 1/(1-load)^2; at
    3/4 a READDIRPLUS of 900,000 entries spent ~0.5 µs more an entry adding rows.)"""

    def __init__(self, slots: int = MIN_SLOTS) -> None:
        self.count = 0
        self._keys = array("Q")
        self._parents = array("I")  # the parent's row + 1 (0: none, a node kept whole)
        self._index = array("I")  # (a free row: the next free row + 1)
        self._counts = array("I")
        self._below = array("I")
        self._free = 0  # the first free row + 1 (0: none)
        self._allocate(slots)

    def _allocate(self, slots: int) -> None:
        """A hash of `slots` slots, with every row in it."""
        self._mask = slots - 1
        table = self._table = array("I", bytes(4 * slots))
        keys, mask = self._keys, self._mask
        for row in compress(range(len(keys)), keys):  # the rows in use only
            i = (keys[row] >> 2) & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = row + 1

    def __len__(self) -> int:
        return self.count

    @property
    def slots(self) -> int:
        return self._mask + 1

    @property
    def nbytes(self) -> int:
        """The memory of its arrays."""
        return sum(a.itemsize * len(a) for a in (self._table, self._keys, self._parents,
                                                  self._index, self._counts, self._below))

    def _slot(self, ino: int) -> int:
        """The slot holding `ino`'s row, or -1."""
        keys, table, mask = self._keys, self._table, self._mask
        i = (ino >> 2) & mask
        while True:
            row = table[i]
            if row == 0:
                return -1
            if keys[row - 1] == ino:
                return i
            i = (i + 1) & mask

    def _row(self, ino: int) -> int:
        """The row of `ino`, or -1."""
        i = self._slot(ino)
        return -1 if i < 0 else self._table[i] - 1

    def __contains__(self, ino: int) -> bool:
        return self._slot(ino) >= 0

    def row(self, ino: int) -> tuple[int, int] | None:
        """(parent ino, index) of a known inode, else None."""
        row = self._row(ino)
        if row < 0:
            return None
        parent = self._parents[row]
        return (self._keys[parent - 1] if parent else 0), self._index[row]

    def lookups(self, ino: int) -> int:
        row = self._row(ino)
        return 0 if row < 0 else self._counts[row]

    def add(self, ino: int, parent: int, index: int) -> None:
        """One more kernel reference to `ino`, the entry `index` of directory `parent`
        (`parent` 0 and `index` WHOLE: a node kept whole, which pins no parent row).
        `add_children` of one entry, without its batch's lists (one per LOOKUP)."""
        up = 0  # the parent's row + 1
        if parent > ROOT_INO:
            up = self._row(parent) + 1
            if not up:
                raise NotFound(f"inode {parent} is not known (forgotten)")
        i = self._slot(ino)
        if i >= 0:  # known: one more reference (a job pushed again may shift it)
            row = self._table[i] - 1
            self._index[row] = index
            if self._counts[row] < MAX_COUNT:
                self._counts[row] += 1
            return
        if 2 * (self.count + 1) > self._mask + 1:
            self._allocate(self._grown(self.count + 1))
        table, mask = self._table, self._mask
        i = (ino >> 2) & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = self._new_row(ino, up, index) + 1
        self.count += 1
        if up:
            self._below[up - 1] += 1

    def add_children(self, parent: int, inos: Sequence[int], first: int) -> None:
        """`add` of entries `first`, `first + 1`... of one directory (a readdir reply), whose
        inode numbers are `inos`."""
        up = 0  # the parent's row + 1
        if parent > ROOT_INO:
            up = self._row(parent) + 1
            if not up:
                raise NotFound(f"inode {parent} is not known (forgotten)")
        if 2 * (self.count + len(inos)) > self._mask + 1:
            self._allocate(self._grown(self.count + len(inos)))
        keys, table, index, counts = self._keys, self._table, self._index, self._counts
        mask, new = self._mask, 0
        # Rows past the last are made at once: their keys appended as they come (probing
        # reads them), their index and count kept aside until the loop ends.
        base, new_index, new_counts = len(keys), [], []
        for at, ino in enumerate(inos, first):
            i = (ino >> 2) & mask
            while True:
                row = table[i]
                if row == 0:
                    if self._free:  # a freed row, reused
                        table[i] = self._new_row(ino, up, at) + 1
                    else:
                        keys.append(ino)
                        new_index.append(at)
                        new_counts.append(1)
                        table[i] = len(keys)
                    new += 1
                    break
                if keys[row - 1] == ino:  # known: one more reference (a job pushed again
                    row -= 1                # may shift it)
                    if row >= base:  # (the same inode twice in one batch)
                        new_index[row - base] = at
                        new_counts[row - base] += 1
                    else:
                        index[row] = at
                        if counts[row] < MAX_COUNT:
                            counts[row] += 1
                    break
                i = (i + 1) & mask
        if new_index:
            made = len(new_index)
            index.extend(new_index)
            counts.extend(new_counts)
            self._parents.extend(array("I", (up,)) * made)
            self._below.extend(array("I", bytes(4 * made)))
        self.count += new
        if up and new:
            self._below[up - 1] += new

    def _new_row(self, ino: int, up: int, at: int) -> int:
        row = self._free - 1
        if row < 0:
            row = len(self._keys)
            self._keys.append(ino)
            self._parents.append(up)
            self._index.append(at)
            self._counts.append(1)
            self._below.append(0)
            return row
        self._free = self._index[row]
        self._keys[row], self._parents[row], self._index[row] = ino, up, at
        self._counts[row], self._below[row] = 1, 0
        return row

    def _grown(self, rows: int) -> int:
        slots = self._mask + 1
        while 2 * rows > slots:
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
        keys, table, counts, below, parents = (self._keys, self._table, self._counts,
                                               self._below, self._parents)
        mask = self._mask
        for ino, count in forgets:
            i = (ino >> 2) & mask  # (`_slot`, inline: a FORGET batch may hold 1,000s)
            while True:
                row = table[i]
                if row == 0 or keys[row - 1] == ino:
                    break
                i = (i + 1) & mask
            if row == 0:
                continue
            row -= 1
            if counts[row] < MAX_COUNT:
                counts[row] = max(0, counts[row] - count)
            while counts[row] == 0 and below[row] == 0:
                up = parents[row]
                self._delete(i, row)
                gone.append(ino)
                if not up:
                    break
                row = up - 1
                below[row] -= 1
                if counts[row] or below[row]:  # (the parent stays: no need for its slot)
                    break
                ino = keys[row]
                i = self._slot(ino)
        self._shrink()

    def _delete(self, i: int, row: int) -> None:
        """Empty slot `i` (holding `row`) and free the row."""
        keys, table, mask = self._keys, self._table, self._mask
        j = i
        while True:  # shift back the rows that probed past slot i
            j = (j + 1) & mask
            moved = table[j]
            if moved == 0:
                break
            home = (keys[moved - 1] >> 2) & mask
            if (i < j and (home <= i or home > j)) or (j < i and home <= i and home > j):
                table[i] = moved
                i = j
        table[i] = 0
        keys[row] = 0
        self._index[row], self._free = self._free, row + 1
        self.count -= 1

    def _shrink(self) -> None:
        """Compact the rows when 3/4 of them are free, halve the hash while 1/8 full."""
        if len(self._keys) > MIN_SLOTS and 4 * self.count < len(self._keys):
            self._compact()
        slots = self._mask + 1
        if slots > MIN_SLOTS and 8 * self.count < slots:
            while slots > MIN_SLOTS and 8 * self.count < slots:
                slots //= 2
            self._allocate(slots)

    def _compact(self) -> None:
        """The rows in use, moved to the front in order (their parents' rows renumbered)."""
        keys = self._keys
        used = array("I", compress(range(len(keys)), keys))
        moved_to = array("I", bytes(4 * len(keys)))
        for new, old in enumerate(used, 1):
            moved_to[old] = new
        parents = self._parents
        self._parents = array("I", (moved_to[parents[old] - 1] if parents[old] else 0
                                    for old in used))
        for name in ("_keys", "_index", "_counts", "_below"):
            column = getattr(self, name)
            setattr(self, name, array(column.typecode, (column[old] for old in used)))
        self._free = 0
        self._allocate(self._mask + 1)


class Inodes:
    """The nodes the kernel knows, with their lookup counts (released in `forget`)."""

    def __init__(self, vfs: Vfs, root: Node) -> None:
        self.vfs = vfs
        self.root = root
        self.table = InodeTable()
        self._whole: dict[int, Node] = {}  # nodes outside any tree
        self._refs: dict[int, tuple[str, str]] = {}  # a job's or dataset's root: its ref
        self._dirs: LRU[int, Node] = LRU(DIRECTORIES)  # rebuilt directories
        self._files: LRU[int, Node] = LRU(FILES)  # files just looked up (see `_rebuild`)

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
                self._files.put(node.ino, node)
        else:
            self.table.add(node.ino, 0, WHOLE)
            if node.is_ref_root:
                self._refs[node.ino] = node.ref
                self._dirs.pop(node.ino)  # (made before this lookup: the ref may name
                # other content now, pushed again under the same id)
            else:
                self._whole[node.ino] = node

    def remember_children(self, parent: Node, inos: Sequence[int], first: int) -> None:
        """`remember` of the entries `first`, `first + 1`... of a tree directory, whose inode
        numbers are `inos`."""
        if inos:
            self.table.add_children(parent.ino, inos, first)

    def forget(self, ino: int, count: int) -> bool:
        """Drop `count` references; True if the kernel no longer knows the inode."""
        return ino in self.forget_many([(ino, count)])

    def forget_many(self, forgets: list[tuple[int, int]]) -> list[int]:
        """A FORGET batch; the inodes whose rows went (the kernel knows them no more)."""
        gone: list[int] = []
        self.table.forget_many(forgets, gone)  # (the root has no row: ignored)
        for ino in self._whole.keys() & gone:  # (few kept whole: the batch checked in C)
            del self._whole[ino]
        for ino in self._refs.keys() & gone:
            del self._refs[ino]
        self._dirs.discard(gone)
        self._files.discard(gone)
        return gone

    def cached(self, ino: int, loaded: dict[bytes, EncodedTree | PagedTree] | None = None) -> Node | bytes:
        """The node of a known inode, rebuilt from memory (the tree cache, or `loaded`); or
        the id of a tree to read first (in a worker thread), then ask again with it in
        `loaded`. NotFound for an inode the kernel forgot. On the event loop only: the table
        is not thread-safe."""
        def tree_of(tree_id: bytes) -> EncodedTree | PagedTree | None:
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
        node = self._whole.get(ino) or self._dirs.get(ino)
        if node is None and (ref := self._refs.get(ino)) is not None:
            node = self.vfs.ref_node(*ref)  # (an index read: NotFound if it went meanwhile)
            if node.ino != ino:
                raise NotFound(f"inode {ino} is stale ({ref[1]} changed)")
            self._dirs.put(ino, node)
        return node

    def _rebuild(self, ino: int, tree_of: Callable[[bytes], EncodedTree | PagedTree | None]) -> Node | bytes:
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
        if len(chain) == 1:  # a file just looked up, in the same directory node, same entry
            ino, index = chain[0]
            looked_up = self._files.get(ino)
            if looked_up is not None and looked_up.parent is node and looked_up.index == index:
                return looked_up
        for ino, index in reversed(chain):
            if node.tree_id is None:
                raise NotFound(f"inode {ino} is not known (its parent is not a directory)")
            tree = tree_of(node.tree_id)
            if tree is None:
                return node.tree_id
            entries, at = tree.entries, index
            if tree.pages and index < len(tree):  # a paged directory: the page of the entry
                k = tree.page_at(index)
                page = tree.cached_page(k)
                if page is None:
                    page = tree_of(tree.pages[k])
                    if page is None:
                        return tree.pages[k]
                    page = tree.checked_page(k, page)
                entries, at = page, index - tree.starts[k]
            node = self.vfs.entry_node(node, entries[at], index) if at < len(entries) else None
            if node is None or node.ino != ino:  # the path holds other content now
                raise NotFound(f"inode {ino} is stale (its directory changed)")
            if node.is_dir:
                self._dirs.put(ino, node)
        return node
