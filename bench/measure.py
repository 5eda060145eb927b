"""Measuring primitives: cold caches, timed commands with peak RSS and CPU time, FUSE mounts,
sizes, stats."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MOUNT_TIMEOUT = 120.0
IS_ROOT = os.geteuid() == 0


class StepFailed(RuntimeError):
    """A tool's command failed; the message says which and how (last lines of its stderr)."""


@dataclass
class Command:
    argv: list[str]
    cwd: Path | None = None
    env: dict[str, str] | None = None
    stdin: bytes | None = None

    def describe(self) -> str:
        """The command line, paths shown relative to the repository (`cd DIR && ...` if any)."""
        line = " ".join(_short_path(a) for a in self.argv)
        return f"cd {_short_path(str(self.cwd))} && {line}" if self.cwd else line


def _short_path(arg: str) -> str:
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return arg.replace(root, "")


@dataclass
class Timed:
    seconds: float
    peak_rss: int
    stdout: str
    cpu: float = 0.0  # user + system seconds of the process and every descendant it reaped


# caches -------------------------------------------------------------------------------------------
def drop_caches() -> bool:
    """Write back and drop the page cache, dentries and inodes (root only). True if dropped."""
    os.sync()
    if not IS_ROOT:
        return False
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    return True


# peak RSS of a process tree -----------------------------------------------------------------------
class RssPoller:
    """Polls a process and its descendants every `interval` seconds: `peak` is the larger of
    the highest summed RSS seen and the highest peak (VmHWM) of any one of them.

    VmHWM is the kernel's high-water mark of a process's own memory since its exec, so a
    short spike between two polls still counts (a process that ends between two polls is
    not seen: `run_timed` adds GNU time's figure)."""

    def __init__(self, pid: int, interval: float = 0.02, skip_root: bool = False) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self.skip_root = skip_root  # count only its descendants (`pid` is a wrapper)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        total, hwm = _tree_memory(self.pid, self.skip_root)
        self.peak = max(self.peak, total, hwm)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def _tree(pid: int, skip_root: bool = False) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return []
    return children if skip_root else [root, *children]


def tree_rss(pid: int) -> int:
    return _tree_memory(pid)[0]


def _tree_memory(pid: int, skip_root: bool = False) -> tuple[int, int]:
    """(summed RSS, largest VmHWM) of `pid` and its descendants, in bytes."""
    total = hwm = 0
    for proc in _tree(pid, skip_root):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
        hwm = max(hwm, _vm_hwm(proc.pid))
    return total, hwm


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds so far of `pid` (all its threads) and its live descendants,
    plus the children they reaped (for a daemon left running: read it before and after)."""
    total = 0.0
    for proc in _tree(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def _cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: Command, timeout: float = 3600) -> Timed:
    """Run `cmd`, return wall seconds, peak RSS, stdout and CPU seconds (user + system of the
    process and every descendant it waited for, from `wait4`).

    The peak RSS is the larger of `RssPoller`'s figure and the kernel's `ru_maxrss` of the
    largest process, taken under GNU time (`/usr/bin/time`, package `time`): a small process
    of its own that forks the command, so the command's ru_maxrss starts from time's ~1 MiB,
    not from the harness's RSS (which a child of the harness inherits at fork: `true` run
    from a 300 MiB harness reports 316 MiB). Without GNU time, only the polled figure."""
    env = {**os.environ, **(cmd.env or {})}
    wrapper = _gnu_time()
    with contextlib.ExitStack() as stack:
        argv = cmd.argv
        if wrapper:
            stats = stack.enter_context(tempfile.NamedTemporaryFile("r", prefix="bench-time-"))
            argv = [wrapper, "-f", "%M", "-o", stats.name, *cmd.argv]
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cmd.cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.PIPE)
        with RssPoller(proc.pid, skip_root=bool(wrapper)) as poller:
            out, err = _communicate(proc, cmd.stdin, timeout)
            _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise StepFailed(f"{cmd.describe()} exited {proc.returncode}: {_tail(err)}")
        largest = _max_rss_kib(stats.read()) * 1024 if wrapper else 0
    return Timed(seconds, max(poller.peak, largest), out.decode(errors="replace"), _cpu(usage))


@functools.cache
def _gnu_time() -> str | None:
    path = "/usr/bin/time"
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in proc.stdout + proc.stderr else None


def _max_rss_kib(text: str) -> int:
    """GNU time's %M (KiB): the last line that is a number (it may write a note before)."""
    for line in reversed(text.splitlines()):
        if line.strip().isdigit():
            return int(line)
    return 0


def _communicate(proc: subprocess.Popen, stdin: bytes | None, timeout: float) -> tuple[bytes, bytes]:
    """Like Popen.communicate but leaves the child unreaped, so wait4 can read its rusage."""
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True)
               for s, b in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    if stdin:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(stdin)
    proc.stdin.close()
    for reader in readers:
        reader.join(timeout)
    return b"".join(out), b"".join(err)


def run(cmd: Command, timeout: float = 3600) -> str:
    """Run an untimed helper command (init, version...); raise StepFailed on failure."""
    env = {**os.environ, **(cmd.env or {})}
    proc = subprocess.run(cmd.argv, cwd=cmd.cwd, env=env, capture_output=True, timeout=timeout,
                          input=cmd.stdin)
    if proc.returncode != 0:
        raise StepFailed(f"{cmd.describe()} exited {proc.returncode}: {_tail(proc.stderr)}")
    return proc.stdout.decode(errors="replace")


def _tail(stderr: bytes, lines: int = 3) -> str:
    text = stderr.decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(no stderr)"


