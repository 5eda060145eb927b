"""Ingest: a directory -> content-defined chunks -> packs -> trees -> one root id.

The walk runs in the calling thread and hands files to two pools: large files to one, small
files (under one chunk) in batches to the other, so the two kinds share the cores instead of
taking turns. A batch of small files is read and hashed (its entries made) in one thread and
compressed and packed in another, so that the two halves overlap. It runs ahead of the directories it has stored by at most `LOOKAHEAD` file
tasks; directories are stored in post-order, each once its files and subdirectories are.
A large file is read in big blocks and cut with FastCDC in place; its chunks go, as views of
the block, to a third pool that hashes them (blake3) and, when the index does not know them
yet, compresses them (zstd). All of these release the GIL, so both cores work even on a
single large file. `PackSink` gathers new blobs into packs and writes full packs in the
background, a bounded number at a time; a pack's blobs enter the index only once the pack is
durable. Nothing names the blobs until the caller registers a job, so a crash at any point
leaves only unreferenced packs (a tree may be in a pack before the small files' chunks it
names are: every push stores every chunk it does not find, whatever trees it finds).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import blake3
import pyfastcdc

from c3fs.errors import C3fsError, NotFound, SourceError, SourceNotFound
from c3fs.fsutil import human, sorted_names
from c3fs.index import Index
from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.pack import CHUNK, PACK_TABLE, TREE, PackBuilder, page_buffer
from c3fs.objects.tree import DIR, FILE, LINK, Entry, TreeWriter, page_entries
from c3fs.store.store import Store

log = logging.getLogger(__name__)
MiB = 1024 * 1024
MAX_TREE = codec.MAX_PLAIN  # the largest blob a reader accepts
Progress = Callable[[int], None]
BATCH_BYTES = 1024 * 1024
SMALL_BATCH = 64  # files smaller than one chunk, stored per task
LATER = 4  # batches of small files read and waiting to be compressed (16 MiB at most)
LOOKAHEAD = 256  # file tasks the walk may run ahead of the directories stored
_HUGE = 2 * MiB  # a huge page: pack buffers are whole ones
READ_BLOCK = 4 * 1024 * 1024  # large files are read and cut this much at a time,
RING = 3  # into this many buffers per file
OPEN_FILE = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW  # a file swapped for a link is not followed
# reads of a file that changes while it is read (as tar, restic and borg see it: its size,
# mtime or ctime moved, or not its size's worth of bytes came); the last is stored as read
READ_ATTEMPTS = 3


def source_error(where: str, exc: OSError, doing: str = "") -> SourceError:
    """The one-line error for `exc`, met `doing` something to `where` (a path of the pushed
    directory): SourceNotFound (exit 3) when it is not there, else SourceError (exit 4: the
    source refused the read, as a destination refuses a write)."""
    gone = isinstance(exc, FileNotFoundError | NotADirectoryError)
    return (SourceNotFound if gone else SourceError)(
        f"{where}: {doing + ': ' if doing else ''}{exc.strerror}")


@dataclass
class IngestStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    logical_bytes: int = 0
    chunks: int = 0
    new_chunks: int = 0
    stored_bytes: int = 0  # bytes of the packs this ingest wrote
    packs: int = 0
    skipped: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # files stored as read, still changing
    vanished: list[str] = field(default_factory=list)  # listed, then gone before read: not stored
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def add_changed(self, path: str, attempts: int = READ_ATTEMPTS) -> None:
        """`path` changed at each of its `attempts` reads (the last one: its name no longer
        opened it, renamed or removed since): stored as last read, and said so."""
        log.warning("%s changed while it was read (%d attempts): stored as read", path,
                    attempts)
        with self._lock:
            self.changed.append(path)

    def add_vanished(self, path: str) -> None:
        """`path` (a file, symlink or directory) was listed, then was gone when it was to be
        read: not stored, and said so."""
        log.warning("%s removed before it was read: not stored", path)
        with self._lock:
            self.vanished.append(path)


class PackSink:
    """Collects new blobs into packs; writes full packs in the background, `inflight` at most.

    A pack is full at the store's `pack_target` bytes or `pack_blobs` blobs. Packs are
    written without waiting for the disk (writeback starts at once) and made durable in
    batches of `sync_every` bytes or `sync_blobs` blobs, whichever comes first, and at
    `flush`; only then do their blobs enter the index. Until then `_pending` answers for
    them, so a push dedups against itself.

    Packs are built in a few page-aligned buffers of one size, reused from pack to pack
    (a fresh 32 MiB buffer per pack cost ~8,000 page faults, each page cleared): a local
    store writes them with O_DIRECT, so the pack's bytes are not copied again into the
    page cache.
    """

    # small enough that the packs are made durable as the push goes, in the pack threads,
    # beside the other work: at 512 MiB every pack of a 300 MiB push waited for `flush`,
    # whose fsyncs and index commit were 0.2-0.28 s of a push's end, one thread busy (0.03
    # s at 64 MiB); with O_DIRECT writes a pack's fsync has only its metadata left to do
    sync_every = 64 * 1024 * 1024
    # what waits for a sync is held in memory (an entry and a pending id per blob): with
    # small files, 512 MiB of packs is millions of blobs (a 1M-file push held them all)
    sync_blobs = 65536
    # a pack of small files holds ~100,000 of them at 32 MiB: each is an id in `_pending`
    # (~100 B) until indexed, and up to three packs are in memory at once
    pack_blobs = 16384

    def __init__(self, store: Store, index: Index, stats: IngestStats, inflight: int = 2) -> None:
        self.store = store
        self.index = index
        self.stats = stats
        self.target = store.config.pack_target
        # a pack ends with the blob that takes it to `target`: one chunk at most past it
        # (a bigger tree makes its builder move to a bigger buffer of its own)
        self._capacity = -(-(self.target + store.config.chunk_max + 4096) // _HUGE) * _HUGE
        self._free: list = []  # buffers of `_capacity` bytes, no pack in them
        self._free_lock = threading.Lock()
        self._keep = inflight + 2  # the one being filled, those being written, one waiting
        self._pending: set[bytes] = set()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(inflight)
        self._pool = ThreadPoolExecutor(inflight, thread_name_prefix="c3fs-pack")
        self._writes: list[Future] = []
        self._unsynced: list[tuple[str, int, bytearray]] = []  # (pack id, size, entry table)
        self._unsynced_bytes = 0
        self._unsynced_blobs = 0
        self._sync_lock = threading.Lock()
        self._builder = self._new_builder()

    def _new_builder(self) -> PackBuilder:
        with self._free_lock:
            buffer = self._free.pop() if self._free else None
        return PackBuilder(buffer if buffer is not None else page_buffer(self._capacity))

    def _recycle(self, buffer) -> None:
        """Keep a written pack's buffer for a next pack (if it is of the usual size)."""
        with self._free_lock:
            if len(buffer) == self._capacity and len(self._free) < self._keep:
                self._free.append(buffer)

    def known(self, blob: bytes) -> bool:
        with self._lock:
            if blob in self._pending:
                return True
        return self.index.lookup(blob) is not None

    def known_many(self, blobs: list[bytes]) -> list[bool]:
        """`known` of each of `blobs`, the index asked once (one read transaction)."""
        with self._lock:
            queued = [blob in self._pending for blob in blobs]
        rest = [blob for blob, q in zip(blobs, queued, strict=True) if not q]
        found = iter(self.index.lookup_many(rest) if rest else ())
        return [q or next(found) is not None for q in queued]

    def add(self, kind: int, blob: bytes, codec_id: int, stored: bytes | memoryview,
            plain_len: int) -> bool:
        """Queue a blob for the current pack; False if it is already stored or queued."""
        with self._lock:
            if blob in self._pending:
                return False
            self._pending.add(blob)
            self._builder.add(kind, blob, codec_id, stored, plain_len)
            builder = self._builder
            full = builder if builder.size >= self.target or len(builder) >= self.pack_blobs else None
            if full is not None:
                self._builder = self._new_builder()
        if full is not None:
            self._write(full)
        return True

    def _write(self, builder: PackBuilder) -> None:
        self._check_failed()
        self._slots.acquire()
        self._writes.append(self._pool.submit(self._write_pack, builder))

    def _write_pack(self, builder: PackBuilder) -> None:
        try:
            pack_id, parts = builder.finish_parts()
            buffer = parts[0].obj
            size = sum(len(part) for part in parts)
            self.store.put_pack(pack_id, parts, sync=False)
            del parts  # the pack's bytes: not held while syncing
            self._recycle(buffer)  # a backend keeps no view of what it was given
            del buffer
            self.stats.add(stored_bytes=size, packs=1)
            log.debug("wrote pack %s: %d blobs, %d bytes", pack_id, len(builder), size)
            with self._sync_lock:
                self._unsynced.append((pack_id, size, builder.table))
                self._unsynced_bytes += size
                self._unsynced_blobs += len(builder)
                due = (self._unsynced_bytes >= self.sync_every
                       or self._unsynced_blobs >= self.sync_blobs)
            if due:
                self._sync()
        finally:
            self._slots.release()

    def _sync(self) -> None:
        """fsync the packs written so far, then index their blobs."""
        with self._sync_lock:
            batch, self._unsynced = self._unsynced, []
            self._unsynced_bytes = self._unsynced_blobs = 0
            self.store.sync_packs([pack_id for pack_id, _, _ in batch])
            for pack_id, size, table in batch:
                self.index.add_pack_table(pack_id, size, table)
        with self._lock:
            for _, _, table in batch:
                ids = bytes(table)
                self._pending.difference_update(
                    ids[i : i + 32] for i in range(0, len(ids), PACK_TABLE.size))

    def _check_failed(self) -> None:
        for future in [f for f in self._writes if f.done()]:
            future.result()  # raises the write's error
            self._writes.remove(future)

    def flush(self) -> None:
        """Write the last pack and wait until every pack is durable and indexed."""
        with self._lock:
            last, self._builder = self._builder, self._new_builder()
        if len(last):
            self._write(last)
        for future in self._writes:
            future.result()
        self._writes.clear()
        self._sync()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _name(entry: Entry) -> bytes:
    return entry.name


