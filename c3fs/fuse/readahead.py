"""Readahead across the small files of a directory: the mount's one access-pattern heuristic.

`cat *`, `cp -r`, `tar`, `find | xargs cat` open the files of a directory one after another
in listing order. Each cold small file would cost a READ that waits for a worker thread (a
thread round trip costs more than decoding a small chunk). Only the mount sees this pattern
(the kernel turns it into open/read/release requests), so it lives here: when a small file
is opened, the chunks of the next `window` small files of its directory are fetched in one
background thread, in order, and their READs are then answered from the decoded-chunk cache
on the event loop. Halfway through a window the next one starts.

It only warms the reader's bounded LRU (BlobSource.get), so memory stays bounded, and a
failure is left for the foreground READ to report.
"""

from __future__ import annotations

import bisect
import logging
from collections import OrderedDict

import trio

from c3fs.errors import DataError, FormatError
from c3fs.objects.tree import FILE
from c3fs.repo import Repo
from c3fs.vfs import Node

log = logging.getLogger(__name__)
SMALL_FILE = 256 * 1024
WINDOW = 64
DIRECTORIES = 64  # directories remembered (each: the name that starts its next window)
END = b"\xff" * 256  # greater than any name: the directory is read ahead to its end


class DirectoryReadahead:
    def __init__(self, repo: Repo, limiter: trio.CapacityLimiter, window: int = WINDOW) -> None:
        self.repo = repo
        self.limiter = limiter
        self.window = window
        self._next: OrderedDict[int, bytes] = OrderedDict()  # dir inode -> name that triggers
        self._busy: set[int] = set()

    def opened(self, parent: Node, node: Node) -> None:
        """`node`, a file of `parent`, was opened (on the event loop: cheap, never blocks)."""
        if node.size > SMALL_FILE or parent.tree_id is None or parent.ino in self._busy:
            return
        trigger = self._next.get(parent.ino)
        if trigger is not None and node.path[-1] < trigger:
            return
        self._busy.add(parent.ino)
        trio.lowlevel.spawn_system_task(self._fill, parent, node.path[-1])

    async def _fill(self, parent: Node, name: bytes) -> None:
        try:
            trigger = await trio.to_thread.run_sync(self._fetch_after, parent.tree_id, name,
                                                    limiter=self.limiter)
            self._next[parent.ino] = trigger
            self._next.move_to_end(parent.ino)
            while len(self._next) > DIRECTORIES:
                self._next.popitem(last=False)
        except Exception:
            log.debug("readahead in %s failed", parent.display, exc_info=True)
        finally:
            self._busy.discard(parent.ino)

    def _fetch_after(self, tree_id: bytes, name: bytes) -> bytes:
        """Fetch the small files after `name`; return the name that starts the next window."""
        entries = self.repo.tree(tree_id).entries
        start = bisect.bisect_right(entries, name, key=lambda e: e.name)
        window = entries[start : start + self.window]
        half = start + self.window // 2
        trigger = entries[half].name if start + self.window < len(entries) else END
        for entry in window:
            if entry.kind == FILE and entry.size <= SMALL_FILE:
                self._warm(entry.chunk_ids())
        return trigger

    def _warm(self, chunk_ids: list[bytes]) -> None:
        for chunk_id in chunk_ids:
            try:
                self.repo.blobs.get(chunk_id)
            except (DataError, FormatError):
                return  # the READ of that file will report it
