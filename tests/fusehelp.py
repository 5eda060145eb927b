"""Helpers for tests that mount c3fs for real: run the CLI, wait for mounts, tear them down.

Mounts are waited for by polling (`os.path.ismount`, bounded by a deadline), never with a
fixed sleep, and always torn down with `fusermount3 -u -z`, also when a test fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

C3FS = str(Path(sys.executable).with_name("c3fs"))
DEADLINE = 15.0


def fuse_works() -> bool:
    return os.path.exists("/dev/fuse") and any(
        os.access(os.path.join(d, "fusermount3"), os.X_OK)
        for d in os.environ.get("PATH", "").split(os.pathsep))


def run_c3fs(*args: str, env: dict[str, str], check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess:
    """The real `c3fs` command in a subprocess (stdout/stderr captured as text)."""
    proc = subprocess.run([C3FS, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"c3fs {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def wait_until(predicate: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    delay = 0.002
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def mounted(path: str | os.PathLike) -> bool:
    """A mount point per /proc/self/mountinfo (true for a dead daemon's mount, too)."""
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == target for line in f)


def force_unmount(path: str | os.PathLike) -> None:
    if mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", os.fspath(path)], capture_output=True)


def daemon_pids(mountpoint: str | os.PathLike) -> list[int]:
    """Processes serving `mountpoint` (their command line names it; the CLI parent is gone)."""
    needle = os.fsencode(os.path.realpath(mountpoint))
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv and (b"mount" in argv or b"c3fs.fuse" in argv) and b"umount" not in argv:
            pids.append(int(entry))
    return pids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def mount(env: dict[str, str], mountpoint: str | os.PathLike, ref: str | None = None,
          *extra: str) -> Iterator[Path]:
    """`c3fs mount [REF] MOUNTPOINT` for the duration of the block; always torn down."""
    mountpoint = Path(mountpoint)
    mountpoint.mkdir(parents=True, exist_ok=True)
    args = ["mount", *([ref] if ref else []), str(mountpoint), *extra]
    try:
        run_c3fs(*args, env=env)
        wait_until(lambda: os.path.ismount(mountpoint), f"{mountpoint} to be mounted")
        yield mountpoint
    finally:
        force_unmount(mountpoint)


def stop(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@contextlib.contextmanager
def sbin_link(name: str, target: Path) -> Iterator[None]:
    """/sbin/NAME -> `target` for the block (mount(8) looks for its helpers in /sbin only),
    under a lock shared by concurrent test runs; a real file already there (an installed
    c3fs) is left alone: the test is skipped."""
    import fcntl

    import pytest

    link = Path("/sbin") / name
    with open(f"/tmp/c3fs-test-sbin-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if link.exists() and not link.is_symlink():
            pytest.skip(f"{link} is installed: not replacing it")
        link.unlink(missing_ok=True)
        link.symlink_to(target)
        try:
            yield
        finally:
            link.unlink(missing_ok=True)
