"""Push and gc locks, and mount leases, as objects in the store so they work across
machines, with leases.

A push puts `locks/push-<token>` before it writes anything and removes it at the end; gc
creates `locks/gc` (create-only), then refuses to run while any live push lock exists. A
push waits (up to its `wait`, then refuses) while a live `locks/gc` exists, holding its own
lock meanwhile. Each side writes its own lock before it looks for the other's, so at least
one of two racing parties sees the other.

A mount of one job or dataset holds `locks/mount-<kind>-<name>-<token>` while it serves
(c3fs.store.mounts): it excludes nobody; `rm` and `gc` read it.

A run given its job id (`c3fs run -j ID`) holds `locks/run-<job id>` (`reserve_job`) from
its start until its job is registered (or could not be): created create-only, so a second
run of that id, on any host, is refused before it runs anything. Nobody else reads it.

Leases. A holder rewrites its lock every `lease / 4` seconds (a heartbeat thread; each
body carries a new beat number) for as long as it lives. Another process judges a lock:

- held by a process of this host (same host name, boot and pid namespace): alive exactly
  while that pid exists and is the process that wrote it (its start time: a pid taken
  again by another process after a kill -9 is not the holder); of an earlier boot: dead;
- held elsewhere: alive if its body changes while we watch; expired once it has not
  changed for its lease, measured by *this* host's monotonic clock. No timestamp from
  another machine is compared with ours, so skewed clocks cannot break a live lock.

So meeting a dead lock of another host costs one lease of watching (default 60 s,
`C3FS_LOCK_LEASE`), after which it is broken (gc also removes expired push locks);
`c3fs unlock` lists locks and breaks one at once. A holder whose lock was broken while it
was alive (it could not renew: a paused process, a lost network) finds out at its next
heartbeat, and `Lease.check` then fails the command before it registers anything; gc asks
the store itself (`Lease.confirm`) before each delete once a second has passed since it
last did, so a gc paused past its lease deletes nothing after the lock was broken.

Bodies are JSON: {"version", "kind", "host", "pid", "boot", "pidns", "start", "user",
"command", "started", "lease", "beat"} (a mount's also "root", "mountpoint"); "boot" is the
host's boot id, "pidns" the holder's pid namespace, "start" its start time in clock ticks
after boot (/proc/<pid>/stat); "started" is the holder's clock, shown to people, never used
to judge. A body without "boot", "pidns" or "start" (an older c3fs's) is judged by its pid
alone.
Bodies of the first c3fs ({"host", "pid", "time"}) never change, so they expire after one
lease.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from c3fs.errors import FormatError, LockedError, NotFound, UsageError, one_line
from c3fs.objects.ids import is_name, token_hex
from c3fs.objects.nesting import check_json_depth
from c3fs.store.backend import BackendError, KeyExists, KeyMissing, StoreTimeout
from c3fs.store.store import Store

log = logging.getLogger(__name__)

LOCK_VERSION = 1
GC_KEY = "locks/gc"
PUSH_PREFIX = "locks/push-"
MOUNT_PREFIX = "locks/mount-"
RUN_PREFIX = "locks/run-"
DEFAULT_LEASE = 60.0
PUSH_LOCK_WAIT = 600.0  # how long a push waits for a running gc (--lock-wait), by default
RUN_LOCK_WAIT = 3600.0  # ... and the upload of a job that has finished its work (run)
MIN_LEASE, MAX_LEASE = 1.0, 3600.0


def lease_seconds() -> float:
    """This process's lease: $C3FS_LOCK_LEASE seconds (default 60), within [1, 3600]."""
    raw = os.environ.get("C3FS_LOCK_LEASE")
    try:
        value = float(raw) if raw else DEFAULT_LEASE
    except ValueError:
        raise UsageError(f"C3FS_LOCK_LEASE={raw!r} is not a number of seconds") from None
    return min(max(value, MIN_LEASE), MAX_LEASE)


def this_host() -> str:
    return os.uname().nodename