def _digest_block(hasher, block: memoryview) -> list:
    """Give a file's next block to its digest; no chunks (a task of `_store_chunks`'s window)."""
    hasher.update(block)
    return []


def _may_have_holes(st: os.stat_result) -> bool:
    """Whether a file takes fewer blocks than its size: sparse (or compressed by its file
    system), so worth asking where its data is."""
    return st.st_blocks * 512 < st.st_size


def _feed_zeros(hasher, count: int) -> None:
    """Give `hasher` `count` zero bytes (a hole's part of a file's digest)."""
    zeros = memoryview(bytes(min(count, READ_BLOCK)))
    while count:
        step = min(count, len(zeros))
        hasher.update(zeros[:step])
        count -= step


def _hole_after(fd: int, at: int) -> int:
    """How many bytes from `at` on are a hole (0 if data starts there, or if the file
    system cannot say). The file offset is left where it was."""
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, at, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # (EINVAL: the file system cannot say)
            return 0
        data = os.fstat(fd).st_size  # no data after `at`: a hole up to the end
    finally:
        os.lseek(fd, here, os.SEEK_SET)
    return max(data - at, 0)


class _Stat(NamedTuple):
    """What the walk keeps of a file's or directory's stat: an os.stat_result costs ~800 B,
    and up to LOOKAHEAD * SMALL_BATCH files wait in the queues with theirs."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_dev: int
    st_ino: int


def _kept(st: os.stat_result) -> _Stat:
    return _Stat(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


def _unchanged(before: _Stat, after: os.stat_result, read: int) -> bool:
    """Whether a read of `read` bytes of a file, between its stats `before` and `after`, saw
    one state of it: the same inode, size, mtime and ctime (a write, a truncation, a chmod
    or an mtime set back, as `rsync --inplace` does, move ctime), and as many bytes as its
    size. (Timestamps move at the kernel's clock tick: a write within the tick of the stat
    before it shows only in the size.) Fields compared, no tuple made: it runs per file."""
    return (read == after.st_size == before.st_size and after.st_mtime_ns == before.st_mtime_ns
            and after.st_ctime_ns == before.st_ctime_ns and after.st_ino == before.st_ino
            and after.st_mode == before.st_mode)


class _Read(NamedTuple):
    """One read of a large file: its chunks stored, and what they make."""

    chunks: bytes  # their ids, joined
    sizes: list[int]
    digest: bytes  # blake3 of the bytes read
    stat: _Stat  # the file's, after the read
    unchanged: bool  # whether the read saw one state of the file (`_unchanged`)


@dataclass
class _Dir:
    """A walked directory: its entries, some still being stored, and its own entry once stored."""

    name: bytes
    mode: int
    mtime_ns: int
    parts: list[Entry | Future | _Dir]  # a small-file task gives a list of entries
    tasks: int  # how many parts are futures
    writer: TreeWriter | None = None  # a big directory's, given its first entries already
    entry: Entry | None = None
    gone: list[str] = field(default_factory=list)  # its `_Open`'s
    removed: bool = False  # itself removed while it was walked: not stored, nor what it held
    counts: Counter[str] = field(default_factory=Counter)  # its `_Open`'s
    up: Counter[str] | None = None  # its parent's `counts`, given its own once it is stored


class _Open:
    """A directory being walked: the rest of its listing, what it holds so far, and its
    place (its parent and name: a full path is built only for a message, so the walk holds
    no per-level path and works below PATH_MAX). Only the directory being listed has an
    open descriptor; its ancestors keep their (device, inode) to be found again by `..`."""

    def __init__(self, parent: _Open | None, name: bytes, fd: int, st: _Stat,
                 items: Iterator[bytes], top: bytes = b"") -> None:
        self.parent, self.name, self.fd, self.st, self.top = parent, name, fd, st, top
        self.items = iter(items)
        self.parts: list[Entry | Future | _Dir] = []
        self.small: list[tuple[bytes, _Stat]] = []
        self.held = 0  # names listed and in `parts` (or `small`)
        self.writer: TreeWriter | None = None  # once `held` grew past a page (`_drain`)
        # the paths of names listed, then gone when they were to be read (also by its file
        # tasks, after the walk has left it): said once it is stored, unless it is gone too
        self.gone: list[str] = []
        # what it added to the stats (`Ingester._count`), its subdirectories' too once they
        # are stored: taken off again if it turns out removed (`Ingester._uncount`)
        self.counts: Counter[str] = Counter()

    def display(self, name: bytes = b"") -> str:
        """The path of this directory (or of `name` in it), for messages."""
        names, node = [name] if name else [], self
        while node.parent is not None:
            names.append(node.name)
            node = node.parent
        return os.fsdecode(os.path.join(node.top, *reversed(names)))


class Ingester:
    """Stores directory trees in `store`. One instance per push; not reusable."""

    def __init__(self, store: Store, index: Index, workers: int = 2, progress: Progress | None = None):
        self.store = store
        self.config = store.config
        self.stats = IngestStats()
        self.sink = PackSink(store, index, self.stats)
        self.progress = progress or (lambda n: None)
        self._files = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-file")
        # one thread for small files: their cost is Python and short system calls, each of
        # which hands the GIL to a waiting thread; a second one only added hand-offs (full
        # dataset, source cached: 1.3-1.7 s with two, 1.16-1.23 s with one)
        self._smalls = ThreadPoolExecutor(1, thread_name_prefix="c3fs-small")
        self._chunks = ThreadPoolExecutor(workers, thread_name_prefix="c3fs-chunk")
        # one thread hashes every large file's bytes in order (the file's digest), beside
        # the thread reading and cutting it: a file alone (the last large one) is then
        # not held to the speed of one thread doing both. One thread keeps each file's
        # blocks in the order they were given.
        self._digests = ThreadPoolExecutor(1, thread_name_prefix="c3fs-digest")
        self._window = 4 * workers
        # the small files' blobs are compressed and queued for packs here, in batch order
        self._blobs = ThreadPoolExecutor(1, thread_name_prefix="c3fs-small-blobs")
        self._later: deque[Future] = deque()  # their batches not known to be stored yet
        self._later_lock = threading.Lock()
        self._local = threading.local()
        self._walked: deque[_Dir] = deque()  # walked and not stored yet, in post-order
        self._tasks = 0  # file tasks under them
        self._queued: deque[Future] = deque()  # file tasks, oldest first (some done)
        self._fds: set[int] = set()  # directory descriptors handed to file tasks
        self._fds_lock = threading.Lock()
        self._counts_lock = threading.Lock()  # (of every directory's `counts`)
        self._page = page_entries()

    def __enter__(self) -> Ingester:
        return self

    def __exit__(self, *exc) -> None:
        self._files.shutdown(wait=True, cancel_futures=True)
        self._smalls.shutdown(wait=True, cancel_futures=True)
        self._chunks.shutdown(wait=True, cancel_futures=True)
        self._digests.shutdown(wait=True, cancel_futures=True)
        self._blobs.shutdown(wait=True, cancel_futures=True)
        self.sink.close()
        for fd in self._fds:  # those of tasks canceled by a failure
            os.close(fd)

    def ingest_dir(self, path: str | os.PathLike) -> bytes:
        """Store everything below `path`; return the root tree id once all packs are durable."""
        top = os.fsencode(path)
        try:
            st = os.stat(top)
        except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a file on the way
            raise NotFound(f"{os.fsdecode(top)}: no such directory") from None
        except OSError as exc:
            raise source_error(os.fsdecode(top), exc) from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceNotFound(f"{os.fsdecode(top)} is not a directory")
        root = self._walk(top, st)
        self._store_dirs(-1)
        self._stored()  # (the trees name the small files' chunks)
        self.sink.flush()
        return root.entry.target

    def store_tree(self, entries: list[Entry], name: bytes = b"") -> bytes:
        """Store one directory made of existing entries (used to compose job trees)."""
        writer = self.tree_writer(name)
        for entry in sorted(entries, key=lambda e: e.name):
            writer.add(entry)
        return writer.finish()

    def tree_writer(self, name: bytes = b"") -> TreeWriter:
        """A writer of one directory, its entries given in name order: an ordinary tree,
        or past `page_entries()` entries a paged one written page by page as they fill.
        A page over MAX_TREE bytes (readers refuse bigger blobs) is refused: one file of
        more than ~1.8 M chunks (37 B each in its entry): ~220 GiB of ordinary data (128
        KiB chunks on average), ~1.7 TiB of holes (1 MiB)."""
        def put(data: bytes, count: int) -> bytes:
            if len(data) > MAX_TREE:
                where = (f"directory {name.decode(errors='backslashreplace')}" if name
                         else "a directory")
                raise C3fsError(
                    f"{where}: {count:,} entries take {human(len(data))} in one tree (a page "
                    f"of it), over the {human(MAX_TREE)} a tree may take: a file of too many "
                    "chunks?")
            tree_id = blob_id(data)
            self._store_blob(TREE, tree_id, data)
            return tree_id

        return TreeWriter(put, self._page)

    # walking ------------------------------------------------------------------------------
    def _walk(self, top: bytes, st: os.stat_result) -> _Dir:
        """List `top` and everything below it, handing its files to the pools; return its
        directory, stored later (`_store_dirs`) so that the walk never waits for one
        directory's files before it starts on the next (big files and small files then
        share the cores instead of taking turns).

        Depth first with an explicit stack, each directory opened relative to its parent
        (`openat`, never following a symlink), so any depth works: no recursion, no path
        longer than one name. A directory is finished (queued for storing) once all its
        entries are, which gives post-order; its parent is then opened again through
        `..` and checked to be the same directory. A name gone between its listing and its
        first read (a rotated log, a removed checkpoint; a directory also while it is walked)
        is left out, and named once its directory is stored (`_Open.gone`)."""
        stack = [self._opened(None, top, top, st)]
        try:
            while True:
                current = stack[-1]
                if current.held >= self._page:
                    self._drain(current)
                name = next(current.items, None)
                if name is not None:
                    current.held += 1
                    child = self._entry(name, current)
                    if child is not None:  # a subdirectory: walk it now, its parent closed
                        os.close(current.fd)
                        current.fd = -1
                        stack.append(child)
                    continue
                walked = self._leave(stack)
                if not stack:
                    return walked
        finally:
            if stack and stack[-1].fd >= 0:  # the walk failed
                os.close(stack[-1].fd)

    def _leave(self, stack: list[_Open]) -> _Dir:
        """Finish the directory on top of `stack`, listed to its end: take it off, open its
        parent again and add it there, queued for storing; or, removed while it was walked,
        name it in its parent's `gone` (the top: an error, as when it is not there)."""
        current = stack[-1]
        if current.small:  # (its last small files: they need its descriptor)
            self._submit_small(current)
        unlinked = not os.fstat(current.fd).st_nlink
        stack.pop()
        parent = stack[-1] if stack else None
        if parent is None:
            os.close(current.fd)
        else:
            parent.fd = self._reopen_parent(current, parent)
        removed = unlinked and self._removed(current, parent)
        walked = self._finish(current, removed)
        if parent is None:
            if removed:
                raise SourceNotFound(f"{current.display()}: removed while it was being stored")
        elif removed:
            parent.gone.append(current.display())
        else:
            parent.parts.append(walked)
        return walked

    def _opened(self, parent: _Open | None, name: bytes, path: bytes, st: os.stat_result) -> _Open:
        """Open and list directory `path` (a name relative to `parent`, or the top)."""
        def where() -> str:  # made only for a message: O(depth), so never per directory
            return parent.display(name) if parent is not None else os.fsdecode(name)

        dir_fd = parent.fd if parent is not None else None
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (os.O_NOFOLLOW if parent else 0)
        try:
            fd = os.open(path, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise source_error(where(), exc, "cannot open directory") from None
        try:
            names = sorted_names(fd, 4 * self._page)
        except OSError as exc:
            os.close(fd)
            raise source_error(where(), exc, "cannot list directory") from None
        return _Open(parent, name, fd, _kept(st), names, top=path if parent is None else b"")

    @staticmethod
    def _reopen_parent(child: _Open, parent: _Open) -> int:
        """`parent`'s descriptor again, through `..` of the child just finished."""
        try:
            fd = os.open(b"..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=child.fd)
        except OSError as exc:
            raise source_error(parent.display(), exc, "cannot open directory") from None
        finally:
            os.close(child.fd)
            child.fd = -1
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (parent.st.st_dev, parent.st.st_ino):
            os.close(fd)
            raise SourceNotFound(f"{child.display()}: moved while it was being stored")
        return fd

    @staticmethod
    def _removed(current: _Open, parent: _Open | None) -> bool:
        """Whether directory `current`, which has no links left, was removed while it was
        walked: its name in `parent` (open; the top's path, for the top) is gone or names
        another. (A link count alone is not trusted: some file systems say 0 of any
        directory.)"""
        try:
            st = os.stat(current.name, dir_fd=parent.fd if parent else None,
                         follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError as exc:
            raise source_error(current.display(), exc) from None
        return (st.st_dev, st.st_ino) != (current.st.st_dev, current.st.st_ino)

    def _finish(self, current: _Open, removed: bool) -> _Dir:
        """Queue a listed directory for storing (its small files all sent): to be stored,
        or, `removed`, only waited for."""
        parts, st = current.parts, current.st
        walked = _Dir(current.name, stat.S_IMODE(st.st_mode), st.st_mtime_ns, parts,
                      sum(isinstance(p, Future) for p in parts), current.writer,
                      gone=current.gone, removed=removed, counts=current.counts,
                      up=current.parent.counts if current.parent is not None else None)
        self._walked.append(walked)
        self._tasks += walked.tasks
        self._store_dirs(LOOKAHEAD)
        return walked

    def _store_dirs(self, keep: int = 0) -> None:
        """Store walked directories, oldest first, until at most `keep` file tasks are
        left unfinished under the rest. Directories are walked in post-order (children
        before their parent), so a parent's subdirectories are stored by then."""
        while self._walked and self._tasks > keep:
            self._store_next()

    def _store_next(self) -> None:
        walked = self._walked.popleft()
        if walked.removed:
            self._uncount(walked)
            return
        writer = walked.writer or self.tree_writer(walked.name)
        for entry in sorted(self._resolved(walked.parts), key=_name):
            writer.add(entry)
        walked.entry = Entry(walked.name, DIR, walked.mode, 0, walked.mtime_ns,
                             target=writer.finish())
        walked.parts = []
        self._tasks -= walked.tasks
        self.stats.add(dirs=1)
        with self._counts_lock:  # (its tasks are done: its counts and `gone` are whole)
            walked.counts["dirs"] += 1
            if walked.up is not None:
                walked.up.update(walked.counts)
        for path in sorted(walked.gone):
            self.stats.add_vanished(path)

    def _uncount(self, walked: _Dir) -> None:
        """Wait for the files of a directory removed while it was walked (its parent names
        it as gone), and take what they and its stored subdirectories added off the stats:
        it is not stored."""
        for _ in self._resolved(walked.parts):
            pass
        walked.parts = []
        self._tasks -= walked.tasks
        self.stats.add(**{name: -value for name, value in walked.counts.items()})

    def _count(self, where: _Open, **counts: int) -> None:
        """Add `counts` to the stats, and to those of directory `where` (`_Open.counts`)."""
        self.stats.add(**counts)
        with self._counts_lock:
            where.counts.update(counts)

    def _resolved(self, parts: list[Entry | Future | _Dir]) -> Iterator[Entry]:
        """The entries of `parts` (waiting for their files; a subdirectory stored first)."""
        for part in parts:
            if isinstance(part, Future):
                part = part.result()
                if part is None:  # a file gone before it was read (in `_Open.gone`)
                    continue
            elif isinstance(part, _Dir):
                while part.entry is None:  # (post-order: it is among the walked ones)
                    self._store_next()
                part = part.entry
            yield from part if isinstance(part, list) else (part,)

    def _drain(self, into: _Open) -> None:
        """Hand what a big directory being walked holds so far to its tree writer, which
        writes pages as they fill: every name listed so far is in `parts` (its last small
        files sent now), every name still to come sorts after them. So a directory of 10 M
        entries is held a page at a time, not whole."""
        if into.small:
            self._submit_small(into)
        if into.writer is None:
            into.writer = self.tree_writer(into.name)
        parts, into.parts, into.held = into.parts, [], 0
        for entry in sorted(self._resolved(parts), key=_name):
            into.writer.add(entry)

    def _entry(self, name: bytes, into: _Open) -> _Open | None:
        """Add `name` (in the directory being listed) to it: as an entry, a future, or to
        its batch of small files (stored many to a task); a subdirectory is returned, open
        and listed, to be walked next. Special files are skipped with a warning; a name
        gone since it was listed (removed, a rotated log) is skipped too, named in `gone`."""
        try:
            st = os.stat(name, dir_fd=into.fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            into.gone.append(into.display(name))
            return None
        except OSError as exc:
            raise source_error(into.display(name), exc) from None
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            try:
                return self._opened(into, name, name, st)
            except SourceNotFound:  # removed since (or a file put in its place)
                into.gone.append(into.display(name))
                return None
        if stat.S_ISREG(st.st_mode):
            if st.st_size < self.config.chunk_min:
                into.small.append((name, _kept(st)))
                if len(into.small) >= SMALL_BATCH:
                    self._submit_small(into)
            else:
                self._queue(into, self._files.submit(self._file_task, self._dup(into.fd), name,
                                                     into))
        elif stat.S_ISLNK(st.st_mode):
            try:  # (/proc's links deny even root)
                target = os.readlink(name, dir_fd=into.fd)
            except (FileNotFoundError, NotADirectoryError):
                into.gone.append(into.display(name))
                return None
            except OSError as exc:
                raise source_error(into.display(name), exc, "cannot read the link") from None
            self._count(into, symlinks=1)
            into.parts.append(Entry(name, LINK, mode, 0, st.st_mtime_ns, target=target))
        else:
            log.warning("skipping %s: not a regular file, directory or symlink", into.display(name))
            self.stats.skipped.append(into.display(name))
        return None

    def _submit_small(self, into: _Open) -> None:
        batch, into.small = into.small, []
        self._queue(into, self._smalls.submit(self._small_task, self._dup(into.fd), batch, into))

    def _queue(self, into: _Open, task: Future) -> None:
        """Add a file task to `into`; wait for the oldest unfinished ones while more than
        LOOKAHEAD are (`_store_dirs` bounds those under finished directories; this, those
        of one large directory: 100,000 files queued all of theirs at once)."""
        into.parts.append(task)
        self._queued.append(task)
        while len(self._queued) > LOOKAHEAD:
            self._queued.popleft().result()

    def _dup(self, fd: int) -> int:
        """A descriptor of the directory for one file task, which closes it; those of tasks
        that never ran (a failed push) are closed on exit."""
        dup = os.dup(fd)
        with self._fds_lock:
            self._fds.add(dup)
        return dup

    def _release(self, fd: int) -> None:
        with self._fds_lock:
            self._fds.discard(fd)
        os.close(fd)

    # files --------------------------------------------------------------------------------
    def _small_task(self, dir_fd: int, batch: list[tuple[bytes, _Stat]],
                    where: _Open) -> list[Entry]:
        try:
            return self._small_files(dir_fd, batch, where)
        finally:
            self._release(dir_fd)

    def _file_task(self, dir_fd: int, name: bytes, where: _Open) -> Entry | None:
        try:
            return self._unless_gone(dir_fd, name, where)
        finally:
            self._release(dir_fd)

    def _unless_gone(self, dir_fd: int, name: bytes, where: _Open) -> Entry | None:
        """`_file_entry`, or None for a file gone (removed) before its first read, its path
        added to its directory's `gone`."""
        try:
            return self._file_entry(dir_fd, name, where)
        except SourceNotFound:  # (only a first read's error: a later one keeps the read)
            where.gone.append(where.display(name))
            return None

    def _small_files(self, dir_fd: int, batch: list[tuple[bytes, _Stat]],
                     where: _Open) -> list[Entry]:
        """Store files smaller than one chunk: one read, one blob each, the batch's blobs
        looked up and compressed together (`_store_batch`), stats added once. A file gone
        before it was read is left out, its path added to its directory's `gone`."""
        # by place in batch: files that grew to a chunk or more, cut (None: gone since)
        cut: dict[int, Entry | None] = {}
        contents: list[bytes] = []  # the others' (but empty ones'), in batch order
        sizes: list[int] = []
        stats: list[_Stat] = []  # each file's as read (its mode and mtime are stored)
        fds = self._open_small(dir_fd, batch)
        try:
            for i, (name, st) in enumerate(batch):
                fd, fds[i] = fds[i], None  # `_read_small` closes it
                try:
                    data, read_st = self._read_small(dir_fd, name, fd, st, where)
                except SourceNotFound:  # (a first read's error only) removed since listed
                    where.gone.append(where.display(name))
                    data, read_st, cut[i] = None, st, None
                else:
                    if data is None:  # it grew past one chunk since the walk saw it: cut it
                        cut[i] = self._unless_gone(dir_fd, name, where)
                stats.append(read_st)
                if i in cut:
                    sizes.append(0)
                    continue
                sizes.append(len(data))
                if data:
                    contents.append(data)
        finally:
            for fd in fds:
                if fd is not None:
                    os.close(fd)
        ids = [blob_id(data) for data in contents]
        self._store_later(contents, ids)
        stored = iter(ids)
        del contents
        entries: list[Entry] = []
        files = chunks = total = 0
        verbose = log.isEnabledFor(logging.INFO)  # -v: one line a file
        for i, ((name, _), st) in enumerate(zip(batch, stats, strict=True)):
            if i in cut:  # (counted by `_file_entry`)
                if cut[i] is not None:
                    entries.append(cut[i])
                continue
            size = sizes[i]
            chunk_id = next(stored) if size else b""
            entries.append(Entry(name, FILE, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns,
                                 chunks=chunk_id, sizes=[size] if size else []))
            if verbose:
                log.info("stored %s (%s)", where.display(name), human(size))
            files, chunks, total = files + 1, chunks + bool(size), total + size
        self._count(where, files=files, logical_bytes=total, chunks=chunks)
        self.progress(total)
        return entries

    def _open_small(self, dir_fd: int, batch: list[tuple[bytes, _Stat]]) -> list[int | None]:
        """Open a batch of small files and ask the kernel to read them all at once
        (POSIX_FADV_WILLNEED): the reads then overlap on the disk instead of waiting one by
        one (2,500 small files from a cold cache: 0.16 s read one by one, 0.05 s so)."""
        fds: list[int | None] = []
        for name, _ in batch:
            try:
                fd = os.open(name, OPEN_FILE, dir_fd=dir_fd)
            except OSError:
                fds.append(None)  # `_read_small` opens it again and reports the error
                continue
            try:
                os.posix_fadvise(fd, 0, self.config.chunk_min, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            fds.append(fd)
        return fds

    def _read_small(self, dir_fd: int, name: bytes, fd: int | None, st: _Stat,
                    where: _Open) -> tuple[bytes | None, _Stat]:
        """The content of a file smaller than one chunk (None if it grew to a chunk) and its
        stat as read; reads and closes `fd` (from `_open_small`), or opens `name` if that
        failed. A file that changed while it was read is opened and read again, up to
        READ_ATTEMPTS reads in all; one whose name no longer opens it (renamed, removed) is
        stored as last read. The first read's error is raised (SourceNotFound: gone since the
        walk listed it). The walk's stat `st` is the first read's before: one fstat a file,
        after its read."""
        before: _Stat | None = st
        for attempt in range(READ_ATTEMPTS):
            try:
                got, before, after = self._read_small_once(dir_fd, name, fd, before, where)
            except SourceError:
                if not attempt:
                    raise
                break  # renamed, removed or made unreadable since: the last read stands
            data = got
            if data is None or _unchanged(before, after, len(data)):
                return data, before  # (the same state as after: no stat made of it)
            kept = _kept(after)
            fd = before = None
        self.stats.add_changed(where.display(name), attempt + 1)
        return data, kept

    def _read_small_once(self, dir_fd: int, name: bytes, fd: int | None, before: _Stat | None,
                         where: _Open) -> tuple[bytes | None, _Stat, os.stat_result]:
        """One read of `_read_small`: (content or None, stat before, stat after); `before`
        is taken from the opened file when not given."""
        limit = self.config.chunk_min
        try:
            if fd is None:
                fd = os.open(name, OPEN_FILE, dir_fd=dir_fd)
            try:
                if before is None:
                    before = _kept(os.fstat(fd))
                data = os.read(fd, limit)
                while len(data) < min(before.st_size, limit):  # a short read: read on
                    more = os.read(fd, limit - len(data))
                    if not more:
                        break
                    data += more
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise source_error(where.display(name), exc, "cannot read") from None
        return (None if len(data) == limit else data), before, after

    def _file_entry(self, dir_fd: int, name: bytes, where: _Open) -> Entry:
        """Store a file cut into chunks. One that changed while it was read is read again,
        up to READ_ATTEMPTS times in all (the chunks of a torn read stay unreferenced); one
        whose name no longer opens it (renamed, removed) is stored as last read. The first
        read's error is raised (SourceNotFound: gone since the walk listed it)."""
        read: _Read | None = None
        attempts = 0
        while attempts < READ_ATTEMPTS:
            attempts += 1
            try:
                read = self._read_file(dir_fd, name, where)
            except SourceError:
                if read is None:
                    raise
                break  # renamed, removed or made unreadable since: the last read stands
            if read.unchanged:
                break
        if not read.unchanged:
            self.stats.add_changed(where.display(name), attempts)
        total = sum(read.sizes)
        if log.isEnabledFor(logging.INFO):  # -v: one line a file
            log.info("stored %s (%s, %d chunks)", where.display(name), human(total),
                     len(read.sizes))
        self._count(where, files=1, logical_bytes=total, chunks=len(read.sizes))
        self.progress(total)
        st = read.stat
        return Entry(name, FILE, stat.S_IMODE(st.st_mode), total, st.st_mtime_ns,
                     chunks=read.chunks, sizes=read.sizes,
                     digest=read.digest if len(read.sizes) > 1 else b"")  # else: its chunk id

    def _read_file(self, dir_fd: int, name: bytes, where: _Open) -> _Read:
        """Open `name`, store its chunks and say what was read, between two fstats."""
        ids: list[bytes] = []
        sizes: list[int] = []
        try:
            with open(os.open(name, OPEN_FILE, dir_fd=dir_fd), "rb", buffering=0) as f:
                before = os.fstat(f.fileno())
                holes = _may_have_holes(before)
                # a sparse file's holes are hashed as zeros, up to terabytes of them: in
                # threads (1 TiB: 7 -> 15 GB/s here, the same CPU)
                whole = blake3.blake3(max_threads=blake3.blake3.AUTO if holes else 1)
                for chunk_id, size in self._store_chunks(f, before.st_size, whole, holes):
                    ids.append(chunk_id)
                    sizes.append(size)
                after = os.fstat(f.fileno())
        except OSError as exc:
            raise source_error(where.display(name), exc, "cannot read") from None
        return _Read(b"".join(ids), sizes, whole.digest(), _kept(after),
                     _unchanged(before, after, sum(sizes)))

    def _store_chunks(self, f, size_hint: int, whole, sparse: bool) -> Iterator[tuple[bytes, int]]:
        """Cut `f` into chunks and store them; yield (chunk id, size) in file order. `whole`
        (a blake3 hasher) is given every byte in order, a block at a time in the digest
        thread, as it is read (the file's digest). A `sparse` file's holes are not read
        when its file system says where they are.

        The file is read `READ_BLOCK` at a time into a ring of `RING` buffers and cut in
        place; the chunks go to the hash/compress pool as views, never copied, ~1 MiB per
        task. A buffer is refilled only once every task cut from it is done.

        The cuts are those of FastCDC's stream cutter: a cut depends only on the bytes from
        the chunk's start up to `chunk_max` further (or the end of the file), so a chunk is
        taken from a buffer only when that much of the file is in it, and the rest is carried
        to the next buffer. The stream cutter instead reads 1 MiB at a time, moves what is
        left to the front of its buffer, and its chunks must be copied out before the next
        cut: two copies of every byte that this avoids.
        """
        cutter = self._cutter()
        reach = self.config.chunk_max
        # a chunk cut before the end of what was read, with at least `center` bytes after
        # its start, is cut where the stream cutter cuts it: FastCDC looks no further than
        # the cut, and it switches masks at `center` bytes whenever that many are there.
        # Only the rest is carried over (and cut again): 2.4% of a checkpoint's bytes, was 22%
        center = self.config.chunk_avg
        holes = sparse and self._zeros_cut_at_max()
        # the buffers of this thread's last file (a fresh 5 MiB one is ~1,300 page faults,
        # each page cleared): handed back only by a file read to its end, every task on
        # them done (a failed file's may still be running)
        ring: list[bytearray] = self._local.__dict__.pop("ring", None) or [
            bytearray() for _ in range(RING)]
        window: deque[tuple[int, Future]] = deque()  # (block number, task), in file order
        carry = memoryview(b"")
        size = min(READ_BLOCK, size_hint + 1)  # + 1: a file of the size stat saw ends in one read
        number, eof = 0, False
        while not eof:
            while window and window[0][0] <= number - RING:  # the tasks still on this buffer
                yield from window.popleft()[1].result()
            if len(ring[number % RING]) < len(carry) + size:  # (a carry is under `reach`)
                ring[number % RING] = bytearray(size + reach if size == READ_BLOCK
                                                else len(carry) + size)
            view = memoryview(ring[number % RING])[: len(carry) + size]
            view[: len(carry)] = carry
            filled = len(carry)
            while filled < len(view):
                n = f.readinto(view[filled:])
                if not n:
                    eof = True
                    break
                filled += n
            view = view[:filled]
            if filled > len(carry):  # (in the window: the buffer waits for it too)
                window.append((number, self._digests.submit(_digest_block, whole,
                                                             view[len(carry):])))
            batch: list[memoryview] = []
            batched = start = 0
            for chunk in cutter.cut_buf(view):
                end = chunk.offset + chunk.length
                if not eof and chunk.offset + reach > filled and (
                        end >= filled or filled - chunk.offset < center):
                    break  # this cut could move once more of the file is read
                batch.append(chunk.data)
                batched += chunk.length
                start = chunk.offset + chunk.length
                if batched >= BATCH_BYTES:
                    window.append((number, self._chunks.submit(self._store_batch, batch)))
                    batch, batched = [], 0
                    if len(window) >= self._window:
                        yield from window.popleft()[1].result()
            if batch:
                window.append((number, self._chunks.submit(self._store_batch, batch)))
            carry = view[start:]
            number, size = number + 1, READ_BLOCK
            if holes and not eof:
                at = f.tell() - len(carry)  # where the next chunk starts
                skip = _hole_after(f.fileno(), at) // reach * reach
                if skip:  # every chunk there is `reach` zeros: as reading would cut them
                    while window:  # (the file's chunks are yielded in order)
                        yield from window.popleft()[1].result()
                    yield from self._hole_chunks(skip)
                    _feed_zeros(whole, skip - len(carry))  # (the carry's were read)
                    f.seek(at + skip)
                    carry = memoryview(b"")
        while window:
            yield from window.popleft()[1].result()
        self._local.ring = ring

    def _zeros_cut_at_max(self) -> bool:
        """Whether FastCDC cuts a run of zeros into chunks of exactly `chunk_max` (then the
        chunks of a hole are known without reading it). Checked once, not assumed."""
        known = getattr(self, "_zero_cuts", None)
        if known is None:
            reach = self.config.chunk_max
            cuts = [c.length for c in self._cutter().cut_buf(bytes(3 * reach))]
            known = self._zero_cuts = cuts == [reach] * 3
        return known

    def _hole_chunks(self, size: int) -> Iterator[tuple[bytes, int]]:
        """The chunks of `size` bytes of a hole (a multiple of `chunk_max`): the same chunk
        of zeros each time, stored once."""
        reach = self.config.chunk_max
        zero_id, _ = self._store_chunk(bytes(reach))
        for _ in range(size // reach):
            yield zero_id, reach

    def _store_later(self, contents: list[bytes], ids: list[bytes]) -> None:
        """Store a batch of small files' blobs (`ids` of `contents`) in a thread of their
        own; `_stored` waits for them. The small files' thread is the last one busy at the
        end of a push: it reads and names them, and leaves the compression (~40% of its
        time) to a core that is free by then. At most `LATER` batches wait."""
        with self._later_lock:
            while len(self._later) >= LATER:
                self._later.popleft().result()
            self._later.append(self._blobs.submit(self._store_batch, contents, ids))

    def _stored(self) -> None:
        """Wait until every batch of `_store_later` is stored (raise the error of one that
        failed)."""
        with self._later_lock:
            while self._later:
                self._later.popleft().result()

    def _store_batch(self, batch: list[bytes | memoryview],
                     ids: list[bytes] | None = None) -> list[tuple[bytes, int]]:
        """Store chunks (a block's, or a batch of small files' with their `ids`); (chunk id,
        size) of each. The index is asked once and the new ones compressed in one call
        (`encode_many`): a GIL hand-off per batch, not three per chunk."""
        if ids is None:
            ids = [blob_id(data) for data in batch]
        known = self.sink.known_many(ids)
        new: list[int] = []
        seen: set[bytes] = set()
        for i, chunk_id in enumerate(ids):
            if not known[i] and chunk_id not in seen:  # (the same content twice: one blob)
                seen.add(chunk_id)
                new.append(i)
        encoded = codec.encode_many([batch[i] for i in new], self.config.zstd_level)
        added = 0
        for i, (codec_id, stored) in zip(new, encoded, strict=True):
            added += self.sink.add(CHUNK, ids[i], codec_id, stored, len(batch[i]))
        if added:
            self.stats.add(new_chunks=added)
        return [(chunk_id, len(data)) for chunk_id, data in zip(ids, batch, strict=True)]

    def _cutter(self) -> pyfastcdc.FastCDC:
        cutter = getattr(self._local, "cutter", None)
        if cutter is None:
            c = self.config
            cutter = pyfastcdc.FastCDC(c.chunk_avg, min_size=c.chunk_min, max_size=c.chunk_max)
            self._local.cutter = cutter
        return cutter

    def _store_chunk(self, data: bytes | memoryview) -> tuple[bytes, int]:
        chunk_id = blob_id(data)
        self._store_blob(CHUNK, chunk_id, data)
        return chunk_id, len(data)

    def _store_blob(self, kind: int, blob: bytes, data: bytes | memoryview) -> None:
        if self.sink.known(blob):
            return
        codec_id, stored = codec.encode(data, self.config.zstd_level)
        if self.sink.add(kind, blob, codec_id, stored, len(data)) and kind == CHUNK:
            self.stats.add(new_chunks=1)
