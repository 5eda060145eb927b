"""Readahead across the small files of a directory: the mount's one access-pattern heuristic.

`cat *`, `cp -r`, `tar`, `find | xargs cat` open the files of a directory one after another
in listing order. Each cold small file would cost a READ request, and one that waits for a
worker thread (a thread round trip costs more than decoding a small chunk). Only the mount
sees this pattern (the kernel turns it into open/read/release requests), so it lives here:
when a small file is opened, the next `window` small files of its directory are read in one
background thread, in order (a local store reads a window's files up to 64 KiB at once:
neighbours in a pack with one read), and each one the kernel already knows (listed, so looked up) is
pushed into the kernel's page cache (`push`, FUSE notify_store): opening and reading it then
costs one OPEN request and no READ. Halfway through a window the next one starts. On a
remote store the chunks of the next windows are fetched at once, and near a directory's end
those of the directories after it in its parent (`cat */*`: 20 directories of 50 files
cost 2 serial round trips, not 5 or one per directory).

Reads go through the one read path (`Vfs.open`: a FileReader over the reader's bounded cache,
every chunk verified); a damaged file is skipped and left for its own READ to report. The kernel's page
cache is reclaimable, so memory stays bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from c3fs.errors import DataError, FormatError
from c3fs.memo import LRU
from c3fs.objects.tree import DIR, FILE, Entry
from c3fs.vfs import Node, Vfs

log = logging.getLogger(__name__)
SMALL_FILE = 256 * 1024
BATCH_FILE = 64 * 1024  # a local store: a window's files up to this size are read at once
WINDOW = 64
REMOTE_WINDOWS = 4  # windows whose chunks a remote store is asked for at once
DIRECTORIES = 64  # directories remembered (each: the name that starts its next window)
END = b"\xff" * 256  # greater than any name: the directory is read ahead to its end


class DirectoryReadahead:
    def __init__(self, vfs: Vfs, limiter: trio.CapacityLimiter,
                 push: Callable[[int, bytes], None] | None = None, window: int = WINDOW) -> None:
        """`push(inode, content)` is called in a worker thread with each file read ahead."""
        self.vfs = vfs
        self.limiter = limiter
        self.push = push
        self.window = window
        self._next: LRU[int, bytes] = LRU(DIRECTORIES)  # dir inode -> name that triggers
        self._busy: set[int] = set()

    def opened(self, parent: Node, node: Node) -> None:
        """`node`, a file of `parent`, was opened (on the event loop: cheap, never blocks)."""
        if node.size > SMALL_FILE or parent.tree_id is None or parent.ino in self._busy:
            return
        trigger = self._next.get(parent.ino)
        if trigger is not None and node.name < trigger:
            return
        self._busy.add(parent.ino)
        trio.lowlevel.spawn_system_task(self._fill, parent, node.name)

    async def _fill(self, parent: Node, name: bytes) -> None:
        try:
            trigger = await trio.to_thread.run_sync(self._read_after, parent, name,
                                                    limiter=self.limiter)
            self._next.put(parent.ino, trigger)
        except Exception:
            log.debug("readahead in %s failed", parent.display, exc_info=True)
        finally:
            self._busy.discard(parent.ino)

    def _read_after(self, parent: Node, name: bytes) -> bytes:
        """Read the small files after `name`; return the name that starts the next window."""
        entries = self.vfs.repo.tree(parent.tree_id, check=False)
        start = entries.bisect(name, right=True)
        window = entries[start : start + self.window]
        half = start + self.window // 2
        trigger = entries[half].name if start + self.window < len(entries) else END
        if self.vfs.repo.blobs.remote:
            # a remote store: the chunks of this window and the next ones in a few merged
            # ranged GETs at once, not a round trip per pack block as the files are read;
            # near the directory's end, those of the next directories beside it too
            room = REMOTE_WINDOWS * self.window
            ahead = [e for e in entries[start : start + room] if _small(e)]
            if start + room >= len(entries):
                ahead += self._next_directories(parent, room - len(ahead))
            self.vfs.repo.blobs.prefetch([c for e in ahead for c in e.chunk_ids()])
        else:  # a local store: one index transaction and one read per run of neighbours in a
            # pack, not a lookup and a pread a file (what is left out, `get` reads alone)
            blobs = self.vfs.repo.blobs
            blobs.keep(blobs.get_many([c for e in window if _small(e) and e.size <= BATCH_FILE
                                       for c in e.chunk_ids()]))
        for entry in window:
            if _small(entry):
                self._read_ahead(parent, entry)
        return trigger

    def _next_directories(self, parent: Node, room: int) -> list[Entry]:
        """Up to `room` small files of the directories that follow `parent` in its own
        parent's listing (`cat */*`, `cp -r`: the next directory is read next; without this
        its first file costs a round trip, one per directory)."""
        above = parent.parent
        if above is None or above.tree_id is None or room <= 0:
            return []
        repo = self.vfs.repo
        siblings = repo.tree(above.tree_id, check=False)
        found: list[Entry] = []
        for i in range(siblings.bisect(parent.name, right=True), len(siblings)):
            if len(found) >= room:
                break
            entry = siblings[i]
            if entry.kind == DIR:
                found += [e for e in repo.tree(entry.target, check=False) if _small(e)]
        return found[:room]

    def _read_ahead(self, parent: Node, entry: Entry) -> None:
        node = self.vfs.entry_node(parent, entry)
        try:
            content = self.vfs.open(node, readahead=0).read(0, node.size)
        except (DataError, FormatError):
            return  # the READ of that file will report it
        if self.push is not None:
            self.push(node.ino, content)


def _small(entry: Entry) -> bool:
    return entry.kind == FILE and 0 < entry.size <= SMALL_FILE
