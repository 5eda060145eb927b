"""The backend protocol: a few verbs over named objects, and the errors they raise.

A backend is dumb storage. It knows nothing of packs or jobs; `Store` gives keys meaning.
Every backend must pass `tests/test_backend_conformance.py`. Every backend has every verb:
those meaningless for it (`flush` where a put is durable at once, `sweep_temp` where a
crashed writer leaves nothing, `invalidate`, `uncached` and `direct` where nothing is cached)
are no-ops (`BackendDefaults`). What a backend is, callers learn from `capabilities`, never by
probing its type: `LOCAL` (a directory on this machine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from c3fs.errors import StoreError, UsageError

log = logging.getLogger(__name__)
LOCAL = "local"  # a directory on this machine: cheap to list, so listings are refreshed often
Data = bytes | list[bytes]  # an object given whole, or as parts (a pack)


def joined(data: Data) -> bytes:
    """`data` as one buffer. A list of parts is joined and then emptied, so that the parts
    are freed while the buffer is sent (S3 push of the full bench dataset, peak RSS:
    315-340 MiB -> 259 MiB)."""
    if not isinstance(data, list):
        return data
    whole = b"".join(data)
    data.clear()
    return whole


class BackendError(StoreError):
    """A backend operation failed permanently (permissions, bad credentials, full disk)."""


class TemporaryBackendError(BackendError):
    """A backend operation failed in a way that may pass (timeout, 5xx, connection reset)."""


class KeyMissing(BackendError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key}: no such object in the store")


class KeyExists(BackendError):
    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"{key}: already exists in the store")


class Backend(Protocol):
    url: str
    capabilities: frozenset[str]

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of `key` from `offset` (`length` of them, or to the end). KeyMissing if absent."""

    def size(self, key: str) -> int:
        """Size of `key` in bytes. KeyMissing if absent."""

    def put(self, key: str, data: Data, *, sync: bool = True) -> None:
        """Store `data` at `key`, replacing any object there; atomic: all or nothing visible.
        `sync=False` may leave it not yet durable until `flush([key])`."""

    def flush(self, keys: list[str]) -> None:
        """Make keys put with sync=False durable (KeyMissing for one that is not there, where
        puts can be lazy; a no-op where every put is durable when it returns)."""

    def create(self, key: str, data: bytes) -> None:
        """Like put, but KeyExists if `key` already exists (never overwrites)."""

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`, in no set order;
        with `after`, only keys that sort after it (S3's start-after: a listing of what is
        new in a time-ordered key family costs requests for the new keys only)."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove what writers that crashed left behind; return how many objects."""

    def invalidate(self, key: str, offset: int, length: int) -> bool:
        """Drop cached copies of this range (its bytes proved bad); True if any were."""

    @property
    def uncached(self) -> Backend:
        """The same store, read without any cache (for `verify`)."""

    @property
    def direct(self) -> Backend:
        """The same store, every read fetching exactly the range asked for and keeping it
        nowhere (a copy's merged reads: each range is read once, already as big as a
        request should be, so rounding it to cache blocks would only fetch more). Its `get`
        may return a read-only buffer (memoryview) instead of bytes: the bytes as the
        client received them, not copied once more (S3: a merged GET of 4 MiB)."""

    def occupied(self) -> bool:
        """Whether the place holds something other than a c3fs store (a new store is never
        made there)."""


class BackendDefaults:
    """The verbs that are no-ops for a backend without temp files, caches or lazy puts."""

    capabilities: frozenset[str] = frozenset()

    def flush(self, keys: list[str]) -> None:
        pass  # every put is durable when it returns

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        return 0

    def invalidate(self, key: str, offset: int, length: int) -> bool:
        return False

    @property
    def uncached(self) -> Backend:
        return self

    @property
    def direct(self) -> Backend:
        return self

    def occupied(self) -> bool:
        return False


class StoreTimeout(TemporaryBackendError):
    """The store did not answer within the operation's deadline (`Deadline`)."""


DEADLINE_ENV = "C3FS_STORE_DEADLINE"
DEFAULT_DEADLINE = 60.0
PROBE_INTERVAL = 1.0  # between probes of a store that did not answer (the mount daemon)
MAX_DELAY = 4.0  # the longest backoff between two tries of a request, before jitter


def deadline_seconds() -> float:
    """$C3FS_STORE_DEADLINE seconds (default 60): how long an operation waits for a store
    that does not answer."""
    raw = os.environ.get(DEADLINE_ENV)
    try:
        value = float(raw) if raw else DEFAULT_DEADLINE
    except ValueError:
        raise UsageError(f"{DEADLINE_ENV}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UsageError(f"{DEADLINE_ENV} must be more than 0 seconds")
    return value


class Deadline:
    """How long one user-visible operation may wait for the store, shared by all its
    requests (parallel or one after another, retries included).

    The clock runs while at least one request is outstanding and restarts whenever one
    succeeds, or a request starts when none was outstanding: a slow but answering store, or
    local work between requests, never uses it up. Once it runs out, every waiting request
    fails at once (`StoreTimeout`), and so does every later one: a command is over.

    With `rearm` (the mount daemon, whose every read is an operation) a spent deadline stays
    spent only until the store answers again: `RetryingBackend` then probes it in the
    background, one cheap request at a time, and `recovered` starts a new clock. Meanwhile
    reads fail at once: the kernel's retry of a failed page, or `cat` moving on to its next
    file, costs nothing. Thread-safe.
    """

    def __init__(self, seconds: float | None = None, rearm: bool = False) -> None:
        self.seconds = deadline_seconds() if seconds is None else seconds
        self.rearm = rearm
        self.answered = False  # the store has answered a request of this deadline's
        self._lock = threading.Lock()
        self._busy = 0
        self._since = time.monotonic()
        self._spent = False

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one request and its retries."""
        with self._lock:
            if self._busy == 0 and not self._spent:
                self._since = time.monotonic()
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1

    def progress(self) -> None:
        """A request succeeded: the store answers."""
        with self._lock:
            self.answered = True
            if not self._spent:
                self._since = time.monotonic()

    def spend(self) -> None:
        """A request gave up, its next try due after the deadline: spent now, not restarted
        by the next request (the command's cleanup would wait a whole deadline again)."""
        with self._lock:
            self._spent = True

    def recovered(self) -> None:
        """The store answers again (a probe succeeded): a rearming deadline starts anew."""
        with self._lock:
            if self.rearm:
                self._since, self._spent = time.monotonic(), False

    @property
    def spent(self) -> bool:
        return self.left() <= 0

    def left(self) -> float:
        """Seconds left (0 once spent)."""
        with self._lock:
            now = time.monotonic()
            if not self._spent and now - self._since >= self.seconds:
                self._spent = True
            return 0.0 if self._spent else self.seconds - (now - self._since)


class RetryingBackend:
    """Wraps a backend: temporary errors are retried with exponential backoff and jitter,
    and no request waits past the operation's `Deadline`.

    A store that has not answered yet (a wrong endpoint, nothing listening) gets `attempts`
    tries, a few seconds; once it has answered, a request is tried until the deadline: a
    connection refused or reset mid-command is a server restarting, and is waited for."""

    def __init__(self, inner: Backend, attempts: int = 5, base_delay: float = 0.2,
                 deadline: Deadline | float | None = None) -> None:
        """`attempts` tries of a request before the store first answers, then as many as fit
        in `deadline` (a shared Deadline, or its seconds; default $C3FS_STORE_DEADLINE): a
        server that takes every request and answers none costs one deadline per operation,
        not attempts x the request timeout."""
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.attempts = attempts
        self.base_delay = base_delay
        self.deadline = deadline if isinstance(deadline, Deadline) else Deadline(deadline)
        self._probe_lock = threading.Lock()
        self._probing = False

    def _retry(self, what: str, fn, *args, **kwargs):
        with self.deadline.request():
            attempt = 0
            while True:
                attempt += 1
                try:
                    result = self._within(what, fn, *args, **kwargs)
                except TemporaryBackendError as exc:
                    delay = self._delay(attempt)
                    if self._give_up(exc, attempt, delay):
                        raise
                    log.info("%s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
                    time.sleep(delay)
                    continue
                self.deadline.progress()
                return result

    def _delay(self, attempt: int) -> float:
        """Exponential backoff, at most MAX_DELAY (a store back from a restart is seen within
        seconds), with jitter (-50 % to +50 %: clients that failed together spread out)."""
        return min(self.base_delay * 2 ** (attempt - 1), MAX_DELAY) * (0.5 + _jitter())

    def _give_up(self, exc: TemporaryBackendError, attempt: int, delay: float) -> bool:
        if isinstance(exc, StoreTimeout):
            return True
        if delay >= self.deadline.left():  # the next try would come after the deadline:
            self.deadline.spend()  # the operation is over, and its later requests with it
            self._probe()
            return True
        return attempt >= self.attempts and not self.deadline.answered

    def _within(self, what: str, fn, *args, **kwargs):
        """`fn(*args)`, waited for no longer than the deadline allows. A call still running
        then is left to finish in its thread (bounded by the request timeout) and forgotten."""
        left = self.deadline.left()
        if left <= 0:
            self._probe()
            raise self._timeout(what)
        done = threading.Event()
        outcome: list = []

        def call() -> None:
            try:
                outcome.append((True, fn(*args, **kwargs)))
            except BaseException as exc:  # handed to the waiting caller
                outcome.append((False, exc))
            done.set()

        threading.Thread(target=call, name="c3fs-request", daemon=True).start()
        while not done.wait(left):  # another request's success may have moved the deadline
            left = self.deadline.left()
            if left <= 0:
                self._probe()
                raise self._timeout(what)
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _probe(self) -> None:
        """With a rearming deadline spent, ask the store for `config`'s size in a thread, one
        request at a time, until it answers; then the deadline starts anew."""
        if not self.deadline.rearm:
            return
        with self._probe_lock:
            if self._probing:
                return
            self._probing = True
        threading.Thread(target=self._probe_until_answered, name="c3fs-probe",
                         daemon=True).start()

    def _probe_until_answered(self) -> None:
        try:
            while True:
                try:
                    self.inner.size("config")
                    break
                except TemporaryBackendError:
                    time.sleep(PROBE_INTERVAL)
                except BackendError:  # an answer all the same
                    break
            log.info("the store at %s answers again", self.url)
            self.deadline.recovered()
        finally:
            with self._probe_lock:
                self._probing = False

    def _timeout(self, what: str) -> StoreTimeout:
        where = getattr(self.inner, "endpoint", None) or self.url
        return StoreTimeout(f"{what}: no answer from {where} within {self.deadline.seconds:g} s "
                            f"({DEADLINE_ENV}): timed out")

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(f"get {key}", self.inner.get, key, offset, length)

    def size(self, key: str) -> int:
        return self._retry(f"stat {key}", self.inner.size, key)

    def put(self, key: str, data: Data, *, sync: bool = True) -> None:
        data = joined(data)  # every attempt sends the same bytes
        self._retry(f"put {key}", self.inner.put, key, data, sync=sync)

    def flush(self, keys: list[str]) -> None:
        self._retry("flush", self.inner.flush, keys)

    def create(self, key: str, data: bytes) -> None:
        self._retry(f"create {key}", self.inner.create, key, data)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        return iter(self._retry(f"list {prefix}", lambda: list(self.inner.list(prefix, after))))

    def delete(self, key: str) -> None:
        self._retry(f"delete {key}", self.inner.delete, key)

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        return self.inner.sweep_temp(older_than)

    def invalidate(self, key: str, offset: int, length: int) -> bool:
        return self.inner.invalidate(key, offset, length)

    @property
    def uncached(self) -> Backend:
        inner = self.inner.uncached
        return self if inner is self.inner else RetryingBackend(
            inner, self.attempts, self.base_delay, self.deadline)

    @property
    def direct(self) -> Backend:
        inner = self.inner.direct
        return self if inner is self.inner else RetryingBackend(
            inner, self.attempts, self.base_delay, self.deadline)

    def occupied(self) -> bool:
        return self._retry("list", self.inner.occupied)


def _jitter() -> float:
    """A random fraction, 0 to 1 (`random` imported only when a retry needs one)."""
    import random

    return random.random()
