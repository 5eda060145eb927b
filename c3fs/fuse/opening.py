"""Open the store and resolve the mounted ref while the daemon imports pyfuse3 and trio.

On a fresh machine, a mount's start is two waits of about the same length: importing the FUSE
side (pyfuse3 and trio with attrs: ~0.25 s with a cold page cache) and the store's round
trips (config, listings, the ref, its tree: ~0.15 s at 20 ms a request). Neither needs the
other, so `Opening` starts the second in a thread and the caller imports meanwhile; `result`
joins it. This module imports neither pyfuse3 nor trio (that is its point).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

from c3fs.errors import MountError, NotADirectory, NotFound
from c3fs.objects.job import DATASET, JOB
from c3fs.reader import trace
from c3fs.repo import Repo
from c3fs.store import mounts
from c3fs.store.backend import BackendError, Deadline
from c3fs.store.locks import Lease
from c3fs.vfs import DATASETS, JOBS, Vfs, split_path

log = logging.getLogger(__name__)


def open_vfs(store_url: str | None, ref: str, cache_bytes: int,
             opened: Callable[[Repo], None] | None = None) -> Vfs:
    """`opened(repo)` is called once the store is open, before `ref` is resolved."""
    # Mounting nothing is a mistake. Each read is an operation: a store that stops answering
    # fails the reads waiting on it after one deadline, and the next read tries it again.
    try:
        repo = Repo.open(store_url, cache_bytes, create=False, deadline=Deadline(rearm=True))
    except PermissionError as exc:  # a user other than the store's (a local one is 0700)
        raise MountError(f"cannot open the store as this user: {exc.strerror}: "
                         f"{exc.filename}") from None
    try:
        if opened is not None:
            opened(repo)
        vfs = Vfs(repo, ref or "/")
    except NotFound as exc:
        repo.close()
        raise NotFound(f"unknown ref {ref}: {exc}") from None
    except BaseException:
        repo.close()
        raise
    if not vfs.root.is_dir:
        repo.close()
        raise NotADirectory(f"{ref} is a file: mount a job, a dataset or a folder")
    return vfs


def register_mount(vfs: Vfs, mountpoint: str) -> tuple[Lease | None, str | None]:
    """The lease of a mount of one job or dataset (or a folder in one) at `mountpoint`
    (c3fs.store.mounts: rm refuses to remove what it reads, gc keeps it), and a warning for
    the user when the store takes no write from this user: (None, warning). (None, None)
    for a mount of the namespace. NotFound when the ref was removed meanwhile."""
    top = vfs.root
    while top.depth > 2:  # the job's (dataset's) root, as resolved: /jobs/<id>
        top = top.parent
    if vfs.root.ref is None or vfs.root.tree_id is None or top.tree_id is None:
        return None, None
    try:
        lease = mounts.register(vfs.repo.store, vfs.root.ref, vfs.root.tree_id, top.tree_id,
                                mountpoint)
    except BackendError as exc:
        kind, name = vfs.root.ref
        return None, (f"this mount is not registered in the store ({exc}): rm and gc do not "
                      f"know that it reads {kind} {name}")
    return lease, None


class Opening:
    """`open_vfs` running in a thread from construction; `result()` waits for it.

    A mount of one job on a remote store also starts replaying the job's access trace (learned
    prefetch, c3fs/reader/trace.py) as soon as the store is open, beside resolving the ref
    (2 round trips: the ref, the tree) and the imports: the trace's own 2 (list, get) and its
    chunks' GETs then overlap them, instead of starting once the mount is up (`replaying`:
    that job, whose trace the mount then does not replay again).

    With a `mountpoint`, the mount's lease is written once the ref is resolved (`lease`,
    `warning`: see `register_mount`); `release` removes it when the mount ends."""

    def __init__(self, store_url: str | None, ref: str, cache_bytes: int,
                 mountpoint: str | None = None) -> None:
        limit_malloc_arenas()  # before any thread allocates
        self.replaying: trace.Ref | None = None
        self.lease: Lease | None = None
        self.warning: str | None = None
        self._ref = ref
        self._mountpoint = mountpoint
        self._vfs: Vfs | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._open, args=(store_url, ref, cache_bytes),
                                        name="c3fs-open", daemon=True)
        self._thread.start()

    def _open(self, store_url: str | None, ref: str, cache_bytes: int) -> None:
        try:
            vfs = open_vfs(store_url, ref, cache_bytes, self._replay)
        except BaseException as exc:  # noqa: BLE001  (raised again by result(), in the caller)
            self._error = exc
            return
        try:
            if self._mountpoint is not None:
                self.lease, self.warning = register_mount(vfs, self._mountpoint)
        except BaseException as exc:  # noqa: BLE001
            vfs.repo.close()
            self._error = exc
            return
        self._vfs = vfs

    def _replay(self, repo: Repo) -> None:
        try:
            job = ref_of_path(split_path(self._ref or "/"))
        except NotFound:
            return  # (resolving it says what is wrong)
        if job is not None and repo.blobs.remote and trace.enabled():
            trace.start_replay(repo.store, repo.blobs, job)
            self.replaying = job

    def result(self) -> Vfs:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._vfs is not None
        return self._vfs

    def release(self) -> None:
        """Remove the mount's lease (the mount has ended); a store that does not answer
        is logged: the lease then expires."""
        lease, self.lease = self.lease, None
        try:
            if lease is not None:
                lease.release()
        except BackendError as exc:
            log.warning("could not remove this mount's lease %s (%s): it expires", lease.key, exc)

    def close(self) -> None:
        """Close what was opened, for a caller that stops before using it."""
        self._thread.join()
        self.release()
        if self._vfs is not None:
            self._vfs.repo.close()


def ref_of_path(parts: tuple[bytes, ...]) -> trace.Ref | None:
    """The job or dataset a mount of this path is, told from the path alone (its parts:
    /jobs/<id>, /datasets/<name>), or None. A guess: an alias (`latest`) has no traces
    under its own name, and the mount replays the trace of what it resolves to."""
    kinds = {JOBS: JOB, DATASETS: DATASET}
    if len(parts) != 2 or parts[0] not in kinds:
        return None
    try:
        return kinds[parts[0]], parts[1].decode()
    except UnicodeDecodeError:
        return None


def limit_malloc_arenas() -> None:
    """One glibc heap for all threads, so the RSS stays near the cache size.

    Decoded chunks (kept) and read buffers (freed at once), up to 1 MiB each, come from many
    threads; with a heap per thread the holes left by the freed ones add ~40 MiB to the RSS
    (measured: 4 readers, 64 MiB cache: 155-175 MiB with 2 heaps, 127-133 MiB with one,
    and no slower). The mmap threshold stays dynamic: fixing it low sends every 1 MiB buffer
    to a fresh mmap, whose page faults cost more CPU than decoding (~25 % on a cold read).
    """
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols (not find_library: it forks ldconfig)
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
