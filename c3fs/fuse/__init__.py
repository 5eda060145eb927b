"""Mount and unmount c3fs read-only through FUSE (pyfuse3 + trio).

    mount(store_url, ref, mountpoint)   returns once the mount answers; the daemon runs on
    unmount(mountpoint, lazy=False)     fusermount3 -u [-z]; also after the daemon died

`mount` checks the mountpoint and FUSE here (cheap, in the caller), then starts the daemon:
it forks (fast: no new interpreter) when the caller has no other thread and no LMDB
environment open (`c3fs run` has its index open: LMDB must not cross a fork), else it runs
`python -m c3fs.fuse`, which forks in turn. The daemon detaches (setsid, double fork, stdio
to its log file), opens the store, resolves the ref, holds the mount's lease in the store
(a mount of one job or dataset: c3fs.store.mounts), mounts, and reports "ok" or one error
line through a pipe. The caller then polls `os.path.ismount` until the mount answers, and
acknowledges it through a second pipe, whose write end only `mount`'s caller holds (also
when `python -m c3fs.fuse` starts the daemon). A daemon whose caller dies before that (kill -9 or
SIGTERM during start-up: its "ok" meets a closed pipe, or the second pipe closes unacknowledged)
unmounts itself and exits: a killed start never leaves a dead mount nor an orphan daemon.

This module imports neither trio nor pyfuse3 so the CLI stays quick to start; the request
handlers live in `c3fs.fuse.ops`, the serving loop in `c3fs.fuse.daemon`.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import stat
import sys
import time
from pathlib import Path

from blake3 import blake3

from c3fs.errors import C3fsError, FuseUnavailable, MountError, from_name, one_line, portable_name
from c3fs.fsutil import make_private_dir
from c3fs.index import cache_root, environments_open
from c3fs.store.locks import process_alive

log = logging.getLogger(__name__)
MiB = 1024 * 1024
DEFAULT_CACHE = 256 * MiB
READY_TIMEOUT = 120.0  # opening a big remote store may sync its listing first
STOCK_MARKER = "stock-pyfuse3-warned"  # under the cache dir: the stock pyfuse3 warning was given
FSTYPE = "fuse.c3fs"  # what /proc/self/mountinfo says of our mounts (subtype=c3fs)

__all__ = ["DEFAULT_CACHE", "FuseUnavailable", "MountError", "default_log_file",
           "filesystem_type", "is_mounted", "mount", "unmount"]


# mount ------------------------------------------------------------------------------------
def mount(store_url: str | None, ref: str, mountpoint: str, *, foreground: bool = False,
          allow_other: bool = False, cache_bytes: int = DEFAULT_CACHE,
          log_file: str | None = None, timeout: float = READY_TIMEOUT,
          source: str | None = None) -> None:
    """Mount `ref` ("/" or "" for the whole namespace) read-only at `mountpoint`.

    `source` is what the mount table shows as the mount's source ("c3fs" by default): the
    fstab spec, given by mount.c3fs, so that `mount -a` knows the line is mounted.

    Returns once the mount answers requests (with `foreground`: once it is unmounted again).
    Raises a one-line C3fsError when FUSE is unavailable, the mountpoint is missing, not a
    directory, busy or not empty, the ref is unknown, or the daemon cannot start.
    """
    check_fuse(allow_other)
    mountpoint = os.path.realpath(mountpoint)
    check_mountpoint(mountpoint)
    args = (store_url, ref or "/", mountpoint, allow_other, cache_bytes, source)
    if foreground:
        _serve_here(*args)
        return
    log_file = log_file or str(default_log_file(mountpoint))
    ack_read, ack_write = os.pipe()  # only this process holds the write end
    try:
        if _single_threaded() and not environments_open():
            pid = _fork_daemon(args, log_file, timeout, ack_read, ack_write)
            _wait_answering(mountpoint, pid, log_file, timeout)
        else:  # forking threads or an LMDB environment is unsafe: a fresh interpreter forks
            _spawn_daemon(args, log_file, timeout, ack_read)
        acknowledge(ack_write)
    finally:
        os.close(ack_read)
        os.close(ack_write)  # unacknowledged: the daemon unmounts and exits


def acknowledge(ack_fd: int) -> None:
    """Tell the daemon its mount is known: it stays (see the module doc)."""
    try:
        os.write(ack_fd, b"ack\n")
    except BrokenPipeError:  # the daemon was stopped meanwhile: nothing is left to keep
        pass


def _single_threaded() -> bool:
    """No other thread at all, Python's or native (an S3 client's runtime, a thread pool)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False  # cannot tell: take the safe path


