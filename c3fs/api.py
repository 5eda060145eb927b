"""The Python API (`import c3fs`): open, list, push and pull without a mount or the CLI.

Everything goes through the same `Vfs` and `FileReader` as the mount and the CLI: one read
path. A `Store` is cheap to share: every `Store` of one URL in a process uses one `Repo`
(LMDB allows one environment per file per process), opened on first use.

Threads: a Store and its files may be used from any thread (a file serialises its own reads,
as Python's files do). Fork: a process forked from one that opened a Store (a DataLoader's
workers) opens its own Repo on first use. The parent's LMDB environment, thread pool and
locks are dropped in the child, never used or closed there (closing an inherited LMDB
environment frees the parent's reader slots). py-lmdb refuses to open the same files again
while the inherited environment is referenced, so nothing may hold it across the fork: before
forking, this process's prefetch threads finish (`BlobSource.pause`); code of the user's that
holds c3fs internals (`Store.repo`) in the forking thread's frames keeps it, and the child's
first read is then an IndexUnavailable "already open". An s3:// store cannot be read in a
forked child at all (obstore's runtime does not survive fork): a clear UsageError says to use
'spawn' or 'forkserver', to which a Store passes by pickling.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

from c3fs.errors import (
    C3fsError,
    DataError,
    FormatError,
    IsADirectory,
    NotFound,
    UsageError,
)
from c3fs.objects.job import JobRecord
from c3fs.objects.tree import DIR, FILE, LINK
from c3fs.store.locks import PUSH_LOCK_WAIT
from c3fs.vfs import MAX_LINKS, Node, Vfs, split_path

if TYPE_CHECKING:
    from c3fs.jobs.pull import Pulled
    from c3fs.reader import FileReader
    from c3fs.repo import Repo

MiB = 1024 * 1024
BUFFER_SIZE = 128 * 1024  # a File's buffer: small reads (headers, pickle opcodes) stay cheap
READ_STEP = MiB  # big reads go in steps: the reader reads ahead of each (8 chunks) as it goes


# one Repo per store URL per process -------------------------------------------------------
class _Opened:
    """A Repo and its Vfs, shared by every Store of one URL in this process."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.vfs = Vfs(repo)
        self.users = 0


_lock = threading.Lock()
_opened: dict[str, _Opened] = {}
_live: weakref.WeakSet[Store | _RawFile] = weakref.WeakSet()  # what holds per-process state
_owner_pid = os.getpid()
_fork_hook = False
_forked = False  # this process was forked from one that had opened a Store
_s3_forked = False  # ... and had loaded the S3 client


def _before_fork() -> None:
    """Let this process's prefetch threads finish: none of them may be holding a Repo when
    the process forks (see `BlobSource.pause`)."""
    for opened in list(_opened.values()):
        opened.repo.blobs.pause()


def _after_fork_in_parent() -> None:
    for opened in list(_opened.values()):
        opened.repo.blobs.resume()


def _after_fork_in_child() -> None:
    """Drop (never close) what the parent opened: the child opens its own on first use."""
    global _lock, _owner_pid, _forked, _s3_forked
    _forked = True
    _s3_forked = _s3_forked or "obstore" in sys.modules
    _lock = threading.Lock()  # the parent's may have been held by a thread the child lacks
    _owner_pid = os.getpid()
    _opened.clear()
    for holder in list(_live):
        holder._forget()


def _acquire(url: str, create: bool, cache_bytes: int) -> _Opened:
    """This process's Repo of `url`, opened if needed (called holding `_lock`)."""
    global _fork_hook
    if _owner_pid != os.getpid():  # forked without os.fork, whose hook would have run
        _after_fork_in_child()
    if not _fork_hook:  # registered on first use, not at import
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
        _fork_hook = True
    opened = _opened.get(url)
    if opened is None:
        if _s3_forked and url.startswith("s3://"):
            raise UsageError(
                f"{url}: an s3:// store cannot be read in a process forked from one that had "
                "used S3 (its client's runtime does not survive a fork): start workers with "
                "'spawn' or 'forkserver' (DataLoader(multiprocessing_context='forkserver')); "
                "a Store is passed to them by pickling")
        opened = _opened[url] = _Opened(_open_repo(url, create, cache_bytes))
    opened.users += 1
    return opened


def _open_repo(url: str, create: bool, cache_bytes: int) -> Repo:
    from c3fs.index import IndexUnavailable
    from c3fs.repo import Repo

    try:
        return Repo.open(url, cache_bytes=cache_bytes, create=create)
    except IndexUnavailable as exc:
        if not _forked or "already open" not in str(exc):
            raise
        raise IndexUnavailable(
            f"{exc}: this process was forked from one using the store, and something here "
            "still holds the parent's index (Store.repo, a Repo or a reader kept in a "
            "variable); keep only c3fs.Store and c3fs.File objects across a fork") from None


