"""Listing ahead: the directory a walk opens next, read and decoded before it is asked for.

`find`, `ls -R`, `du`, `cp -r`, `tar` and `os.walk` go through a tree depth first, in
listing order: once a directory is listed, the next one they open is its first
subdirectory, else the next subdirectory of its parent (or of a directory further up). A
listing is serial: the daemon answers a READDIRPLUS (~2 µs an entry), then the kernel spends
about as long again in the program's `getdents` making an inode per entry, while the daemon
waits for the next request. So when a reply holds the end of a tree directory, a worker
thread reads the tree of the directory most likely next (into the tree cache, so its
OPENDIR needs no thread) and decodes its first `AHEAD` entries into the fields a reply is
made of (`plus_fields`: the names, the blake3 of each path for its inode number, the
attributes). The READDIRPLUS that asks for them then only adds the inode rows and fills the
reply, on the second core while the kernel works on the one before. Measured (bench/README.md,
"Listing ahead"): `find` of a million files, cold, 4.3-6.0 -> 3.2-3.4 s.

A wrong guess costs one tree read and ~1 µs of a worker's time an entry. One directory's
fields are held at a time (up to `AHEAD` entries, ~1 MiB), dropped once it is listed.
`C3FS_LIST_AHEAD=0` turns it off (to compare).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import trio

from c3fs.objects.tree import DIR, FILE, LINK, RUN, EncodedTree, PagedTree
from c3fs.reader.holes import Holes
from c3fs.vfs import Node, Vfs, child_inos

log = logging.getLogger(__name__)
ENABLED = os.environ.get("C3FS_LIST_AHEAD", "1") != "0"
AHEAD = 4096  # entries of the next directory decoded ahead (a 1 MiB reply holds ~6,000)
SCAN = 4096  # entries looked through for the next subdirectory before giving up

# The fields of a run of entries as `pyfuse3.readdir_reply_many` takes them for a READDIRPLUS:
# names, inode numbers, modes, sizes, mtimes and generations; then st_blocks, None when each
# is its size's (no sparse file in the run: the C function computes them).
Fields = tuple[list[bytes], list[int], list[int], list[int], list[int], list[int],
               list[int] | None]


def plus_fields(tree: EncodedTree | PagedTree, key: bytes, i: int, count: int,
                bits: dict[int, int], holes: Holes) -> Fields:
    """Entries `i` to `i + count` of the tree of the directory whose key is `key`, as a
    READDIRPLUS reply shows them (`Operations.entry_attributes`'s fields, as lists; `bits`:
    the file-type bits of each kind; `holes`: the store's, for sparse files' st_blocks)."""
    entries = tree.listed(i, count, True)
    names = [entry.name for entry in entries]
    sizes = [entry.size if entry.kind == FILE else
             len(entry.target) if entry.kind == LINK else 0 for entry in entries]
    return (names, child_inos(key, names),
            [bits[entry.kind] | entry.mode for entry in entries],
            sizes,
            [entry.mtime_ns for entry in entries],
            [hash(entry.chunks if entry.kind == FILE else entry.target)
             for entry in entries],  # (the generation: masked to 64 bits in C)
            _blocks(entries, sizes, holes))


def _blocks(entries: list, sizes: list[int], holes: Holes) -> list[int] | None:
    """The st_blocks of a run of entries, if one of them is a file with hole chunks; else
    None. Only files of a hole chunk or more are looked at (only they can have one): a run
    without any costs one `max`."""
    if not sizes or max(sizes) < holes.size:
        return None
    blocks = None
    for k, size in enumerate(sizes):
        if size >= holes.size and entries[k].kind == FILE:
            sparse = holes.blocks(size, entries[k].chunks)
            if sparse != (size + 511) // 512:
                if blocks is None:
                    blocks = [(s + 511) // 512 for s in sizes]
                blocks[k] = sparse
    return blocks


class ListingAhead:
    def __init__(self, vfs: Vfs, limiter: trio.CapacityLimiter, bits: dict[int, int]) -> None:
        self.vfs = vfs
        self.limiter = limiter
        self.bits = bits
        # (tree id, key) of the directory decoded ahead, and its runs' fields by first index
        self._ready: tuple[bytes, bytes, dict[int, Fields]] | None = None
        self._busy = False
        self.guesses = self.used = 0  # directories decoded ahead, and those then listed

    def fields(self, directory: Node) -> dict[int, Fields] | None:
        """The runs decoded ahead for `directory`, by first index, if it was the guess."""
        ready = self._ready
        if ready is None or ready[0] != directory.tree_id or ready[1] != directory.key:
            return None
        return ready[2]

    def listed(self, directory: Node, tree: EncodedTree | PagedTree) -> None:
        """A readdir reached the end of `directory` (on the event loop: never blocks)."""
        if self.fields(directory) is not None:
            self._ready = None
            self.used += 1
        if not self._busy and ENABLED:
            self._busy = True
            trio.lowlevel.spawn_system_task(self._prepare, directory, tree)

    async def _prepare(self, directory: Node, tree: EncodedTree | PagedTree) -> None:
        try:
            ready = await trio.to_thread.run_sync(self._decode_next, directory, tree,
                                                  limiter=self.limiter)
            if ready is not None:
                self._ready = ready
                self.guesses += 1
        except Exception:  # (a damaged tree, a store that fails: its own request reports it)
            log.debug("listing ahead of %s failed", directory.display, exc_info=True)
        finally:
            self._busy = False

    def _decode_next(self, directory: Node, tree: EncodedTree | PagedTree
                     ) -> tuple[bytes, bytes, dict[int, Fields]] | None:
        node = self._next(directory, tree)
        if node is None or node.tree_id is None:
            return None
        following = self.vfs.repo.tree(node.tree_id, check=False)  # (now in the tree cache)
        if following.pages:  # a paged directory: its first page is read by its request
            return None
        end = min(len(following), AHEAD)
        return node.tree_id, node.key, {
            i: plus_fields(following, node.key, i, min(RUN, end - i), self.bits,
                           self.vfs.repo.blobs.holes)
            for i in range(0, end, RUN)}

    def _next(self, directory: Node, tree: EncodedTree | PagedTree) -> Node | None:
        """The directory a depth-first walk opens after listing `directory`: its first
        subdirectory, else the next subdirectory of the nearest directory above that has
        one after it."""
        i = _first_dir(tree, 0)
        if i >= 0:
            return Vfs.entry_node(directory, tree[i], i)
        node = directory
        while (above := node.parent) is not None and above.tree_id is not None and node.index >= 0:
            siblings = self.vfs.repo.tree(above.tree_id, check=False)
            i = _first_dir(siblings, node.index + 1)
            if i >= 0:
                return Vfs.entry_node(above, siblings[i], i)
            node = above
        return None


def _first_dir(tree: Sequence, start: int) -> int:
    """The index of the first subdirectory at or after `start` (looking through at most
    `SCAN` entries), or -1."""
    for i in range(start, min(len(tree), start + SCAN), RUN):
        for k, entry in enumerate(tree.listed(i, RUN)):
            if entry.kind == DIR:
                return i + k
    return -1
