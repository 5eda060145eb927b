"""A copy's small files, written by a second process (`cp -r` and `pull` from a local store).

The small files' thread is a directory copy's critical path: its time is Python and short
system calls (create, write, set the time, link), ~100 µs a file, and every call hands the
GIL to whichever of the copy's other threads waits for it. A second thread for them only
added hand-offs (bench/README.md). A process has a GIL of its own: a directory's copy by the
CLI (`Copier(fork=True)`; a library does not fork inside its caller's program) forks one
`Writer` once a few full batches of small files went to its thread (`FORK_AFTER`: a copy of
a few hundred files forks nothing), and sends it the next batches as they are found, through a pipe; the answers come back through
another, in order. The fork is safe with the copy's threads running: the process uses no
lock they may hold (its own store, fresh pipes, the files' chunks all sent or read by it).

The process only writes, with the copy's own code (it is a fork of the copy: `Copier`
and its settings are there). The copy looks up where each of a batch's chunks lies in the
store (its index: LMDB's may not be used by a fork) and sends that with the files; the
process reads those ranges of the packs (`read_located`: decoded and checked against their
ids) and writes each file as the copy does (`Copier._write_new`: unnamed until complete,
every chunk checked against the tree, then named with its mode and mtime). A file it cannot
write so (a chunk it was not told of, or cannot read or decode, a destination that refuses)
it leaves, and the copy writes that one itself, the usual way, with its repairs, retries and
errors: the process changes who writes a file, never what is written or what is said about
it. Files written in place, or holding a hole, are never sent; nor is anything
where files cannot be made unnamed (O_TMPFILE), so that the process may be killed at any
time without leaving a file behind: a copy that fails, or is interrupted, kills it, and one
killed itself (kill -9) takes it along (`_die_with`): it never writes on, an orphan.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import signal
import struct
import threading
from dataclasses import dataclass

from c3fs.fsutil import write_all
from c3fs.index import Location
from c3fs.objects.tree import FILE, Entry
from c3fs.reader import read_located
from c3fs.store.store import Store, open_backend

log = logging.getLogger(__name__)
# one batch: (path, tree entry, the mode to create the file with or None) per file
Files = list[tuple[bytes, Entry, "int | None"]]
_HEADER = struct.Struct("<Q")
PIPE_BYTES = 1024 * 1024  # batches the process may have waiting (~100 of 64 small files)
GROUP_BYTES = 4 * 1024 * 1024  # a batch's files whose chunks are read and held at once
_PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass(frozen=True, slots=True)
class Far:
    """A file as the process knows it: what `Copier._write_new` reads of a node."""

    entry: Entry
    path: bytes
    kind: int = FILE

    @property
    def mode(self) -> int:
        return self.entry.mode

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def mtime_ns(self) -> int:
        return self.entry.mtime_ns

    @property
    def display(self) -> str:  # (only in errors, which the process leaves to the copy)
        return os.fsdecode(self.path)


class Writer:
    """The second process and the two pipes to it."""

    def __init__(self, copier) -> None:
        to_child, self._send = os.pipe2(os.O_CLOEXEC)
        self._answers, from_child = os.pipe2(os.O_CLOEXEC)
        try:
            import fcntl

            fcntl.fcntl(self._send, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # (the default 64 KiB: the copy waits for the process sooner)
        self._lock = threading.Lock()  # one message at a time into the pipe
        self._dead = False
        copy, prctl = os.getpid(), _prctl()  # (found here: not in the process, each fork)
        try:
            self.pid = os.fork()
        except OSError:
            for fd in (to_child, self._send, self._answers, from_child):
                os.close(fd)
            raise
        if self.pid == 0:  # the process: never returns into the copy's code
            code = 1
            try:
                _die_with(copy, prctl)
                os.close(self._send)
                os.close(self._answers)
                _serve(copier, to_child, from_child)
                code = 0
            finally:
                os._exit(code)
        os.close(to_child)
        os.close(from_child)

    @classmethod
    def start(cls, copier, unnamed: bool) -> Writer | None:
        """A writer for `copier`, or None where one does not pay or cannot be killed
        cleanly: a remote store (the copy waits on the network, not on a core), one CPU, no
        O_TMPFILE (`unnamed`), or C3FS_COPY_PROCESS=0 (to compare)."""
        if (not unnamed or copier.vfs.repo.blobs.remote
                or len(os.sched_getaffinity(0)) < 2
                or os.environ.get("C3FS_COPY_PROCESS") == "0"):
            return None
        try:
            return cls(copier)
        except OSError as exc:  # no fds or processes to spare: the copy writes every file
            log.info("copying without a second process: %s", exc)
            return None

    def send(self, files: Files, where: dict[bytes, Location]) -> bool:
        """Queue `files` (False if the process is gone: the copy writes them)."""
        data = pickle.dumps((files, where), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._dead:
                return False
            try:
                write_all(self._send, _HEADER.pack(len(data)) + data)
            except OSError:
                self._dead = True
                return False
        return True

    def answer(self, files: int) -> list[int]:
        """The positions of the files of the oldest batch not answered yet that the process
        left to the copy (all of them if it died); answers come in the order sent."""
        if not self._dead:
            try:
                return pickle.loads(_read_message(self._answers))
            except (EOFError, OSError, pickle.UnpicklingError):
                self._dead = True
        return list(range(files))

    def close(self, kill: bool = False) -> None:
        """End the process: once it has written what it was sent, or at once (`kill`)."""
        with contextlib.suppress(ProcessLookupError):  # (gone: reaped by whoever waited)
            if kill:
                os.kill(self.pid, signal.SIGKILL)
        os.close(self._send)
        with contextlib.suppress(ChildProcessError):  # (a program that reaps its children)
            os.waitpid(self.pid, 0)
        os.close(self._answers)


@functools.cache
def _prctl():
    """libc's prctl(2), or None (not Linux)."""
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with(copy: int, prctl) -> None:
    """Be killed (SIGKILL) when the copy's thread that forked this process ends: with the
    copy, whatever kills it. Without it a copy killed with -9 (or a SIGTERM, whose default
    ends it at once) left the process writing on the batches already sent, as an orphan:
    files named after the copy was gone (54 of a 3003 files' cp -r, one second after its
    kill -9). That thread is the copy's walk, which closes the writer before it ends."""
    if prctl is not None:  # (else the copy's kill, and EOF, end it)
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != copy:  # gone before the call above: nothing would signal it
        os._exit(1)