def _release(key: str, opened: _Opened) -> None:
    with _lock:
        opened.users -= 1
        if opened.users <= 0 and _opened.get(key) is opened:
            del _opened[key]
            opened.repo.close()


def _store_url(url: str | os.PathLike[str] | None) -> str:
    """The store `url` names, as the store layer takes it (None: the CLI's default store;
    file:///p -> /p; a path made absolute, symlinks resolved: one key per store)."""
    from c3fs.store.store import store_url

    text = store_url(None if url is None else os.fspath(url))
    if text.startswith("file://"):
        text = text[len("file://"):]
        if not text.startswith("/"):
            raise UsageError(f"store URL file://{text}: use file:///absolute/path")
    if "://" in text:
        return text
    return os.path.realpath(text)


# entries ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Info:
    """One entry of the namespace, as `Store.info` and `Store.ls(detail=True)` give it."""

    path: str  # the path asked for (under /projects/... if listed there), no trailing /
    name: str  # its last component
    type: Literal["file", "directory", "link"]
    size: int  # bytes of a file; 0 for a directory; a link's target length
    mode: int  # permission bits, e.g. 0o644
    mtime: float  # seconds since the epoch
    target: str | None = None  # a link's target (`latest`, a tag, a symlink in a tree)


class Pushed(JobRecord, kw_only=True, frozen=True):
    """What `push` gives: the job's record (a JobRecord, every field as stored),
    `changed`, the files that changed while they were read, each stored as last read and
    named in a warning (`push --json`'s `changed`), and `vanished`, the files, symlinks and
    directories removed after they were listed and before they were read, not stored, each
    named in a warning (`push --json`'s `vanished`). A path starts as the directory given
    and is decoded as os.fsdecode does: os.fsencode(path) is its exact name, also one that
    is not UTF-8. (`==` holds only between two Pushed: compare `id` with a stored record.)"""

    changed: list[str] = []
    vanished: list[str] = []