def check_fuse(allow_other: bool = False) -> None:
    """What a mount needs, checked before the daemon starts: /dev/fuse, and for a user other
    than root read-write access to it, a setuid fusermount3 (which makes the mount) and, for
    allow_other, `user_allow_other` in /etc/fuse.conf. One line saying what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailable("FUSE is unavailable: /dev/fuse is missing (load the fuse "
                              "module, or give the container --device /dev/fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        mode = stat.filemode(os.stat("/dev/fuse").st_mode)
        raise FuseUnavailable(f"FUSE is unavailable to this user: /dev/fuse ({mode}) is not "
                              "readable and writable by it (distributions ship it crw-rw-rw-; "
                              "README: \"Mounting as a user\")")
    fusermount = shutil.which("fusermount3")  # no PATH (mount(8) gives none): /bin:/usr/bin
    if fusermount is None:
        raise FuseUnavailable("FUSE is unavailable: fusermount3 is not installed "
                              "(install the fuse3 package)")
    if os.geteuid() == 0:
        return
    if not os.stat(fusermount).st_mode & stat.S_ISUID and not _has_capabilities(fusermount):
        raise FuseUnavailable(f"FUSE is unavailable to this user: {fusermount} is not setuid "
                              f"root, as the fuse3 package installs it (chmod u+s {fusermount})")
    if allow_other and not _user_allow_other():
        raise MountError("--allow-other needs the line user_allow_other in /etc/fuse.conf "
                         "when not root (fusermount3 refuses it otherwise)")


def _has_capabilities(path: str) -> bool:
    """Whether `path` has file capabilities (some systems give fusermount3 those instead
    of the setuid bit)."""
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def _user_allow_other(conf: str = "/etc/fuse.conf") -> bool:
    try:
        with open(conf) as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False


def check_mountpoint(mountpoint: str) -> None:
    if is_mounted(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is busy: something is already mounted "
                         f"there (c3fs umount {mountpoint})")
    if not os.path.lexists(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist (mkdir -p {mountpoint})")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    with os.scandir(mountpoint) as entries:
        if next(entries, None) is not None:
            raise MountError(f"mountpoint {mountpoint} is not empty")
    if os.geteuid() != 0 and not os.access(mountpoint, os.W_OK):
        raise MountError(f"mountpoint {mountpoint} is not writable by this user: fusermount3 "
                         "mounts only on a directory its user may write to (one you own)")


def default_log_file(mountpoint: str) -> Path:
    """Where a background daemon logs: one file per mountpoint under the cache directory."""
    digest = blake3(mountpoint.encode(errors="surrogateescape")).hexdigest(length=4)
    name = os.path.basename(mountpoint.rstrip("/")) or "root"
    return cache_root() / "mounts" / f"{name}-{digest}.log"


def _serve_here(store_url, ref, mountpoint, allow_other, cache_bytes, source) -> None:
    def ready() -> None:
        if notice := stock_notice():
            log.warning("%s", notice)

    daemon = _import_daemon(opening := _opening(store_url, ref, cache_bytes, mountpoint))
    daemon.run(opening, ref, mountpoint, allow_other=allow_other, ready=ready, source=source)


def _opening(store_url: str | None, ref: str, cache_bytes: int, mountpoint: str):
    """Start opening the store, resolving `ref` and registering the mount at `mountpoint`
    in a thread (c3fs.fuse.opening)."""
    from c3fs.fuse.opening import Opening

    return Opening(store_url, ref, cache_bytes, mountpoint)


def _import_daemon(opening):
    """The daemon module: pyfuse3 and trio import while `opening` waits on the store."""
    try:
        from c3fs.fuse import daemon
    except BaseException:
        opening.close()
        raise
    return daemon


def stock_notice() -> str | None:
    """Once per cache directory, on the first mount with a stock pyfuse3: that each open
    costs a request, and how to get the patched build (c3fs.fuse.ops.STOCK_NOTICE). Called
    by the daemon, which imports pyfuse3 anyway; it reaches the user through `mount`."""
    from c3fs.fuse.ops import stock_pyfuse3_notice

    return stock_pyfuse3_notice(cache_root() / STOCK_MARKER)


# the daemon's start: fork, detach, report through a pipe ----------------------------------
def _fork_daemon(args: tuple, log_file: str, timeout: float, ack_read: int,
                 ack_write: int = -1) -> int:
    """Fork a detached daemon; return its pid once it reports the mount exists. The daemon
    keeps the mount once "ack" arrives on `ack_read`, and unmounts if the pipe's write end
    (`ack_write`, closed in the child) closes first."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child, which never returns
        os.close(read_fd)
        if ack_write >= 0:
            os.close(ack_write)
        _detach_and_run(args, log_file, write_fd, ack_read)
    os.close(write_fd)
    os.waitpid(child, 0)
    with os.fdopen(read_fd, "rb", buffering=0) as status:
        return _read_status(status, timeout)