def _serve(copier, requests: int, answers: int) -> None:
    """The process's loop: write each batch, answer which files it left, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the copy decides (and kills it)
    store = copier.vfs.repo.store
    store = Store.open(open_backend(store.url, create=False), create=False)  # its own
    copier._proc_fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    copier.progress = lambda n: None  # (the copy's: it counts what is answered)
    while True:
        try:
            files, where = pickle.loads(_read_message(requests))
        except EOFError:
            return
        left = []
        for group in _groups(files):
            ids = [c for i in group for c in files[i][1].chunk_ids()]
            got = read_located(store, {c: where[c] for c in ids if c in where})
            for i in group:
                path, entry, mode = files[i]
                try:
                    if not all(c in got for c in entry.chunk_ids()):
                        raise LookupError  # (never fetched here: the index is the copy's)
                    copier._write_new(Far(entry, path), path, got, mode)
                except Exception:  # noqa: BLE001 (the copy writes it again, and says why)
                    left.append(i)
        data = pickle.dumps(left, pickle.HIGHEST_PROTOCOL)
        write_all(answers, _HEADER.pack(len(data)) + data)


def _groups(files: Files) -> list[list[int]]:
    """The batch's files in groups of at most GROUP_BYTES (or one file), each group's
    chunks read at once: what is held decoded stays small, whatever the files' sizes."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, (_, entry, _) in enumerate(files):
        if groups[-1] and size + entry.size > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += entry.size
    return groups


def _read_message(fd: int) -> bytes:
    size = _HEADER.unpack(_read_exactly(fd, _HEADER.size))[0]
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    parts, got = [], 0
    while got < size:
        part = os.read(fd, min(size - got, PIPE_BYTES))
        if not part:
            raise EOFError
        parts.append(part)
        got += len(part)
    return b"".join(parts)

