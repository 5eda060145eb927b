"""Copy a node of the namespace to local disk: the engine behind `cp` and `pull`.

Files are written in parallel, each as an unnamed file in its final directory (O_TMPFILE)
that gets its name (linkat) only once its bytes, mode and mtime are all set; where the
filesystem has no O_TMPFILE, under a temp name renamed into place. Either way an
interrupted copy never leaves a half-written file under a real name, and a killed one
leaves no temp file either where O_TMPFILE works. An unnamed file spares the kernel the
directory lock while it allocates the inode, so one directory's files are created in
parallel, and needs no rename; mode and mtime are set through the fd, not the path (an
unnamed file whose mode the umask lets through is created with it: no fchmod). Small files
go in batches to one thread, their chunks read first in a few reads of neighbouring blobs;
a directory's copy from a local store sends them to a process of its own instead, which
writes them with this code (c3fs/jobs/copyproc.py: the copy's critical path, on a core of
its own).
Modes (without setuid, setgid and sticky bits unless asked), mtimes and symlinks are
restored; links are created, never followed. A directory on the
way that is a symlink or a file is an error, never written through. A file whose size and
mtime already match is skipped, so a copy run again fetches only what is missing or changed
(rsync's quick check, which `c3fs cp` promises). Where the caller knows the
destination holds a copy of other content (`pull` of a job re-created since it was pulled
there: same size and mtime say nothing then), `check_content` makes such a file skipped only
if its bytes match too, each chunk's blake3 against the chunk's id (`same_content`).
A fifo or device already at a file's destination is opened and written into, as `cp` does
(`c3fs cp x /dev/null`), never replaced; a socket there is an error.

Destinations, like `cp`: the path the user names (DEST of `cp`; not `pull`'s DEST/<job id>,
which c3fs names) is followed when it is a symlink: to a directory, a directory's copy goes into the directory
it points to; to a fifo or device, a file's copy is written into it (`cp FILE /dev/stdout`
keeps the /dev/stdout link); to a file, that file is written in place; a dangling one is an
error. Inside a directory's copy no symlink is ever followed: a link where a file belongs is
replaced, a link where a directory belongs is an error, so nothing is written outside DEST.
An existing file that has other hard links, or another owner, is written in place (as `cp`
does): its inode, owner, mode and other links stay, only its bytes and mtime change. Its
bytes are staged first and copied in only once complete and verified, so damaged data never
reaches it either (an interrupted copy-in may leave it half-written, as with `cp`). A
destination on a read-only file system, or inside a c3fs mount, is one error (exit 4).

A directory's copy goes on past damaged data: a file (or directory) that cannot be read is
left out, with one log line naming it, every other file is copied, every directory gets its
mode and mtime, and the copy then fails with one `CopyIncomplete` counting what was left out.
A copy of one file fails at once. A store that does not answer stops the copy.

A chunk met again (the steps of a checkpoint series share most of theirs) is read back from
where this copy already wrote it and verified against its id, instead of being fetched and
decompressed again (`_Reuse`); bytes that do not match are fetched as usual.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from c3fs.errors import BlobUnavailable, DataError, DestinationError, FormatError, one_line
from c3fs.fsutil import count, human, shortened, write_all
from c3fs.jobs.copyproc import Writer
from c3fs.objects.ids import blob_id, token_hex
from c3fs.objects.tree import DIR, FILE, LINK, Entry
from c3fs.reader import FileReader
from c3fs.vfs import Node, Vfs

log = logging.getLogger(__name__)
TMP = b".c3fs-tmp."
SMALL_FILE = 1024 * 1024  # files up to this size are written in batches
SMALL_BATCH = 64
FORK_AFTER = 4  # full batches of small files written by the thread before a process is forked
BATCH_READ = 64 * 1024  # a batch's files up to this size are read at once (at most 4 MiB)
PART = 16 * 1024 * 1024  # a bigger file is written in parts of about this size, in parallel
PENDING = 256  # tasks queued ahead of the writers (a batch of small files is one): the walk
# waits for the oldest beyond that, so a million files are never all queued (as nodes) at once
SOURCES = 16  # big files whose chunks later files may read back (fds held until the end)


class _Window:
    """The futures of queued work, at most `limit` of them not yet done: `append` waits for
    the oldest beyond that, so the walk streams. Failures are raised by `wait_all`, once
    every task has ended (a big file's parts all run: the last one cleans up)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: deque[Future] = deque()
        self._failed: list[Future] = []

    def append(self, future: Future) -> None:
        items = self._items
        items.append(future)
        while items and (items[0].done() or len(items) > self.limit):
            done = items.popleft()
            if done.exception() is not None:  # (waits for it first)
                self._failed.append(done)

    def wait_all(self) -> None:
        """Wait for every task; raise what the first failed one (in order) raised."""
        for future in self._items:
            if future.exception() is not None:
                self._failed.append(future)
        self._items.clear()
        if self._failed:
            self._failed[0].result()


class _Lanes:
    """How many big-file tasks may run at once while small files are queued: one core is
    the small files' thread's, the big files share the rest (at least one task). Otherwise
    every worker runs. The small files' thread is then the copy's critical path: its time
    is Python and short system calls, and with every big-file worker runnable too (4 on 2
    cores) the scheduler gave it ~35% of a core, so it ran on alone for the last ~40% of a
    pull. A pull of the bench's dataset, cold, 2 cores: 2.12 -> 1.805 s median, 8 pairs,
    the same CPU (bench/README.md). Only a local store's copies: a remote one's tasks
    wait on the network."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._running = 0
        self._smalls = 0  # small-file batches queued or running
        self._cond = threading.Condition(threading.Lock())

    def small_queued(self, future: Future) -> None:
        """Count a queued batch of small files until it ends (or is cancelled)."""
        with self._cond:
            self._smalls += 1
        future.add_done_callback(self._small_done)

    def _small_done(self, _future: Future) -> None:
        with self._cond:
            self._smalls -= 1
            if not self._smalls:
                self._cond.notify_all()

    @contextlib.contextmanager
    def big(self) -> Iterator[None]:
        """Run one big-file task: wait while small files are queued and `limit` run."""
        with self._cond:
            while self._smalls and self._running >= self._limit:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify()


class CopyIncomplete(DataError):
    """A directory's copy left out damaged files or directories (each logged when met);
    everything else was copied. `stats` says what."""

    def __init__(self, message: str, stats: CopyStats) -> None:
        super().__init__(message)
        self.stats = stats


@dataclass
class CopyStats:
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    reused: int = 0  # bytes read back from what this copy wrote instead of fetched again
    dirs: int = 0
    links: int = 0
    errors: list[str] = field(default_factory=list)  # one per damaged file or dir left out
    damaged_dirs: int = 0


class Copier:
    def __init__(self, vfs: Vfs, workers: int = 4, progress: Callable[[int], None] | None = None,
                 keep_setuid: bool = False, check_content: bool = False,
                 files_done: Callable[[int], None] | None = None, fork: bool = False):
        """`progress(n)`: n more bytes copied or found unchanged; `files_done(1)`: one more
        file. `keep_setuid`: give files and directories the setuid, setgid and sticky bits the
        store says (by default they are dropped: a store is untrusted, as a tarball is to
        `tar` without --same-permissions). `check_content`: a file already there with the
        same size and mtime is skipped only if its bytes are the same too (see the module
        doc); by default size and mtime decide. `fork`: a directory's small files may be
        written by a process of its own (`copyproc`): the CLI's copies, whose process is
        c3fs's; a library never forks inside its caller's program (its threads, its fork
        handlers, its open files)."""
        self.fork = fork
        self.vfs = vfs
        self.check_content = check_content
        self.mode_mask = 0o7777 if keep_setuid else 0o777
        self.workers = workers
        self.progress = progress or (lambda n: None)
        self.files_done = files_done or (lambda n: None)
        self.stats = CopyStats()
        self._small: list[tuple[Node, bytes]] = []
        self._stats_lock = threading.Lock()
        self._proc_fds: int | None = None
        self._big_slots = threading.BoundedSemaphore(2 * workers)
        self._lanes = _Lanes(max(1, len(os.sched_getaffinity(0)) - 1)
                             if not vfs.repo.blobs.remote else workers)
        self._reuse = _Reuse()
        self._tree = False  # copying a directory: damaged data is left out, the rest copied
        self._in_place: set[bytes] = set()  # files written in place (`_write_in_place`)
        self._umask = _umask()
        self._acl_dirs: set[bytes] = set()  # directories whose default ACL, not the umask,
        # sets a new file's mode (`_creation_mode`)
        self._far = None  # the process that writes small files too (`copyproc`)
        self._may_fork = False

    def copy(self, node: Node, dest: str | os.PathLike, follow: bool = True) -> CopyStats:
        """Copy `node` to `dest`: a file to that path, a directory's contents into that dir.
        `dest` is followed if it is a symlink (`follow`: the user named it, see the module
        doc), else treated like a path inside a directory's copy. Raises `CopyIncomplete`
        once the rest is copied if a directory's copy left anything out; damaged data in a
        copy of one file raises at once."""
        named = os.fsencode(dest)
        target = _named_target(named, node.kind) if follow else named
        if node.kind == FILE and target != named:  # a symlink to a file: written through
            self._in_place.add(target)
        parent = os.path.dirname(os.path.normpath(target)) or b"."
        check_destination(target)
        _make_parents(parent, create=node.kind == DIR)
        if node.kind != DIR and _default_acl(parent):
            self._acl_dirs.add(parent)
        found = None if node.kind == DIR else _existing(target, follow=follow)
        into_special = found is not None and _is_special(found)
        self._proc_fds = None if into_special else _open_proc_fds(parent)  # no probe in /dev
        self._tree = node.kind == DIR
        try:
            self._copy_all(node, target, found)
        except BlobUnavailable as exc:
            if self._tree:  # say how far the copy got, and that a re-run goes on from there
                exc.args = (f"{exc.args[0]}; the copy stopped after "
                            f"{count(self.stats.files, 'file')}: run it again once the store "
                            "answers (it fetches only what is missing)",)
            raise
        finally:
            self.stats.reused = self._reuse.close()
            if self._proc_fds is not None:
                os.close(self._proc_fds)
        if self.stats.errors:
            raise CopyIncomplete(self._left_out(node), self.stats)
        return self.stats

    def copy_to(self, node: Node, fd: int) -> CopyStats:
        """Write a file's bytes to the open `fd` (stdout, for `c3fs cp FILE -`). A reader
        that goes away (BrokenPipeError) ends the copy quietly: the caller decides."""
        if node.kind != FILE:
            what = "a directory" if node.kind == DIR else "a symlink"
            raise DestinationError(f"{one_line(node.display)} is {what}: only a file can be "
                                   "written to stdout (-)")
        try:
            with _named_errors(node, b"stdout", passing=BrokenPipeError):
                self._stream(node, fd)
        finally:
            self.stats.reused = self._reuse.close()
        self._count(node)
        return self.stats

    def _copy_all(self, node: Node, target: bytes, found: os.stat_result | None) -> None:
        dirs: list[tuple[bytes, Node]] = []
        self._far = None
        self._may_fork = self.fork and node.kind == DIR  # after FORK_AFTER full batches
        self._batches = 0
        try:
            with (ThreadPoolExecutor(1, thread_name_prefix="c3fs-cp-small") as self._smalls,
                  ThreadPoolExecutor(1, thread_name_prefix="c3fs-cp-far") as self._fars,
                  ThreadPoolExecutor(self.workers, thread_name_prefix="c3fs-cp") as self._bigs):
                futures = _Window(PENDING)
                if node.kind == DIR:
                    self._copy_dir(node, target, futures, dirs)
                else:
                    self._copy_leaf(node, target, False, futures, found)
                self._flush_small(futures)
                futures.wait_all()
        except BaseException:  # every task has ended: the directories still get their modes
            if self._far is not None:
                self._far.close(kill=True)
            _finish_dirs(dirs, self._mode, strict=False)
            raise
        if self._far is not None:
            self._far.close()
        _finish_dirs(dirs, self._mode, strict=True)

    def _copy_dir(self, node: Node, path: bytes, futures, dirs) -> None:
        """Copy a directory and everything below it, depth first, with a stack (a crafted
        tree may be deeper than Python's recursion limit)."""
        stack = [(node, path)]
        while stack:
            node, path = stack.pop()
            stack.extend(reversed(self._copy_one_dir(node, path, futures, dirs)))

    def _copy_one_dir(self, node: Node, path: bytes, futures, dirs) -> list[tuple[Node, bytes]]:
        """Make one directory and copy its files and links; return its subdirectories."""
        try:
            # the tree is read now, nodes made lazily; a copy reads each tree once
            children = self.vfs.iter_children(node, keep=False)
        except (DataError, FormatError) as exc:
            error = exc.reading(node.display)
            if dirs and self._damaged(error):  # below the copy's root: left out, not made
                self.stats.damaged_dirs += 1
                return []
            raise error from None
        fresh = _make_dir(path)  # a directory made just now holds nothing to skip or replace
        if _default_acl(path):
            self._acl_dirs.add(path)
        dirs.append((path, node))
        self.stats.dirs += 1
        subdirs = []
        for name, child in children:
            child_path = os.path.join(path, name)
            if child.kind == DIR:
                subdirs.append((child, child_path))
            else:
                self._copy_leaf(child, child_path, fresh, futures)
        return subdirs

    def _copy_leaf(self, node: Node, path: bytes, fresh: bool, futures,
                   found: os.stat_result | None = None) -> None:
        """`found`: what the user-named destination of a file's copy is (followed)."""
        if node.kind == LINK:
            _place_link(self.vfs.readlink(node), path, node.mtime_ns)
            self.stats.links += 1
            log.info("linked %s", node.display)
        elif node.kind == FILE:
            if found is None and not fresh:
                found = _existing(path)
            if found is not None and _is_special(found):
                futures.append(self._bigs.submit(self._write_into, node, path))  # may block
                return
            if found is not None and _unchanged(found, node):
                if self.check_content:  # read and hashed in a worker, not on this walk
                    futures.append(self._bigs.submit(self._compare_or_write, node, path,
                                                     found))
                    return
                self._skipped(node)
                return
            if found is not None and _write_in_place(found):
                self._in_place.add(path)
            if node.size > SMALL_FILE:
                self._submit_big(node, path, futures)
                return
            self._small.append((node, path))
            if len(self._small) >= SMALL_BATCH:
                self._flush_small(futures)

    def _skipped(self, node: Node) -> None:
        with self._stats_lock:
            self.stats.skipped += 1
        log.info("unchanged %s", node.display)
        self.progress(node.size)
        self.files_done(1)

    def _compare_or_write(self, node: Node, path: bytes, found: os.stat_result) -> None:
        """A file with the node's size and mtime where another job's may be (`check_content`):
        left as it is if its bytes are the node's, else written (whole, by this worker: a
        re-created job's changed file is rare)."""
        if same_content(path, node.entry):
            self._skipped(node)
            return
        if _write_in_place(found):
            self._in_place.add(path)
        self._write_file(node, path)

    def _flush_small(self, futures) -> None:
        """Small files go in batches to one thread of their own: one task, one hand-off, for
        many. Their cost is Python and short system calls, each of which hands the GIL over
        when another thread waits for it; with the small files spread over 4 threads, a
        third of the copy's CPU went to those hand-offs (futex wake-ups and context
        switches). The whole dataset, cold: 2.1-2.3 s with 4 threads for every file,
        1.5-1.9 s with this one for small files and 4 for the parts of big files, which
        mostly decompress and hash without the GIL. A process has a GIL of its own: where
        the copy has one (`copyproc`), the batch goes there, and only the files it cannot
        take, or leaves, to the thread. It is forked once FORK_AFTER full batches went to
        the thread: a copy of a few hundred files (each job of a pull of many small jobs)
        forks nothing."""
        if self._may_fork and len(self._small) >= SMALL_BATCH:
            self._batches += 1
            if self._batches > FORK_AFTER:
                self._may_fork = False
                self._far = Writer.start(self, self._proc_fds is not None)
        if self._small and self._far is not None:
            self._send_far(futures)
        if self._small:
            self._fetch_ahead([c for node, _ in self._small for c in node.entry.chunk_ids()],
                              first=True)
            future = self._smalls.submit(self._write_files, self._small)
            self._lanes.small_queued(future)
            futures.append(future)
            self._small = []

    def _send_far(self, futures) -> None:
        """Send the batch's files to the process that writes small files too (`copyproc`),
        with where their chunks lie; those written in place, or with a hole, stay here."""
        holes, in_place = self.vfs.repo.blobs.holes, self._in_place
        far, near, files = [], [], []
        chunk_ids: list[bytes] = []
        for node, path in self._small:
            entry = node.entry
            ids = entry.chunk_ids()
            if path in in_place or any(map(holes.is_hole, ids, entry.sizes)):
                near.append((node, path))
                continue
            far.append((node, path))
            files.append((path, entry, self._creation_mode(node, path)))
            chunk_ids += ids
        where = self.vfs.repo.blobs.locate(chunk_ids)
        if not far or not self._far.send(files, where):  # (gone: written here)
            return
        future = self._fars.submit(self._far_done, far)
        self._lanes.small_queued(future)
        futures.append(future)
        self._small = near

    def _far_done(self, batch: list[tuple[Node, bytes]]) -> None:
        """Count the files the other process wrote; write those it left, here."""
        left = set(self._far.answer(len(batch)))
        for i, (node, _) in enumerate(batch):
            if i not in left:
                self.progress(node.size)
                self._count(node)
        if left:
            self._write_files([batch[i] for i in sorted(left)])

    def _submit_big(self, node: Node, path: bytes, futures) -> None:
        """A big file is cut into parts that several workers write at once (pwrite)."""
        reader = self._open(node)
        parts = _parts(reader.starts, PART)
        if len(parts) == 1:
            self._fetch_ahead(reader.ids)
            futures.append(self._bigs.submit(self._write_big_file, node, path))
            return
        self._big_slots.acquire()  # bounds open fds and queued work; the last part releases it
        big = _BigFile(node, path, len(parts), self._proc_fds, self._reuse,
                       path in self._in_place, self._creation_mode(node, path))
        for first, stop in parts:
            futures.append(self._bigs.submit(self._write_part, big, reader, first, stop))

    def _write_files(self, batch: list[tuple[Node, bytes]]) -> None:
        """A batch of small files; the chunks of those up to BATCH_READ bytes are read at
        once first (`BlobSource.get_many`: a local store), at most 4 MiB of them."""
        got = self.vfs.repo.blobs.get_many(
            [c for node, _ in batch if node.size <= BATCH_READ for c in node.entry.chunk_ids()])
        for node, path in batch:
            self._write_file(node, path, got)

    def _write_big_file(self, node: Node, path: bytes) -> None:
        with self._lanes.big():
            self._write_file(node, path)

    def _write_file(self, node: Node, path: bytes, got: dict[bytes, bytes] | None = None) -> None:
        """`got`: chunks read already (`_write_files`)."""
        try:
            self._write_new(node, path, got, self._creation_mode(node, path))
        except BaseException as exc:
            if self._damaged(exc):
                return
            raise
        self._count(node)

    def _write_new(self, node: Node, path: bytes, got: dict[bytes, bytes] | None,
                   mode: int | None) -> None:
        """Write a file whole, named only once complete (`_Staged`, created with `mode`): if
        anything fails, nothing is left and the error is raised, naming the file."""
        staged = None
        try:
            with _named_errors(node, path):
                staged = _Staged(path, self._proc_fds, path in self._in_place, mode)
                reader = self._open(node, got)
                holes = False
                for i in range(len(reader.ids)):
                    if hole := self._hole(reader, i):
                        os.lseek(staged.fd, hole, os.SEEK_CUR)
                        holes = True
                        self.progress(hole)
                        continue
                    data = self._chunk(reader, i)
                    write_all(staged.fd, data)
                    self.progress(len(data))
                if holes:  # (one at the end: the file is as long as its last write)
                    os.ftruncate(staged.fd, node.size)
                staged.commit(self._mode(node), node.mtime_ns)
        except BaseException:  # never a partial file under the real name
            _discard(staged)
            raise

    def _write_into(self, node: Node, path: bytes) -> None:
        """Write into the fifo or device at `path` (a fifo: once a reader opens it). Its
        mode and mtime stay its own; bytes written before damaged data are not taken back."""
        flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
        if self._tree:  # a symlink the user named (`/dev/stdout`) is followed; none inside
            flags |= os.O_NOFOLLOW
        try:
            with _named_errors(node, path):
                fd = os.open(path, flags)
                try:
                    self._stream(node, fd)
                finally:
                    os.close(fd)
        except BaseException as exc:
            if self._damaged(exc):
                return
            raise
        self._count(node)

    def _stream(self, node: Node, fd: int) -> None:
        reader = self._open(node)
        for i in range(len(reader.ids)):
            data = self._chunk(reader, i)
            write_all(fd, data)
            self.progress(len(data))

    def _fetch_ahead(self, chunk_ids: list[bytes], first: bool = False) -> None:
        """A remote store: these chunks in merged ranged GETs, many at once, ahead of the
        writers (those this copy wrote already are read back instead, see `_Reuse`).
        `first`: a batch of small files, fetched before the big files' parts asked for
        earlier (one thread writes every small file: it must not wait behind them)."""
        if self.vfs.repo.blobs.remote:
            self.vfs.repo.blobs.prefetch(chunk_ids, skip=self._reuse.has, keep=False,
                                         first=first)

    def _write_part(self, big: _BigFile, reader: FileReader, first: int, stop: int) -> None:
        self._fetch_ahead(reader.ids[first : stop + (stop - first)])  # this part and the next
        try:
            with self._lanes.big(), _named_errors(big.node, big.path):
                fd = big.open()
                for i in range(first, stop) if fd is not None else ():
                    if hole := self._hole(reader, i):
                        self.progress(hole)
                        continue
                    data = self._chunk(reader, i)
                    _pwrite_all(fd, data, reader.starts[i])
                    if big.source:  # written: later files may read this chunk back
                        self._reuse.add(reader.ids[i], big.staged, reader.starts[i], len(data))
                    self.progress(len(data))
        except BaseException as exc:
            first = big.fail()
            self._end_part(big)
            if self._damaged(exc) if first else self._is_damage(exc):  # one line per file
                return
            raise
        self._end_part(big)

    def _open(self, node: Node, got: dict[bytes, bytes] | None = None) -> FileReader:
        """A reader whose chunks are read back from this copy's output where it wrote them
        already, else fetched and not kept in the LRU (a copy reads each chunk once).
        `got`: chunks read already, taken from there first."""
        reuse = self._reuse.get
        if got:
            def reuse(chunk_id: bytes, again=reuse) -> bytes | None:
                data = got.get(chunk_id)
                return again(chunk_id) if data is None else data
        return self.vfs.open(node, readahead=0, remember=False, reuse=reuse)

    def _chunk(self, reader: FileReader, i: int) -> bytes:
        return reader.chunk(i)

    @staticmethod
    def _hole(reader: FileReader, i: int) -> int:
        """The size of chunk `i` if it is a hole (c3fs/reader/holes.py), else 0. Such a
        chunk is neither fetched nor written: the copy keeps a hole there, so a sparse file
        pulled takes the disk its data takes (a 1 TiB one took 1 TiB)."""
        return reader.hole(i)

    def _end_part(self, big: _BigFile) -> None:
        """The last part to end names the file, or drops it if any part failed."""
        if not big.part_done():
            return
        self._big_slots.release()
        if big.failed:
            _discard(big.staged)
            return
        try:
            with _named_errors(big.node, big.path):
                os.ftruncate(big.staged.fd, big.node.size)  # a hole at its end is not written
                big.staged.commit(self._mode(big.node), big.node.mtime_ns)
        except BaseException:
            _discard(big.staged)
            raise
        self._count(big.node)

    def _mode(self, node: Node) -> int:
        return node.mode & self.mode_mask

    def _creation_mode(self, node: Node, path: bytes) -> int | None:
        """The mode to create `path`'s staged file with when the kernel then gives it its
        final mode, so that no fchmod is needed (`_Staged`); else None. The kernel applies
        the umask (or the directory's default ACL, which then decides) to the mode a file
        is created with and never drops a permission bit the umask lets through; setuid,
        setgid and sticky are set by fchmod."""
        mode = node.mode & self.mode_mask
        if mode & ~0o777 or mode & self._umask or (
                self._acl_dirs and os.path.dirname(path) in self._acl_dirs):
            return None
        return mode

    def _count(self, node: Node) -> None:
        with self._stats_lock:
            self.stats.files += 1
            self.stats.bytes += node.size
        self.files_done(1)
        if log.isEnabledFor(logging.INFO):  # -v: one line a file
            log.info("copied %s (%s)", node.display, human(node.size))

    def _is_damage(self, exc: BaseException) -> bool:
        """Damaged or missing data met in a directory's copy (not a store that did not
        answer, not a destination that refused: those stop the copy)."""
        return (self._tree and isinstance(exc, (DataError, FormatError))
                and not isinstance(exc, BlobUnavailable))

    def _damaged(self, exc: BaseException) -> bool:
        """If `exc` is damage, log its one line naming the file, count it, and return True:
        the copy goes on without that file; else False (the caller raises it)."""
        if not self._is_damage(exc):
            return False
        log.error("%s", one_line(str(exc)))
        with self._stats_lock:
            self.stats.errors.append(str(exc))
        return True

    def _left_out(self, node: Node) -> str:
        dirs = self.stats.damaged_dirs
        files = len(self.stats.errors) - dirs
        what = " and ".join(count(n, noun) for n, noun in (
            (files, "damaged file"), (dirs, "damaged directory")) if n)
        return (f"{one_line(node.display)}: {what} not copied (each named above); "
                f"{self.stats.files} other files copied, {self.stats.skipped} unchanged")


class _BigFile:
    """One big file written in parts by several workers: staged by the first part to start
    (so a queued file holds no fd), named by the last to end."""

    def __init__(self, node: Node, path: bytes, parts: int, proc_fds: int | None,
                 reuse: _Reuse, in_place: bool = False, mode: int | None = None) -> None:
        self.node, self.path, self.proc_fds = node, path, proc_fds
        self.in_place = in_place
        self.mode = mode
        self.reuse = reuse
        self.staged: _Staged | None = None
        self.source = False  # its chunks are offered to later files (`_Reuse`)
        self.failed = False
        self._left = parts
        self._lock = threading.Lock()

    def fail(self) -> bool:
        """Mark the file failed (it will not be named); True for the first part to fail."""
        with self._lock:
            first, self.failed = not self.failed, True
            return first

    def open(self) -> int | None:
        """The staged file's fd; None once a part has failed (the rest need not write)."""
        with self._lock:
            if self.staged is None and not self.failed:
                self.staged = _Staged(self.path, self.proc_fds, self.in_place, self.mode)
                self.source = self.reuse.adopt(self.staged)
            return None if self.failed else self.staged.fd

    def part_done(self) -> bool:
        """True for the last part to end."""
        with self._lock:
            self._left -= 1
            return self._left == 0


class _Staged:
    """A file being written where no one sees it: unnamed (O_TMPFILE) in its final directory
    when the filesystem and /proc allow, else under a temp name beside its final name.
    `commit` sets mode and mtime through the fd and only then names it; `in_place`: it
    copies the bytes into the existing file at `path` instead (`_write_in_place`). `mode`:
    an unnamed file is created with it, the mode it must end with (`_creation_mode`), and
    needs no fchmod: one system call less a file (a file under a temp name is visible, and
    is made 0600 whatever `mode`)."""

    def __init__(self, path: bytes, proc_fds: int | None, in_place: bool = False,
                 mode: int | None = None) -> None:
        self.path = path
        self.proc_fds = proc_fds
        self.in_place = in_place
        self.tmp: bytes | None = None
        self.kept = -1  # the fd, held open past commit/discard for `_Reuse` (see `keep`)
        self.fd = None
        if proc_fds is not None:
            self.fd = _open_unnamed(path, 0o600 if mode is None or in_place else mode)
        self.moded = self.fd is not None and mode is not None and not in_place
        if self.fd is None:
            self.tmp = _temp_name(path)
            self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def keep(self) -> None:
        """Hold the fd open after commit or discard, until `release` (it stays readable)."""
        self.kept = self.fd

    def release(self) -> None:
        fd, self.kept = self.kept, -1
        if fd >= 0:
            if fd == self.fd:  # never committed nor discarded: abandoned with the copy
                self.fd = -1
            os.close(fd)

    def commit(self, mode: int, mtime_ns: int) -> None:
        if self.in_place:
            _copy_in(self.fd, self.path, mtime_ns)
            self.discard()
            return
        if not self.moded:
            os.fchmod(self.fd, mode)
        os.utime(self.fd, ns=(mtime_ns, mtime_ns))  # after the last write, which sets mtime
        if self.tmp is None:
            self._link()
        else:
            os.rename(self.tmp, self.path)
            self.tmp = None
        self._close()

    def _link(self) -> None:
        """Name the unnamed file; a file or symlink in the way is replaced atomically."""
        fd_name = str(self.fd).encode()
        try:
            os.link(fd_name, self.path, src_dir_fd=self.proc_fds)  # linkat(AT_SYMLINK_FOLLOW)
        except FileExistsError:
            self.tmp = _temp_name(self.path)
            os.link(fd_name, self.tmp, src_dir_fd=self.proc_fds)
            os.rename(self.tmp, self.path)  # replaces whatever was there; never follows it
            self.tmp = None

    def discard(self) -> None:
        try:
            self._close()  # an unnamed file vanishes with its last fd
        finally:
            if self.tmp is not None:
                _unlink(self.tmp)

    def _close(self) -> None:
        fd, self.fd = self.fd, -1  # never closed twice, even when close() fails
        if fd >= 0 and fd != self.kept:
            os.close(fd)


class _Reuse:
    """Where this copy wrote each chunk of its first SOURCES big files, so that a later file
    holding the same chunk reads it back (page cache) instead of fetching and decompressing
    it again. What is read back is verified against the chunk id (blake3), so bytes changed
    under us, or a source that failed, only cost the usual fetch. Thread-safe."""

    def __init__(self, limit: int = SOURCES) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._where: dict[bytes, tuple[_Staged, int, int]] = {}
        self._sources: list[_Staged] = []
        self._reused = 0

    def adopt(self, staged: _Staged) -> bool:
        """Offer `staged`'s chunks to later files; its fd then stays open until `close`."""
        with self._lock:
            if len(self._sources) >= self.limit:
                return False
            staged.keep()
            self._sources.append(staged)
            return True

    def add(self, chunk_id: bytes, staged: _Staged, offset: int, length: int) -> None:
        """`chunk_id` is now written at `offset` of `staged`'s file (after the write)."""
        with self._lock:
            self._where.setdefault(chunk_id, (staged, offset, length))

    def has(self, chunk_id: bytes) -> bool:
        return chunk_id in self._where

    def get(self, chunk_id: bytes) -> bytes | None:
        with self._lock:
            found = self._where.get(chunk_id)
        if found is None:
            return None
        staged, offset, length = found
        try:
            data = os.pread(staged.kept, length, offset)
        except OSError:
            return None
        if len(data) != length or blob_id(data) != chunk_id:
            return None
        with self._lock:
            self._reused += length
        return data

    def close(self) -> int:
        """Close the sources' fds; return how many bytes were read back."""
        with self._lock:
            sources, self._sources, self._where = self._sources, [], {}
        for staged in sources:
            staged.release()
        return self._reused


def _discard(staged: _Staged | None) -> None:
    if staged is not None:
        staged.discard()


def _open_proc_fds(probe_dir: bytes) -> int | None:
    """/proc/self/fd, through which linkat names an O_TMPFILE file (unprivileged), once a
    probe file made that way in `probe_dir` got a name; else None, and files are written
    under temp names (no /proc, or a filesystem that refuses one of the two)."""
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        proc_fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    probe = _temp_name(os.path.join(probe_dir, b"probe"))
    try:
        fd = os.open(probe_dir, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            os.link(str(fd).encode(), probe, src_dir_fd=proc_fds)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError:
        os.close(proc_fds)
        return None
    return proc_fds


def _open_unnamed(path: bytes, mode: int = 0o600) -> int | None:
    """An O_TMPFILE fd in `path`'s directory, or None where the filesystem has none."""
    parent = os.path.dirname(path) or b"."
    try:
        return os.open(parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None
        raise


def _umask() -> int:
    """This process's umask, read without changing it (/proc, Linux 4.7+); where it cannot
    be read, 0o777: no file is then created with its final mode (every one gets fchmod)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o777


def _default_acl(directory: bytes) -> bool:
    """Whether `directory` has a default ACL (new files then get their mode from it, not
    from the umask); a file system without ACLs has none."""
    try:
        os.getxattr(directory, "system.posix_acl_default")
    except OSError as exc:  # none, or no ACLs here; anything else: assume there is one
        return exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP)
    return True


def _temp_name(path: bytes) -> bytes:
    parent, name = os.path.split(path)
    return os.path.join(parent, TMP + name[:100] + b"." + token_hex(4).encode())


def _named_target(target: bytes, kind: int) -> bytes:
    """The destination the user named, followed as `cp` follows it (see the module doc): a
    symlink to a directory (a directory's copy) or to a file becomes the path it points to;
    one to a fifo or device stays (opened through it); a dangling one is an error."""
    if kind == LINK or not os.path.islink(target):  # a link's copy replaces what is there
        return target
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise DestinationError(f"{os.fsdecode(target)} is a symlink to nothing "
                               f"({os.fsdecode(os.readlink(target))}): not written through") from None
    except OSError as exc:
        raise DestinationError(f"{os.fsdecode(target)}: {exc.strerror}") from None
    if kind == DIR and not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"{os.fsdecode(target)} exists and is not a directory")
    if kind == DIR or stat.S_ISREG(st.st_mode):
        return os.fsencode(os.path.realpath(target))
    return target


def check_destination(target: bytes) -> None:
    """Refuse, in one line, a destination inside a c3fs mount or on a read-only file system
    (checked on the nearest part of `target` that exists)."""
    from c3fs.fuse import FSTYPE, filesystem_type

    existing = os.path.abspath(target)
    while not os.path.lexists(existing) and existing != os.path.dirname(existing):
        existing = os.path.dirname(existing)
    if filesystem_type(existing) == FSTYPE:
        raise DestinationError(f"{os.fsdecode(target)} is inside a c3fs mount, which is "
                               "read-only: copy to a local directory")
    try:
        if _is_special(os.stat(existing)):
            return  # a fifo or device takes writes on a read-only file system too
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
    except OSError:
        return  # the copy itself will say what is wrong
    if read_only:
        raise DestinationError(f"{os.fsdecode(target)} is on a read-only file system")


def _make_parents(path: bytes, create: bool) -> None:
    """Check (with `create`: make) the directory a copy goes into, and those above it."""
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        elif not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such directory")
    except OSError as exc:
        blocker = _not_a_dir(path)
        if blocker is not None:
            raise DestinationError(f"{os.fsdecode(blocker)} exists and is not a directory") from None
        if not create:
            raise DestinationError(f"{os.fsdecode(path)}: no such directory") from None
        raise DestinationError(f"{os.fsdecode(path)}: cannot create directory: {exc.strerror}") from None


def _not_a_dir(path: bytes) -> bytes | None:
    """The first of `path` and the directories above it that exists and is not a directory
    (nor a symlink to one)."""
    prefix = b"/" if path.startswith(b"/") else b""
    for name in path.split(b"/"):
        if name:
            prefix = os.path.join(prefix, name)
            if not os.path.isdir(prefix):
                return prefix if os.path.lexists(prefix) else None
    return None


def _make_dir(path: bytes) -> bool:
    """Make `path` a directory we can write into; True if it was created just now."""
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise DestinationError(
                f"{shortened(path)}: a path of {len(path):,} bytes is longer than this system "
                f"allows ({os.pathconf(b'/', 'PC_PATH_MAX'):,}); copy a folder further down "
                "into a shorter destination") from None
        raise DestinationError(f"{os.fsdecode(path)}: cannot create directory: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"{os.fsdecode(path)} exists and is not a directory")
    if st.st_mode & 0o700 != 0o700:
        os.chmod(path, st.st_mode | 0o700)  # a copy made before may have left it read-only
    return False


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _parts(starts: list[int], size: int) -> list[tuple[int, int]]:
    """Cut a file's chunks (cumulative `starts`) into runs of about `size` bytes each."""
    parts, first = [], 0
    for i in range(1, len(starts)):
        if starts[i] - starts[first] >= size or i == len(starts) - 1:
            parts.append((first, i))
            first = i
    return parts or [(0, 0)]


@contextlib.contextmanager
def _named_errors(node: Node, path: bytes,
                  passing: type[OSError] | tuple[type[OSError], ...] = ()) -> Iterator[None]:
    """A failure to write says which destination file; a bad chunk says which job file.
    `passing`: the errors raised as they are (stdout's reader gone: the caller decides)."""
    try:
        yield
    except passing:
        raise
    except OSError as exc:
        raise DestinationError(f"{os.fsdecode(path)}: {exc.strerror}") from None
    except (DataError, FormatError) as exc:
        raise exc.reading(node.display) from None


def _place_link(target: bytes, path: bytes, mtime_ns: int) -> None:
    tmp = _temp_name(path)
    try:
        os.symlink(target, tmp)
        os.utime(tmp, ns=(mtime_ns, mtime_ns), follow_symlinks=False)  # the link's own mtime
        os.rename(tmp, path)  # replaces whatever was there; never follows it
    except IsADirectoryError:
        _unlink(tmp)
        raise DestinationError(f"{os.fsdecode(path)} is a directory; cannot place a symlink there") from None
    except OSError as exc:
        _unlink(tmp)
        raise DestinationError(f"{os.fsdecode(path)}: {exc.strerror}") from None


def _existing(path: bytes, follow: bool = False) -> os.stat_result | None:
    """What is at a file's destination (with `follow`, through a symlink): None, or
    something a file may replace or be written into; a directory or a socket is an error."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DestinationError(f"{os.fsdecode(path)}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise DestinationError(f"{os.fsdecode(path)} is a directory where a file belongs")
    if stat.S_ISSOCK(st.st_mode):
        raise DestinationError(f"{os.fsdecode(path)} is a socket; cannot write a file into it")
    return st


def _is_special(st: os.stat_result) -> bool:
    """A fifo or a device: written into, never replaced."""
    return stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)


def _write_in_place(st: os.stat_result) -> bool:
    """A file with other hard links, or another owner, is written in place, as `cp` does:
    replacing it would break the links or make it ours."""
    return stat.S_ISREG(st.st_mode) and (st.st_nlink > 1 or st.st_uid != os.geteuid())


def _copy_in(staged_fd: int, path: bytes, mtime_ns: int) -> None:
    """Copy a staged file's bytes into the existing file at `path`, in place (its inode,
    owner, mode and other links stay), then give it `mtime_ns`."""
    size = os.fstat(staged_fd).st_size
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(fd, staged_fd, offset, size - offset)
            if sent == 0:
                raise OSError(errno.EIO, "short copy")
            offset += sent
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _unchanged(st: os.stat_result, node: Node) -> bool:
    return stat.S_ISREG(st.st_mode) and st.st_size == node.size and st.st_mtime_ns == node.mtime_ns


def same_content(path: bytes, entry: Entry) -> bool:
    """Whether the file at `path` holds `entry`'s bytes: each chunk's blake3 (its id) over
    the file's next bytes, stopping at the first that differs; as sound as the file's digest
    and known for trees of every version. A file that cannot be read is not the same."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        with os.fdopen(fd, "rb") as f:
            for chunk_id, size in zip(entry.chunk_ids(), entry.sizes, strict=True):
                if blob_id(f.read(size)) != chunk_id:
                    return False
            return not f.read(1)
    except (OSError, ValueError):
        return False


def _finish_dirs(dirs: list[tuple[bytes, Node]], mode_of: Callable[[Node], int],
                 strict: bool) -> None:
    """Give each directory made or filled its mode and mtime, after its contents (a mode may
    forbid writes); deepest first. Not `strict`: best effort, for a copy that failed."""
    for path, node in reversed(dirs):
        try:
            _set_meta(path, mode_of(node), node.mtime_ns)
        except OSError as exc:
            if strict:
                raise DestinationError(f"{os.fsdecode(path)}: {exc.strerror}") from None


def _set_meta(path: bytes, mode: int, mtime_ns: int) -> None:
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _unlink(path: bytes) -> None:
    """Remove a temp file, best effort (a read-only destination never had one)."""
    try:
        os.unlink(path)
    except OSError:
        pass