def _detach_and_run(args: tuple, log_file: str, status_fd: int, ack_fd: int) -> None:
    code = 1
    try:
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.write(status_fd, f"pid {os.getpid()}\n".encode())
        _redirect_stdio(log_file)
        code = _run_daemon(args, _Status(status_fd), ack_fd)
    finally:
        os._exit(code)


class _Status:
    """The daemon's end of the status pipe; closed once "ok" is sent (never written after)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, line: bytes) -> bool:
        """Write `line`, then close; False when the caller is gone (or already told)."""
        fd, self.fd = self.fd, -1
        if fd < 0:
            return False
        try:
            os.write(fd, line)
            return True
        except OSError:  # BrokenPipeError: the caller died during the start
            return False
        finally:
            os.close(fd)


def _redirect_stdio(log_file: str) -> None:
    os.chdir("/")
    make_private_dir(Path(log_file).parent)  # 0700 whatever the umask, like the cache
    null = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    os.close(null)
    os.close(log_fd)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(
        "%(asctime)s c3fs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    level = min(logging.getLogger().level, logging.INFO) or logging.INFO
    logging.basicConfig(level=level, handlers=[handler], force=True)


class _OneLineFormatter(logging.Formatter):
    """Messages on one line, control characters escaped: a crafted name in a store can
    neither forge log lines nor send escape sequences to whoever reads the log."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def _run_daemon(args: tuple, status: _Status, ack_fd: int) -> int:
    """Run the daemon; report "ok" or "error <code> <message>"; return the exit status."""
    store_url, ref, mountpoint, allow_other, cache_bytes, source = args
    try:
        daemon = _import_daemon(opening := _opening(store_url, ref, cache_bytes, mountpoint))
        daemon.run(opening, ref, mountpoint, allow_other=allow_other, source=source,
                   ready=lambda: status.send(_ready_lines(opening.warning)), ack_fd=ack_fd)
    except C3fsError as exc:
        log.error("%s", exc)
        _report_error(status, exc)
        return exc.exit_code
    except BaseException as exc:
        log.exception("the mount daemon failed")
        _report_error(status, C3fsError(f"the mount daemon failed: {exc!r}"))
        return 1
    return 0


def _ready_lines(warning: str | None = None) -> bytes:
    """What the daemon reports once mounted: "ok", after a "warning MESSAGE" for its caller
    to log for each of `warning` (the mount is not registered) and the stock pyfuse3 notice."""
    notices = [text for text in (warning, stock_notice()) if text]
    lines = "".join(f"warning {one_line(text)}\n" for text in notices)
    return lines.encode(errors="replace") + b"ok\n"


def error_line(exc: C3fsError) -> str:
    """How a daemon reports an error to the process that started it: "error KIND MESSAGE"
    (the kind is the error's class, which carries its exit code; see `parse_error`)."""
    return f"error {portable_name(exc)} {' '.join(str(exc).split())}"


def parse_error(line: str) -> C3fsError | None:
    """The error an `error_line` reports, or None if `line` is not one."""
    if not line.startswith("error "):
        return None
    _, kind, message = (line.split(" ", 2) + [""])[:3]
    return from_name(kind, message or "the mount daemon failed")


def _report_error(status: _Status, exc: C3fsError) -> None:
    """Send the error line, unless "ok" was sent already (then the error is in the log)."""
    status.send(f"{error_line(exc)}\n".encode(errors="replace"))


def _read_status(status, timeout: float) -> int:
    """Parse the daemon's "pid N" / "ok" / "error CODE MESSAGE" lines; return its pid."""
    deadline = time.monotonic() + timeout
    pid = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([status], [], [], left)[0]:
            _kill(pid)
            raise MountError(f"the mount daemon did not report ready within {timeout:.0f} s")
        line = status.readline().decode(errors="replace").strip()
        if line.startswith("pid "):
            pid = int(line[4:])
        elif line.startswith("warning "):
            log.warning("%s", line[8:])
        elif line == "ok":
            return pid
        elif line.startswith("error "):
            raise parse_error(line)
        elif not line:
            raise MountError("the mount daemon exited before the mount was ready")