def lock_kind(key: str) -> str:
    """"gc", "mount", "run" or "push": what holds a lock, told by its key."""
    if key == GC_KEY:
        return "gc"
    if key.startswith(RUN_PREFIX):
        return "run"
    return "mount" if key.startswith(MOUNT_PREFIX) else "push"


@functools.cache
def boot_id() -> str:
    """This boot of this host ("" where the kernel does not say)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """The pid namespace of this process, as /proc shows it ("pid:[4026531836]"; "" unknown):
    a pid names the same process only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def start_time(pid: int | str = "self") -> int:
    """When process `pid` started, in clock ticks after boot (0: unknown; -1: it is a
    zombie, dead but not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b") ", 1)[1].split()
        return -1 if fields[0] == b"Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LockInfo:
    """A lock as read from the store. `raw` is its body: a changed body is a heartbeat."""

    key: str
    raw: bytes
    host: str = "?"
    pid: int = 0
    user: str = "?"
    command: str = ""
    started: float | None = None
    lease: float = DEFAULT_LEASE
    boot: str = ""  # the holder's host's boot id, pid namespace and start time ("", 0:
    pidns: str = ""  # not said: an older c3fs)
    start: int = 0
    root: str = ""  # a mount's: the id of the tree it serves (hex), and where
    mountpoint: str = ""

    @property
    def name(self) -> str:
        return self.key.removeprefix("locks/")

    @property
    def kind(self) -> str:
        return lock_kind(self.key)

    def holder(self) -> str:
        """Who holds it, for messages: "pid 123 (c3fs push ./out) of root on host-a"."""
        what = f" ({one_line(self.command)})" if self.command else ""
        if self.mountpoint:  # (a mount's command may name it relative to its directory)
            what = f" (mount at {one_line(self.mountpoint)})"
        return f"pid {self.pid}{what} of {one_line(self.user)} on {one_line(self.host)}"

    def alive_here(self) -> bool | None:
        """Whether the holder lives, judged by its pid on this host; None when that cannot
        tell (another host, or another pid namespace of this one): watch the lock instead."""
        if self.host != this_host() or self.pid <= 0:
            return None
        if self.boot and boot_id() and self.boot != boot_id():
            return False  # written before this host last started
        if self.pidns and self.pidns != pid_namespace():
            return None
        if not process_alive(self.pid):
            return False
        started = start_time(self.pid)  # (0: unreadable, or not said: the pid is believed)
        if started < 0:  # a zombie: dead
            return False
        return not (started and self.start) or started == self.start

    def as_dict(self) -> dict:
        found = {"name": self.name, "kind": self.kind, "host": self.host, "pid": self.pid,
                 "user": self.user, "command": self.command, "started": self.started,
                 "lease": self.lease}
        if self.kind == "mount":
            found.update(root=self.root, mountpoint=self.mountpoint)
        return found


def parse_lock(key: str, raw: bytes) -> LockInfo:
    """A lock body, as far as it decodes (an unreadable one still has a body to watch)."""
    try:
        check_json_depth(raw, "lock")
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        started = body.get("started", body.get("time"))
        return LockInfo(
            key, raw, host=str(body.get("host", "?")), pid=_int(body.get("pid")),
            user=str(body.get("user", "?")), command=str(body.get("command", "")),
            started=float(started) if isinstance(started, (int, float)) else None,
            lease=min(max(float(body.get("lease", DEFAULT_LEASE)), MIN_LEASE), MAX_LEASE),
            boot=str(body.get("boot", "")), pidns=str(body.get("pidns", "")),
            start=_int(body.get("start")), root=str(body.get("root", "")),
            mountpoint=str(body.get("mountpoint", "")))
    except (FormatError, ValueError, TypeError):
        return LockInfo(key, raw)


def _int(value) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def read_lock(store: Store, key: str) -> LockInfo | None:
    try:
        return parse_lock(key, store.backend.get(key))
    except KeyMissing:
        return None


def list_locks(store: Store) -> list[LockInfo]:
    """Every lock in the store (gc first, then pushes by key)."""
    found = []
    for key, _ in sorted(store.backend.list("locks/"), key=lambda item: item[0] != GC_KEY):
        lock = read_lock(store, key)
        if lock is not None:
            found.append(lock)
    return found


# judging ------------------------------------------------------------------------------------
def live_locks(store: Store, locks: list[LockInfo]) -> tuple[list[LockInfo], list[LockInfo]]:
    """Split `locks` into (alive, expired); locks released meanwhile are in neither.

    A lock of this host is judged at once by its pid; any other is watched, by this host's
    monotonic clock, until its body changes (alive) or one lease passes without a change."""
    judged = [(lock, lock.alive_here()) for lock in locks]
    alive = [lock for lock, here in judged if here is True]
    expired = [lock for lock, here in judged if here is False]
    watched = {lock.key: lock for lock, here in judged if here is None}
    if watched:
        longest = max(lock.lease for lock in watched.values())
        log.info("watching %d lock(s) of other hosts for up to %.0f s: a live holder renews "
                 "its lock", len(watched), longest)
    started = time.monotonic()
    while watched:
        time.sleep(min(1.0, min(lock.lease for lock in watched.values()) / 8))
        waited = time.monotonic() - started
        for key, lock in list(watched.items()):
            now = read_lock(store, key)
            if now is None or now.raw != lock.raw:
                del watched[key]
                if now is not None:
                    alive.append(now)
            elif waited >= lock.lease:
                del watched[key]
                expired.append(lock)
    return alive, expired


def break_lock(store: Store, lock: LockInfo) -> bool:
    """Remove `lock` if its body is still the one judged; False if it changed meanwhile."""
    current = read_lock(store, lock.key)
    if current is None:
        return True
    if current.raw != lock.raw:
        return False
    store.backend.delete(lock.key)
    log.warning("removed the expired %s lock %s of %s", lock.kind, lock.name, lock.holder())
    return True


def unlock(store: Store, name: str, force: bool = False) -> LockInfo:
    """Break lock `name` ("gc", "push-<token>" or "locks/..."): at once with `force`, else
    once it is judged expired. LockedError naming the holder while it is alive."""
    key = name if name.startswith("locks/") else f"locks/{name}"
    if not lock_name(key):
        raise UsageError(f"{name!r} is not a lock name: gc, push-<token>, mount-<...> or "
                         "run-<job id> (c3fs unlock --list)")
    lock = read_lock(store, key)
    if lock is None:
        raise NotFound(f"no lock {name!r} in the store (c3fs unlock --list shows them)")
    if not force:
        alive, _ = live_locks(store, [lock])
        if alive:
            raise LockedError(f"lock {lock.name} is held by a live process, {alive[0].holder()}: "
                              "stop it first, or break the lock with --force")
    store.backend.delete(key)
    return lock


def lock_name(key: str) -> bool:
    """Whether `key` can be a lock's: locks/gc, locks/push-<token>, locks/mount-<...>,
    locks/run-<job id>."""
    if key.startswith(RUN_PREFIX):
        return is_name(key[len(RUN_PREFIX):])
    if key.startswith(PUSH_PREFIX):
        return key[len(PUSH_PREFIX):].isalnum()
    if key.startswith(MOUNT_PREFIX):  # (kind, name and token: c3fs.store.mounts)
        rest = key[len(MOUNT_PREFIX):]
        return bool(rest) and all(c.isascii() and (c.isalnum() or c in "._-") for c in rest)
    return key == GC_KEY


# holding ------------------------------------------------------------------------------------
class Lease:
    """A lock this process holds: written on `acquire`, renewed by a heartbeat thread,
    deleted on `release`. Thread-safe. `fields`: more of its body (a mount's root).
    `rejoin`: a lease that another process removed or replaced is written again at the next
    heartbeat (a mount lives on: what it reads is kept from then on), not given up."""

    def __init__(self, store: Store, key: str, lease: float | None = None,
                 fields: dict | None = None, rejoin: bool = False) -> None:
        self.store = store
        self.key = key
        self.lease = lease if lease is not None else lease_seconds()
        self.fields = fields or {}
        self.rejoin = rejoin
        self.lost = False
        self._beat = 0
        self._started = time.time()  # shown to people (their clock), never judged
        self._body = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewing = threading.Lock()  # the heartbeat's renewal, or `confirm`'s
        self._confirmed = time.monotonic()  # when the store last showed this lock ours

    def _next_body(self) -> bytes:
        self._beat += 1
        return json.dumps({
            "version": LOCK_VERSION, "kind": lock_kind(self.key), "host": this_host(),
            "pid": os.getpid(), "boot": boot_id(), "pidns": pid_namespace(),
            "start": start_time(), "user": _user(), "command": _command(),
            "started": self._started, "lease": self.lease, "beat": self._beat, **self.fields,
        }).encode()

    def acquire(self, create: bool = False) -> None:
        """Write the lock (`create`: KeyExists if there is one) and start renewing it."""
        body = self._next_body()
        (self.store.backend.create if create else self.store.backend.put)(self.key, body)
        self._body = body
        self._confirmed = time.monotonic()
        self._thread = threading.Thread(target=self._heartbeat, name="c3fs-lease", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                self._renew()
            except BackendError as exc:  # the command's own error says the store is gone
                log.log(_level(exc), "could not renew lock %s: %s", self.key, exc)
            if self.lost:
                return

    def _renew(self) -> None:
        with self._renewing:
            if not self.lost:
                self._renew_held()

    def _renew_held(self) -> None:
        started = time.monotonic()
        try:
            current = self.store.backend.get(self.key)
        except KeyMissing:
            current = b""
        if current != self._body and self.rejoin:
            log.error("lock %s was removed by another process while this one held it: "
                      "written again", self.key)
        elif current != self._body:
            self.lost = True
            log.error("lock %s was broken by another process while this one held it",
                      self.key)
            return
        body = self._next_body()
        self.store.backend.put(self.key, body)
        self._body = body
        self._confirmed = started

    def confirm(self, within: float = 1.0) -> None:
        """`check`, knowing: LockedError unless the store showed this lock ours less than
        `within` seconds ago; else it is read (and renewed) now. Before each irreversible
        step of a long one (gc's deletes): a process stopped for longer than its lease
        (SIGSTOP, a VM paused) whose lock was broken meanwhile finds out before the next
        delete, not at the heartbeat's next turn, up to a quarter lease later, while a push
        that broke it may be taking the blobs it deletes for stored."""
        if time.monotonic() - self._confirmed >= within:
            self._renew()
        self.check()

    def check(self) -> None:
        """LockedError if the lock was broken while held (do nothing irreversible then)."""
        if self.lost:
            raise LockedError(f"lock {self.key} was broken by another process while this one "
                              "held it (it could not renew it in time): run the command again")

    def release(self) -> None:
        """Stop renewing and remove the lock (unless another process broke it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost:
            self.store.backend.delete(self.key)

    def release_after_error(self) -> None:
        """`release` on the way out of a failure, without hiding it behind a second one (the
        store is often unreachable then): a lock left behind expires with its lease."""
        try:
            self.release()
        except BackendError as exc:
            log.log(_level(exc), "could not remove lock %s: %s", self.key, exc)


def _level(exc: BackendError) -> int:
    """A store that did not answer in time is the command's one error line already."""
    return logging.INFO if isinstance(exc, StoreTimeout) else logging.WARNING


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _command() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:4]]
    return " ".join(argv)[:120]


@contextlib.contextmanager
def push_lock(store: Store, wait: float = 0.0) -> Iterator[Lease]:
    """Hold a push lock; while a live gc holds the store, wait for it up to `wait` seconds
    (then LockedError, as at once with 0)."""
    lease = Lease(store, f"{PUSH_PREFIX}{token_hex(8)}")
    lease.acquire()
    try:
        _wait_for_gc(store, wait)
        yield lease
        lease.check()
    except BaseException:
        lease.release_after_error()
        raise
    lease.release()


def _wait_for_gc(store: Store, wait: float) -> None:
    """Return once no live gc holds the store (an expired gc lock is broken); a live one is
    waited for, up to `wait` seconds, saying so at once and every WAIT_NOTE seconds.

    Our push lock is already written: a gc starting meanwhile refuses, so the gc waited for
    is the one that holds the store now, and we go on the moment it releases it."""
    started = time.monotonic()
    noted = -WAIT_NOTE
    while True:
        gc = read_lock(store, GC_KEY)
        if gc is None:
            break
        alive, expired = live_locks(store, [gc])
        if not alive:
            if all(break_lock(store, lock) for lock in expired):
                break
            continue  # renewed while we judged it: alive after all
        waited = time.monotonic() - started
        if waited >= wait:
            raise LockedError(f"gc is running on this store ({alive[0].holder()}); push again "
                              f"when it has finished{_waited(waited, wait)}")
        if waited - noted >= WAIT_NOTE:
            noted = waited
            log.warning("gc is running on this store (%s, since %s): waiting for it to finish, "
                        "%.0f s so far, up to %s (--lock-wait)", alive[0].holder(),
                        _clock(alive[0].started), waited, _seconds(wait))
        time.sleep(min(GC_POLL, wait - waited))
    if time.monotonic() - started >= 1:
        log.warning("gc has finished after %.0f s of waiting: pushing", time.monotonic() - started)


WAIT_NOTE = 30.0  # seconds between two notes of a push waiting for gc
GC_POLL = 1.0  # seconds between two looks at the gc lock of this host (another host's: as
# live_locks watches it, until its body changes)


def _waited(waited: float, wait: float) -> str:
    return f" (waited {waited:.0f} s, --lock-wait {wait:g})" if wait > 0 else ""


def _seconds(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:g} min" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} s"


def _clock(started: float | None) -> str:
    """A lock's start for people, by its holder's clock ("?" when it does not say)."""
    return "?" if started is None else time.strftime("%H:%M:%S", time.localtime(started))


@contextlib.contextmanager
def gc_lock(store: Store) -> Iterator[Lease]:
    lease = Lease(store, GC_KEY)
    _take(store, lease, lambda holder: f"another gc is running on this store{holder}")
    try:
        _refuse_live_pushes(store)
        yield lease
        lease.check()
    except BaseException:
        lease.release_after_error()
        raise
    lease.release()


def _take(store: Store, lease: Lease, refusal: Callable[[str], str],
          watching: Callable[[LockInfo], None] | None = None) -> None:
    """Create `lease`'s lock (create-only) and hold it. One held by a live process is
    LockedError(refusal(" (<its holder>)")); a dead one's is broken and taken over (one of
    another host is first watched for up to its lease, `watching` told so)."""
    for _ in range(2):
        try:
            lease.acquire(create=True)
            return
        except KeyExists:
            held = read_lock(store, lease.key)
            if held is None:
                continue
            if watching is not None and held.alive_here() is None:
                watching(held)
            alive, expired = live_locks(store, [held])
            if alive:
                raise LockedError(refusal(f" ({alive[0].holder()})")) from None
            for lock in expired:
                break_lock(store, lock)
    raise LockedError(refusal(""))


def reserve_job(store: Store, job_id: str) -> Lease:
    """Reserve `job_id` for a run (`locks/run-<job id>`), held until released: LockedError
    naming the holder while another live run of that id holds it; that of a dead run (killed,
    its host gone) is taken over, one of another host once it has gone unrenewed for its lease.
    The caller releases it once the job's ref exists (or could not be made)."""
    lease = Lease(store, f"{RUN_PREFIX}{job_id}")

    def watching(held: LockInfo) -> None:
        log.warning("job id %s is reserved by a run of another host, %s: checking whether it "
                    "is still running (up to %.0f s: a live run renews it)", job_id,
                    held.holder(), held.lease)

    _take(store, lease, lambda holder: f"job id {job_id!r} is taken by a run in progress"
          f"{holder}: give this job another id (-j)", watching)
    return lease


def _refuse_live_pushes(store: Store) -> None:
    pushes = [lock for key, _ in store.backend.list(PUSH_PREFIX)
              if (lock := read_lock(store, key)) is not None]
    alive, expired = live_locks(store, pushes)
    if alive:
        raise LockedError(f"{len(alive)} push(es) in progress ({alive[0].holder()}"
                          f"{', ...' if len(alive) > 1 else ''}); run gc when they have finished")
    for lock in expired:
        break_lock(store, lock)
