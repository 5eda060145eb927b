"""Push and gc locks, as objects in the store so they work across machines.

A push creates `locks/push-<token>` before it writes anything and removes it at the end;
gc creates `locks/gc` (create-only) and then refuses to run while any fresh push lock
exists. A push refuses to start while `locks/gc` exists. Each side writes its own lock
before it looks for the other's, so at least one of two racing parties sees the other.
Locks older than `STALE` seconds, or whose process on this host is gone (a crash), are
ignored and may be removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator

from c3fs.errors import FormatError, LockedError
from c3fs.objects.ids import token_hex
from c3fs.objects.nesting import check_json_depth
from c3fs.store.backend import BackendError, KeyExists, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)

STALE = 6 * 3600.0
GC_KEY = "locks/gc"


def _lock_body() -> bytes:
    return json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "time": time.time()}).encode()


def _is_fresh(store: Store, key: str) -> bool:
    """A lock counts unless it is old, or its process on this host is gone."""
    try:
        raw = store.backend.get(key)
        check_json_depth(raw, "lock")
        body = json.loads(raw)
        if body["host"] == os.uname().nodename and not process_alive(int(body["pid"])):
            return False
        return time.time() - float(body["time"]) < STALE
    except KeyMissing:
        return False
    except (FormatError, ValueError, KeyError, TypeError):
        return True  # unreadable: be careful, treat as held


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def push_lock(store: Store) -> Iterator[None]:
    key = f"locks/push-{token_hex(8)}"
    store.backend.put(key, _lock_body())
    try:
        if _is_fresh(store, GC_KEY):
            raise LockedError("gc is running on this store; push again when it has finished")
        yield
    except BaseException:
        _release_after_error(store, key)
        raise
    store.backend.delete(key)


@contextlib.contextmanager
def gc_lock(store: Store) -> Iterator[None]:
    if not _is_fresh(store, GC_KEY):
        store.backend.delete(GC_KEY)
    try:
        store.backend.create(GC_KEY, _lock_body())
    except KeyExists:
        raise LockedError("another gc is running on this store") from None
    try:
        pushes = [k for k, _ in store.backend.list("locks/push-") if _is_fresh(store, k)]
        if pushes:
            raise LockedError(f"{len(pushes)} push(es) in progress; run gc when they have finished")
        yield
    except BaseException:
        _release_after_error(store, GC_KEY)
        raise
    store.backend.delete(GC_KEY)


def _release_after_error(store: Store, key: str) -> None:
    """Remove our lock on the way out of a failure, without hiding that failure behind a
    second one (the store is often unreachable then). A lock left behind goes stale."""
    try:
        store.backend.delete(key)
    except BackendError as exc:
        log.warning("could not remove lock %s: %s", key, exc)