def _spawn_daemon(args: tuple, log_file: str, timeout: float, ack_read: int) -> int:
    """`python -m c3fs.fuse`: it forks the daemon (handing it `ack_read`) and waits until
    the mount answers; returns the daemon's pid. The caller acknowledges the mount."""
    store_url, ref, mountpoint, allow_other, cache_bytes, source = args
    argv = [sys.executable, "-m", "c3fs.fuse", "--cache-bytes", str(cache_bytes),
            "--log-file", log_file, "--ack-fd", str(ack_read), ref, mountpoint]
    argv[3:3] = ["--store", store_url] if store_url else []
    argv[3:3] = ["--allow-other"] if allow_other else []
    argv[3:3] = ["--source", source] if source else []
    import subprocess  # here: the mount path forks instead, and subprocess costs ~5 ms cold

    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout + 5, start_new_session=True, pass_fds=(ack_read,))
    except subprocess.TimeoutExpired:
        raise MountError(f"the mount daemon did not report ready within {timeout:.0f} s") from None
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0:
        raise (parse_error(lines[-1]) if lines else None) or MountError(
            lines[-1] if lines else "the mount daemon failed")
    for line in lines:  # what the daemon said for the user (c3fs.fuse.__main__)
        if line.startswith("warning "):
            log.warning("%s", line[8:])
    return int(proc.stdout.split()[-1])


def _wait_answering(mountpoint: str, pid: int, log_file: str, timeout: float) -> None:
    """Poll until the kernel shows the mount and the daemon answers (os.path.ismount)."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not os.path.ismount(mountpoint):
        if not process_alive(pid):
            raise MountError(f"the mount daemon died during start (see {log_file})")
        if time.monotonic() > deadline:
            raise MountError(f"{mountpoint} did not become a mount within {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill(pid: int) -> None:
    if pid:
        try:
            os.kill(pid, 15)
        except OSError:
            pass


# unmount ----------------------------------------------------------------------------------
def unmount(mountpoint: str, lazy: bool = False) -> None:
    """Unmount a c3fs mount (fusermount3 -u, -z with `lazy`), also when its daemon died."""
    mountpoint = os.path.abspath(mountpoint)
    fstype = mount_type(mountpoint)
    if fstype is None:
        raise MountError(f"{mountpoint} is not mounted")
    if fstype != FSTYPE:
        raise MountError(f"{mountpoint} is not a c3fs mount (it is {fstype}): use umount(8)")
    command = shutil.which("fusermount3")
    if command is None:
        raise FuseUnavailable("cannot unmount: fusermount3 is not installed (install fuse3)")
    argv = [command, "-u", *(["-z"] if lazy else []), mountpoint]
    import subprocess

    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0 and is_mounted(mountpoint):
        reason = (proc.stderr.strip().splitlines() or ["fusermount3 failed"])[-1]
        if "busy" in reason.lower():
            raise MountError(f"{mountpoint} is busy (a process has files or its working "
                             "directory there): close them, or use --lazy")
        raise MountError(f"cannot unmount {mountpoint}: {reason}")


def is_mounted(path: str) -> bool:
    """True when `path` is a mount point, even one whose daemon died (never blocks on it)."""
    return mount_type(path) is not None


def _mounts() -> list[tuple[bytes, str]] | None:
    """(mount point, file system type) of each mount, in the order mounted (later ones on
    top of earlier ones), from /proc/self/mountinfo: never blocks on a dead daemon. None
    when it cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        fields, _, rest = line.partition(b" - ")
        found.append((_unescape(fields.split(b" ")[4]),
                      rest.split(b" ")[0].decode(errors="replace")))
    return found


def mount_type(path: str) -> str | None:
    """The type of the file system mounted at `path` (the topmost one), e.g. "fuse.c3fs";
    None when nothing is."""
    path = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                        os.path.basename(path.rstrip("/")))
    mounts = _mounts()
    if mounts is None:
        return "unknown" if os.path.ismount(path) else None
    at = os.fsencode(path)
    return next((kind for point, kind in reversed(mounts) if point == at), None)


def filesystem_type(path: str | bytes) -> str | None:
    """The type of the file system `path` (which exists) is on, e.g. "fuse.c3fs": that of
    the mount with the longest mount point above its real path. None when unknown."""
    real = os.fsencode(os.path.realpath(path))
    best, found = -1, None
    for point, kind in _mounts() or []:  # later ones are on top: >= keeps the last
        inside = real == point or real.startswith(point.rstrip(b"/") + b"/")
        if inside and len(point) >= best:
            best, found = len(point), kind
    return found


def mounts_within(path: str | bytes) -> list[str]:
    """The mount points at or below directory `path` (by its real path), in the order
    mounted: what a rename of `path` would carry along (or fail on)."""
    real = os.fsencode(os.path.realpath(path)).rstrip(b"/")
    return [os.fsdecode(point) for point, _ in _mounts() or []
            if point == real or point.startswith(real + b"/")]


def _unescape(field: bytes) -> bytes:
    """Mount points in mountinfo escape space, tab, newline and backslash as \\ooo."""
    if b"\\" not in field:
        return field
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return bytes(out)
