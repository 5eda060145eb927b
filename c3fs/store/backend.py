"""The backend protocol: a few verbs over named objects, and the errors they raise.

A backend is dumb storage. It knows nothing of packs or jobs; `Store` gives keys meaning.
Every backend must pass `tests/test_backend_conformance.py`. Every backend has every verb:
those meaningless for it (`flush` where a put is durable at once, `sweep_temp` where a
crashed writer leaves nothing, `invalidate` and `uncached` where nothing is cached) are
no-ops (`BackendDefaults`). What a backend is, callers learn from `capabilities`, never by
probing its type: `LOCAL` (a directory on this machine).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from typing import Protocol

from c3fs.errors import StoreError

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

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `prefix`, in no set order."""

    def delete(self, key: str) -> None:
        """Remove `key`; removing a missing key is not an error."""

    def sweep_temp(self, older_than: float = 3600.0) -> int:
        """Remove what writers that crashed left behind; return how many objects."""

    def invalidate(self, key: str, offset: int, length: int) -> bool:
        """Drop cached copies of this range (its bytes proved bad); True if any were."""

    @property
    def uncached(self) -> Backend:
        """The same store, read without any cache (for `verify`)."""

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

    def occupied(self) -> bool:
        return False


class RetryingBackend:
    """Wraps a backend: temporary errors are retried with exponential backoff and jitter."""

    def __init__(self, inner: Backend, attempts: int = 5, base_delay: float = 0.2,
                 deadline: float = 60.0) -> None:
        """At most `attempts` tries, and none begun `deadline` seconds after the first: a
        server that takes every request and answers none costs about a minute, not
        attempts x the request timeout."""
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.attempts = attempts
        self.base_delay = base_delay
        self.deadline = deadline

    def _retry(self, what: str, fn, *args, **kwargs):
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except TemporaryBackendError as exc:
                delay = self.base_delay * 2 ** (attempt - 1) * (0.5 + random.random())
                if attempt == self.attempts or time.monotonic() + delay - started >= self.deadline:
                    raise
                log.info("%s failed (%s); retry %d in %.1fs", what, exc, attempt, delay)
                time.sleep(delay)
        raise AssertionError("unreachable")

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

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return iter(self._retry(f"list {prefix}", lambda: list(self.inner.list(prefix))))

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

    def occupied(self) -> bool:
        return self._retry("list", self.inner.occupied)
