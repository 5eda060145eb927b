"""The mount daemon: open the repo, resolve the ref, mount, serve until unmounted or signalled.

The mount's lease (c3fs.store.mounts), written by `Opening` once the ref is resolved, is
removed when the mount ends, whichever way it ends short of a kill -9.

`run` is called in the process that will serve the mount (the detached daemon, or the
caller itself with --foreground). It reports "ready" or a one-line error through `status`
once the kernel mount exists, then serves requests on a trio loop until the file system is
unmounted (`c3fs umount`, fusermount3 -u) or SIGTERM / SIGINT / SIGHUP arrive, and unmounts.
A background daemon also unmounts when the command that started it dies before the mount
was ready: `ready()` returns False, or `ack_fd` closes without an "ack".
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Callable
from functools import partial

import pyfuse3
import trio

from c3fs.errors import MountError
from c3fs.fuse.opening import Opening
from c3fs.fuse.ops import Operations
from c3fs.memo import tune_collector
from c3fs.preload import record as record_preload
from c3fs.reader import trace
from c3fs.vfs import Vfs

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_TASKS = 64  # concurrent FUSE requests in flight (pyfuse3 worker tasks)
READ_AHEAD_KB = 4096  # kernel readahead for the mount (the default, 128 KiB, is too small)
TRIM_EVERY = 10.0  # seconds between two looks at the free memory inside the heap
TRIM_ABOVE = 16 * 1024 * 1024  # free bytes inside the heap that go back to the system


def fuse_options(allow_other: bool, source: str | None = None) -> set[str]:
    """The mount's options; `source` (an fstab spec) is its source in the mount table,
    unless it holds what the option list cannot (commas, blanks, backslashes)."""
    if not source or any(c in source for c in ", \t\n\\"):
        source = "c3fs"
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {"ro", "nosuid", "nodev", f"fsname={source}", "subtype=c3fs"}
    if allow_other:
        options.add("allow_other")
    return options


def run(opening: Opening, ref: str, mountpoint: str, *, allow_other: bool,
        ready: Callable[[], bool | None], ack_fd: int | None = None,
        source: str | None = None) -> None:
    """Mount what `opening` opens and serve until unmounted; C3fsError (one line) when the
    mount cannot start."""
    tune_collector()
    vfs = opening.result()
    if opening.warning:
        log.warning("%s", opening.warning)
    traces = mount_traces(vfs, opening.replaying)
    try:
        try:
            pyfuse3.init(Operations(vfs, readahead=chunk_readahead(vfs.repo.blobs.remote),
                                    traces=traces),
                         mountpoint, fuse_options(allow_other, source))
        except RuntimeError as exc:
            raise MountError(f"cannot mount at {mountpoint}: {exc}") from None
        log.info("mounted %s at %s (store %s)", ref or "/", mountpoint, vfs.repo.store.url)
        try:
            if ready() is False:
                log.warning("the command that started this mount died before it was ready: "
                            "unmounting %s", mountpoint)
                return
            trio.run(_serve, mountpoint, ack_fd)
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
            record_preload("mount")  # what the daemon loaded, read ahead by the next mount
            if traces is not None:
                traces.save(vfs.repo.store)
    finally:
        opening.release()  # the mount's lease (c3fs.store.mounts): it reads nothing now
        vfs.repo.close()


async def _serve(mountpoint: str, ack_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal)
        # set_readahead stats the mount, a request to this very loop: once the loop stops
        # (an early SIGTERM or a start nobody acknowledged), that thread is left behind
        nursery.start_soon(partial(trio.to_thread.run_sync, set_readahead, mountpoint,
                                   abandon_on_cancel=True))
        if ack_fd is not None:
            nursery.start_soon(_stop_unless_acknowledged, ack_fd, mountpoint)
        nursery.start_soon(_trim_heap)
        await pyfuse3.main(min_tasks=1, max_tasks=MAX_TASKS)
        nursery.cancel_scope.cancel()


async def _stop_unless_acknowledged(ack_fd: int, mountpoint: str) -> None:
    """The starting command writes "ack" once the mount answers; if its end closes first
    (it was killed while waiting), nobody knows of this mount: unmount it."""
    try:
        await trio.lowlevel.wait_readable(ack_fd)
        acknowledged = os.read(ack_fd, 16).startswith(b"ack")
    finally:
        os.close(ack_fd)
    if not acknowledged:
        log.warning("the command that started this mount died before it was ready: "
                    "unmounting %s", mountpoint)
        pyfuse3.terminate()


async def _stop_on_signal() -> None:
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _trim_heap() -> None:
    """Give the heap's free pages back to the system when there are many (malloc_trim).

    glibc returns only the free memory at the top of its heap by itself; the blob cache's
    churn (a million small chunks in and out, the cache's table growing) leaves free chunks
    all through it: after `cat` of a million small files the daemon held 68 MiB free inside
    its heap (295 MiB anonymous memory after malloc_trim, 358 before)."""
    while True:
        await trio.sleep(TRIM_EVERY)
        if heap_free() > TRIM_ABOVE:
            await trio.to_thread.run_sync(trim_heap)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the process's own symbols
    except OSError:
        return None


def heap_free() -> int:
    """Free bytes inside glibc's heap (mallinfo2; 0 where there is no such call)."""
    libc = _libc()
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        return 0
    info.restype = _Mallinfo2
    return info().fordblks


def trim_heap() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def mount_traces(vfs: Vfs, replaying: tuple[str, str] | None = None) -> trace.Traces | None:
    """Learned prefetch (c3fs/reader/trace.py): on a remote store, the mount records what
    its readers read, per job, and replays a job's stored trace: a mount of one job at once
    (`replaying`: the job whose trace replays already, from the mount's start, see
    c3fs/fuse/opening.py), a namespace mount when a job is first read."""
    if not (vfs.repo.blobs.remote and trace.enabled()):
        return None
    traces = trace.Traces(first=partial(trace.start_replay, vfs.repo.store, vfs.repo.blobs))
    if vfs.root.ref is not None:
        traces.start(vfs.root.ref, first=vfs.root.ref != replaying)
    return traces


def chunk_readahead(remote: bool = False) -> int:
    """Chunks each reader prefetches past a sequential read.

    As root the mount raises the kernel's own readahead (`set_readahead`): the kernel then
    sends several 1 MiB READs at once and decoding already runs in parallel, so a second
    readahead in the daemon only adds thread hand-offs (measured: ~15% more CPU, slower).
    Without that the kernel reads ahead 128 KiB at a time and the reader must prefetch.
    A remote store's reader always reads ahead (a growing window of merged ranged GETs):
    4 MiB of kernel readahead is a few round trips, far from what the link can carry.
    """
    return 8 if remote or os.geteuid() != 0 else 0


def set_readahead(mountpoint: str) -> None:
    """Raise the kernel readahead of this mount's bdi (root only; best effort)."""
    try:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("kernel readahead left at its default: %s", exc)