def _seconds(value: float, name: str) -> float:
    """`value` as a number of seconds >= 0 (inf: no end), else a UsageError naming `name`
    (a NaN never compares, and would wait for ever)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise UsageError(f"{name} must be a number of seconds >= 0, not {value!r}")
    return float(value)


def _text(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")  # split_path encodes it back exactly


def _join(parts: tuple[bytes, ...]) -> str:
    return "/" + "/".join(_text(p) for p in parts)


def _info(path: str, node: Node) -> Info:
    kind: Literal["file", "directory", "link"] = (
        "directory" if node.kind == DIR else "file" if node.kind == FILE else "link")
    target = _text(node.entry.target) if kind == "link" and node.entry is not None else None
    name = path.rsplit("/", 1)[-1]
    return Info(path, name, kind, node.size, node.mode, node.mtime_ns / 1e9, target)


def _link_target(parts: tuple[bytes, ...], link: Node) -> tuple[bytes, ...]:
    """The path a symlink of a job's tree at `parts` points to; NotFound if it leaves the
    job (an absolute target, or `..` above the job's root: never followed out)."""
    assert link.entry is not None
    target = link.entry.target
    job_root = len(parts) - (link.depth - 2)  # the link's canonical path: /jobs/<id>/...
    if target.startswith(b"/"):
        raise NotFound(f"{_join(parts)} is a symlink to {_text(target)}, outside the store")
    result = list(parts[:-1])
    for name in target.split(b"/"):
        if name == b"..":
            if len(result) <= job_root:
                raise NotFound(f"{_join(parts)} is a symlink to {_text(target)}, outside "
                               "its job")
            result.pop()
        elif name and name != b".":
            result.append(name)
    return tuple(result)


# the store ----------------------------------------------------------------------------------
class Store:
    """A c3fs store: a directory path, `file:///path`, `s3://bucket/prefix`, or None for the
    CLI's default ($C3FS_STORE, else the XDG data directory). Opened at once, so a wrong URL
    fails here; only the default store is created when missing (as the CLI does), unless
    `create`. `cache_bytes` sizes the cache of decoded chunks (the first Store of a URL in a
    process sets it). Safe to use from threads and from forked children (see the module).

        with c3fs.Store("s3://bucket/c3") as store:
            with store.open("/jobs/job_abc123/weights.pt") as f:
                state = torch.load(f)
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, *, create: bool | None = None,
                 cache_bytes: int = 128 * MiB) -> None:
        self.url: str = _store_url(url)
        self._create = url is None if create is None else create
        self._cache_bytes = cache_bytes
        self._opened: _Opened | None = None
        self._pid = 0
        self._files = 0  # open files: the Repo is released when the last one closes
        self.closed = False
        _live.add(self)
        self._state()

    def __repr__(self) -> str:
        return f"c3fs.Store({self.url!r})"

    def __reduce__(self) -> tuple:  # a spawned worker (or fsspec's pickling) opens it anew
        return (_reopen, (self.url, self._create, self._cache_bytes))

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store (its Repo closes with the last Store and file of its URL)."""
        with _lock:
            if self.closed:
                return
            self.closed = True
            opened = self._take() if self._files == 0 else None
        if opened is not None:
            _release(self.url, opened)

    def _take(self) -> _Opened | None:
        """This process's Repo, given up (called holding `_lock`)."""
        opened, self._opened = self._opened, None
        return opened if self._pid == os.getpid() else None

    def _forget(self) -> None:  # in a forked child: the parent's Repo is not ours
        self._opened = None

    def _state(self, for_file: bool = False) -> _Opened:
        """This process's Repo of the store; `for_file`: for a file still open on it."""
        if self.closed and not for_file:
            raise ValueError("I/O operation on a closed c3fs.Store")
        opened = self._opened
        if opened is not None and self._pid == os.getpid():
            return opened
        with _lock:
            if self._opened is None or self._pid != os.getpid():  # (another thread may have)
                self._opened = _acquire(self.url, self._create, self._cache_bytes)
                self._pid = os.getpid()
            return self._opened

    @property
    def repo(self) -> Repo:
        """The Repo underneath (internals: not part of the stable API)."""
        return self._state().repo

    # reading ------------------------------------------------------------------------------
    def _resolve(self, path: str) -> Node:
        return self._state().vfs.resolve(path)

    def _lstat(self, path: str) -> Node:
        """The node at `path`, its last component not followed (a link stays a link)."""
        parts = split_path(path)
        vfs = self._state().vfs
        if not parts:
            return vfs.resolve("/")
        parent = vfs.resolve(b"/" + b"/".join(parts[:-1]))
        return vfs.lookup(parent, parts[-1])

    def info(self, path: str, follow: bool = False) -> Info:
        """The entry at `path` (a link is described, not followed; with `follow`, what it
        leads to, under `path`'s name). NotFound if none."""
        node = self._resolve(path) if follow else self._lstat(path)
        return _info(_join(split_path(path)), node)

    @overload
    def ls(self, path: str = "/", detail: Literal[False] = False) -> list[str]: ...
    @overload
    def ls(self, path: str, detail: Literal[True]) -> list[Info]: ...

    def ls(self, path: str = "/", detail: bool = False) -> list[str] | list[Info]:
        """The full paths in directory `path` (sorted by name), or `Info` of each with
        `detail`; a file's path lists itself. Links in it (`latest`, tags) are listed as
        links; a link in `path` itself is followed."""
        base = _join(split_path(path))
        node = self._resolve(path)
        if node.is_dir:
            prefix = base.rstrip("/") + "/"
            items = [_info(prefix + _text(name), child)
                     for name, child in self._state().vfs.children(node)]
        else:
            items = [_info(base, node)]
        return items if detail else [item.path for item in items]

    def walk(self, path: str = "/", maxdepth: int | None = None) -> Iterator[Info]:
        """`Info` of `path` and of everything below it (`maxdepth` levels at most), depth
        first, in name order; links below `path` are listed, not followed."""
        top, node = _join(split_path(path)), self._resolve(path)
        vfs = self._state().vfs
        yield _info(top, node)
        # a stack of the directories being listed, each streamed (a paged directory of 10 M
        # entries is not made into 10 M nodes at once)
        stack = [(top, vfs.iter_children(node), 0)] if node.is_dir and maxdepth != 0 else []
        while stack:
            where, items, depth = stack[-1]
            item = next(items, None)
            if item is None:
                stack.pop()
                continue
            child_path = where.rstrip("/") + "/" + _text(item[0])
            yield _info(child_path, item[1])
            if item[1].is_dir and (maxdepth is None or depth + 1 < maxdepth):
                stack.append((child_path, vfs.iter_children(item[1]), depth + 1))

    def open(self, path: str, mode: str = "rb", *, buffer_size: int = BUFFER_SIZE) -> File:
        """The file at `path`, read-only and binary (`mode` "rb"): read, readinto, seek,
        tell, as a file opened with `open(path, "rb")`. Chunks are fetched as they are read
        (never the whole file). A symlink of the job's tree is followed, never out of the
        job. IsADirectory for a directory; NotFound if there is none."""
        if mode not in ("rb", "br"):
            raise UsageError(f"c3fs files are read-only and binary: open with mode 'rb', "
                             f"not {mode!r}")
        node = self._file_node(path)
        return File(_RawFile(self, node, _join(split_path(path))), buffer_size)

    def _file_node(self, path: str) -> Node:
        """The regular file at `path`, following symlinks of the job's tree that stay in
        the job (`best.pt -> ckpt_100.pt`), as a mount would."""
        parts = split_path(path)
        node = self._resolve(path)
        for _ in range(MAX_LINKS):
            if node.kind != LINK or node.entry is None:
                break
            parts = _link_target(parts, node)
            node = self._resolve(b"/" + b"/".join(parts))
        if node.is_dir:
            raise IsADirectory(f"{_join(split_path(path))} is a directory")
        if node.kind != FILE:
            raise NotFound(f"{_join(split_path(path))}: too many levels of symbolic links")
        return node

    def read_bytes(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes `start` to `end` of the file at `path` (slice rules: None for its ends,
        negative from its end)."""
        node = self._file_node(path)
        first, last, _ = slice(start, end).indices(node.size)
        reader = self._state().vfs.open(node)
        parts = []
        try:  # in steps: from the second on, the reader reads ahead
            for at in range(first, last, READ_STEP):
                parts.append(reader.read(at, min(READ_STEP, last - at)))
        except (DataError, FormatError) as exc:
            raise exc.reading(_join(split_path(path))) from None
        return b"".join(parts)

    # jobs ---------------------------------------------------------------------------------
    def record(self, job: str) -> JobRecord:
        """The record of a job: its id, or a path to a whole job (`/jobs/<id>`,
        `/projects/<p>/jobs/latest`, `/projects/<p>/tags/<tag>`)."""
        from c3fs.jobs.tags import resolve_job

        return resolve_job(self.repo, job)

    def push(self, directory: str | os.PathLike[str], *, project: str,
             job: str | None = None, lock_wait: float = PUSH_LOCK_WAIT) -> Pushed:
        """Store `directory` as a finished job of `project` (id `job`, else a fresh one);
        the job's record, with `changed`: the files that changed while they were read, and
        `vanished`: what was removed before it was read (`Pushed`). AlreadyExists if the id
        is taken. A gc holding the store is waited for up to `lock_wait` seconds (as
        `c3fs push --lock-wait`: 600 by default, 0 refuses at once, math.inf waits as long
        as it runs), with a warning at once and every 30 s; then `c3fs.errors.LockedError`,
        naming whose gc."""
        import msgspec

        from c3fs.jobs.push import push_dir

        wait = _seconds(lock_wait, "lock_wait")
        changed: list[str] = []
        vanished: list[str] = []
        record = push_dir(self.repo, directory, project, job, changed=changed,
                          vanished=vanished, lock_wait=wait)
        return Pushed(**msgspec.structs.asdict(record), changed=changed, vanished=vanished)

    def pull(self, jobs: str | list[str] | None = None, dest: str | os.PathLike[str] = ".",
             *, keep_setuid: bool = False) -> list[Pulled]:
        """Download jobs' artifacts into `dest`/<job id>/ (ids or paths to whole jobs; None:
        every SUCCEEDED job not pulled here before), as `c3fs pull` does."""
        from c3fs.jobs.pull import pull as run_pull
        from c3fs.jobs.tags import bare_id

        repo = self.repo
        names = [jobs] if isinstance(jobs, str) else list(jobs or [])
        job_ids = [bare_id(j) or self.record(j).id for j in names]
        return run_pull(repo, job_ids, os.fspath(dest), None, keep_setuid)

    # open files ---------------------------------------------------------------------------
    def _file_opened(self) -> None:
        with _lock:
            self._files += 1

    def _file_closed(self) -> None:
        with _lock:
            self._files -= 1
            opened = self._take() if self.closed and self._files == 0 else None
        if opened is not None:
            _release(self.url, opened)


# files --------------------------------------------------------------------------------------
class _RawFile(io.RawIOBase):
    """Unbuffered reads of one file through its `FileReader` (one per process)."""

    def __init__(self, store: Store, node: Node, path: str) -> None:
        super().__init__()
        self.name = path
        self.mode = "rb"
        self.size = node.size
        self._store = store
        self._node = node
        self._pos = 0
        # (nothing fetched at open, as the mount does: the first read may be a footer's, at
        # the end; one at 0 starts reading ahead at once)
        self._reader: FileReader | None = store._state().vfs.open(node)
        self._pid = os.getpid()
        store._file_opened()
        _live.add(self)

    def _forget(self) -> None:
        self._reader = None

    def _read(self, size: int) -> bytes:
        reader = self._reader
        if reader is None or self._pid != os.getpid():
            reader = self._reader = self._store._state(for_file=True).vfs.open(self._node)
            self._pid = os.getpid()
        try:
            data = reader.read(self._pos, size)
        except (DataError, FormatError) as exc:
            raise exc.reading(self.name) from None
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view):
            data = self._read(min(len(view) - done, READ_STEP))
            if not data:
                break
            view[done:done + len(data)] = data
            done += len(data)
        return done

    def readall(self) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        return self._read(max(self.size - self._pos, 0))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if self.closed:
            raise ValueError("I/O operation on a closed file")
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence ({whence})")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._reader = None
            if self._pid == os.getpid():
                self._store._file_closed()
        super().close()


class File(io.BufferedReader):
    """A read-only binary file of a store, as `open(path, "rb")` gives for a local one:
    read, readinto, readline, peek, seek, tell, iteration, a context manager. `size` is its
    length and `name` its path. Reads fetch (and verify) only the chunks they need; a
    damaged chunk raises `c3fs.errors.DataError` naming the file, never wrong bytes.
    Thread-safe (reads are serialised, as for a built-in file)."""

    raw: _RawFile

    def __init__(self, raw: _RawFile, buffer_size: int = BUFFER_SIZE) -> None:
        super().__init__(raw, buffer_size)

    @property
    def size(self) -> int:
        return self.raw.size

    def __repr__(self) -> str:
        return f"<c3fs.File {self.raw.name!r}>"


def _reopen(url: str, create: bool, cache_bytes: int) -> Store:
    return Store(url, create=create, cache_bytes=cache_bytes)


# the module-level functions -----------------------------------------------------------------
_shared: dict[str, Store] = {}


def _store(store: Store | str | os.PathLike[str] | None) -> Store:
    """`store` itself, or this process's shared Store of that URL (kept open: fsspec keeps
    its filesystems the same way)."""
    if isinstance(store, Store):
        return store
    url = _store_url(store)
    found = _shared.get(url)
    if found is None or found.closed:
        found = _shared[url] = Store(url, create=store is None)
    return found


def open(store: Store | str | os.PathLike[str] | None, path: str, mode: str = "rb", *,
         buffer_size: int = BUFFER_SIZE) -> File:
    """Open the file at `path` of `store` (a Store, a store URL, or None for the default)
    for reading, in binary: see `Store.open`.

        with c3fs.open("s3://bucket/c3", "/projects/vision/jobs/latest/model.pt") as f:
            model.load_state_dict(torch.load(f))
    """
    return _store(store).open(path, mode, buffer_size=buffer_size)


def ls(store: Store | str | os.PathLike[str] | None, path: str = "/") -> list[str]:
    """The full paths in directory `path` of `store`: see `Store.ls`."""
    return _store(store).ls(path)


def info(store: Store | str | os.PathLike[str] | None, path: str) -> Info:
    """The entry at `path` of `store`: see `Store.info`."""
    return _store(store).info(path)


def push(directory: str | os.PathLike[str], *, project: str, job: str | None = None,
         store: Store | str | os.PathLike[str] | None = None,
         lock_wait: float = PUSH_LOCK_WAIT) -> Pushed:
    """Store `directory` as a finished job of `project`; its record, with `changed` and
    `vanished`; a running gc is waited for up to `lock_wait` seconds (see `Store.push`).
    A store URL that names no store yet creates one, as `c3fs push` does."""
    wait = _seconds(lock_wait, "lock_wait")  # (before a store is made for nothing)
    target = store if isinstance(store, Store) else Store(store, create=True)
    try:
        return target.push(directory, project=project, job=job, lock_wait=wait)
    finally:
        if target is not store:
            target.close()


def pull(jobs: str | list[str] | None = None, dest: str | os.PathLike[str] = ".", *,
         store: Store | str | os.PathLike[str] | None = None,
         keep_setuid: bool = False) -> list[Pulled]:
    """Download jobs' artifacts into `dest`/<job id>/: see `Store.pull`."""
    return _store(store).pull(jobs, dest, keep_setuid=keep_setuid)


__all__ = ["C3fsError", "File", "Info", "Pushed", "Store", "info", "ls", "open", "pull", "push"]