# reading ------------------------------------------------------------------------------------------
def cat_files(root: Path, relpaths: Sequence[str]) -> float:
    """`cat` every file (in order, batched by xargs) to /dev/null; return wall seconds."""
    return cat_files_timed(root, relpaths)[0]


def cat_files_timed(root: Path, relpaths: Sequence[str]) -> tuple[float, float]:
    """`cat_files`, also returning the CPU seconds of xargs and its cats (`wait4`)."""
    names = b"\0".join(p.encode() for p in relpaths)
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(["xargs", "-0", "cat"], cwd=root, stdin=subprocess.PIPE,
                                stdout=null, stderr=subprocess.PIPE)
        _, err = _communicate_in(proc, names)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise StepFailed(f"cat under {root} failed: {_tail(err)}")
    return seconds, _cpu(usage)


def _communicate_in(proc: subprocess.Popen, data: bytes) -> tuple[bytes, bytes]:
    """Write `data` to stdin, read stderr; leaves the child unreaped (for wait4)."""
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(data)
    proc.stdin.close()
    reader.join()
    return b"", b"".join(err)


def ls_lr(root: Path) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as null:
        proc = subprocess.run(["ls", "-lR", "."], cwd=root, stdout=null, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise StepFailed(f"ls -lR {root} failed: {_tail(proc.stderr)}")
    return seconds


def wait_first_byte(path: Path, start: float, timeout: float = MOUNT_TIMEOUT) -> float:
    """Poll until one byte of `path` is readable; return seconds since `start` (perf_counter)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                if f.read(1):
                    return time.perf_counter() - start
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StepFailed(f"{path} not readable after {timeout:.0f} s")
        time.sleep(0.002)


# mounts -------------------------------------------------------------------------------------------
@dataclass
class Mount:
    """A live mount: where it is, the daemon's pid (for RSS) and when the mount command started."""

    mountpoint: Path
    started: float
    daemon_pid: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    searched: bool = field(default=False, repr=False)

    def poller(self) -> RssPoller | contextlib.nullcontext:
        pid = self.pid()
        return RssPoller(pid, interval=0.05) if pid else contextlib.nullcontext()

    def pid(self) -> int | None:
        """The daemon's pid (found by its mountpoint once, if it backgrounded itself)."""
        if self.daemon_pid is None and not self.searched:
            self.searched = True
            self.daemon_pid = find_daemon(self.mountpoint)
        return self.daemon_pid

    def cpu(self) -> float:
        """CPU seconds the daemon has used so far (0 without one: native disk)."""
        pid = self.pid()
        return tree_cpu(pid) if pid else 0.0


def wait_exited(pid: int | None, timeout: float = 60.0) -> None:
    """Wait until process `pid` (a daemon after its unmount) has exited."""
    if pid is None:
        return
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout)


def find_daemon(mountpoint: Path) -> int | None:
    """The pid of the process whose command line names `mountpoint` (a backgrounded daemon)."""
    target = str(mountpoint)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info["pid"] != os.getpid() and target in cmdline:
            return proc.info["pid"]
    return None


def wait_mounted(mountpoint: Path, proc: subprocess.Popen | None, timeout: float = MOUNT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if proc is not None and proc.poll() is not None:
            raise StepFailed(f"mount of {mountpoint} exited {proc.returncode}: "
                             f"{_tail(proc.stderr.read() if proc.stderr else b'')}")
        if time.monotonic() > deadline:
            raise StepFailed(f"{mountpoint} not mounted after {timeout:.0f} s")
        time.sleep(0.002)


@contextlib.contextmanager
def foreground_mount(cmd: Command, mountpoint: Path) -> Iterator[Mount]:
    """Start a FUSE daemon in the foreground, wait until mounted; always unmount and reap it."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **(cmd.env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        wait_mounted(mountpoint, proc)
        yield Mount(mountpoint, started, proc.pid, proc)
    finally:
        unmount(mountpoint)
        _reap(proc)


def unmount(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)


def _reap(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# sizes and stats ----------------------------------------------------------------------------------
def apparent_bytes(path: Path) -> int:
    """Sum of file sizes under `path`."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def file_count(path: Path) -> int:
    if path.is_file():
        return 1
    return sum(len(files) for _d, _s, files in os.walk(path))


TRASH_KEEP_FREE = 8 * 1024**3  # below this much free space, discarded trees are removed at once
_trash: Path | None = None
_trashed = 0


def set_trash(path: Path | None) -> None:
    """Where `discard` moves trees until the run ends (None: remove them at once)."""
    global _trash
    _trash = path


def discard(path: Path) -> None:
    """Get rid of a tree the run no longer needs without freeing its inodes during the run.

    On this machine's ext4 (no journal), a file created within a minute or so of many
    deletions scans past every recently freed inode of its block group (the kernel's
    `recently_deleted`): after `rm -rf` of a 10,000-file tree, `cp -r` of the dataset took
    3.4 s instead of 1.8 s, 2.9 s of it in the kernel. Deleting between measurements would so
    slow whichever tool runs next, so trees are moved aside (a rename) and removed when the
    run ends; only when the disk is short of space are they removed at once.
    """
    global _trashed
    if not path.exists():
        return
    if _trash is not None and shutil.disk_usage(path).free > TRASH_KEEP_FREE:
        _trash.mkdir(parents=True, exist_ok=True)
        _trashed += 1
        path.rename(_trash / f"{_trashed}-{path.name}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    discard(path)
    path.mkdir(parents=True)
    return path


def summarize(values: Sequence[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": list(values)}
