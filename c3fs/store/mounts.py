"""Mount leases: a mount of one job or dataset says so in the store while it serves.

`rm` refuses to remove a job or dataset that a live mount reads (unless forced), and `gc`
keeps every blob a live mount can read, also once its job is removed (rm --force, an rm
from an older c3fs, a job pushed again under its id): a mounted job's reads never start
failing because of a gc, on this host or another that shares the store.

Key: `locks/mount-<kind>-<name>-<token>` (kind `job` or `dataset`, token 16 hex digits), a
lock of c3fs.store.locks: renewed every lease / 4 by the mount's daemon, removed when it
ends, judged as locks are (on this host by pid and start time, at once: a mount killed -9
is seen dead; elsewhere by whether it is renewed within its lease). Its body is a lock's
plus "root" (the mounted tree's id, hex) and "mountpoint". The key says which ref it
holds (rm lists only the leases of what it removes); the body, what to keep.

Order, so that no gc misses a mount: the daemon resolves its ref, writes its lease, then
reads the ref from the store again and starts only if it still leads to the tree resolved.
gc reads the refs, then the leases. Either gc sees the ref, or the lease, or the mount
refuses to start.

A mount of the whole namespace (or of /jobs, /projects/<p>) holds no lease: a job removed
leaves it at its next poll, and gc frees what only that job used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from c3fs.errors import NotFound
from c3fs.objects.ids import is_name, token_hex
from c3fs.objects.job import DATASET, JOB
from c3fs.store.locks import MOUNT_PREFIX, Lease, LockInfo, break_lock, live_locks, read_lock
from c3fs.store.store import Store

log = logging.getLogger(__name__)
Ref = tuple[str, str]  # (kind, name)
TOKEN_LEN = 16


def lease_key(ref: Ref) -> str:
    return f"{MOUNT_PREFIX}{ref[0]}-{ref[1]}-{token_hex(TOKEN_LEN // 2)}"


def ref_of(key: str) -> Ref | None:
    """The (kind, name) a mount lease's key names; None if `key` is not one."""
    if not key.startswith(MOUNT_PREFIX):
        return None
    kind, _, rest = key[len(MOUNT_PREFIX):].partition("-")
    name, _, token = rest.rpartition("-")
    if kind not in (JOB, DATASET) or not is_name(name) or len(token) != TOKEN_LEN:
        return None
    return (kind, name) if all(c in "0123456789abcdef" for c in token) else None


def root_of(lease: LockInfo) -> bytes | None:
    """The id of the tree a mount lease keeps; None when its body does not say."""
    try:
        root = bytes.fromhex(lease.root)
    except ValueError:
        return None
    return root if len(root) == 32 else None


def where(lease: LockInfo) -> str:
    """Where a mount is, for messages: its mount point, and its host if not this one."""
    place = lease.mountpoint or "?"
    return place if lease.alive_here() is not None else f"{place} on {lease.host}"


# the mount's side ----------------------------------------------------------------------------
def register(store: Store, ref: Ref, tree_id: bytes, ref_root: bytes, mountpoint: str) -> Lease:
    """Hold a lease for a mount of `tree_id` (a tree of `ref`, whose root was `ref_root`
    when it was resolved) at `mountpoint`, renewed until `release`. BackendError when the
    store takes no write from this user (the mount then goes on unregistered); NotFound,
    the lease removed, when the ref no longer leads there (removed or pushed again meanwhile)."""
    lease = Lease(store, lease_key(ref), fields={"root": tree_id.hex(), "mountpoint": mountpoint},
                  rejoin=True)
    lease.acquire(create=True)
    try:
        now = store.get_ref(*ref).root_id  # after the lease: see the module doc
    except NotFound:
        now = None
    except BaseException:
        lease.release_after_error()
        raise
    if now != ref_root:
        lease.release_after_error()
        what = "removed" if now is None else "pushed again"
        raise NotFound(f"{ref[0]} {ref[1]} was {what} while mounting: nothing was mounted")
    log.info("registered this mount of %s %s in the store (%s)", *ref, lease.key)
    return lease


# rm's and gc's side -------------------------------------------------------------------------
def leases(store: Store, refs: list[Ref] | None = None) -> list[LockInfo]:
    """The mount leases of `refs` (default: all), as read now."""
    prefixes = [MOUNT_PREFIX] if refs is None else [f"{MOUNT_PREFIX}{k}-{n}-" for k, n in refs]
    found = []
    for prefix in prefixes:
        for key, _ in store.backend.list(prefix):
            held = ref_of(key)
            if held is None or (refs is not None and held not in refs):
                continue  # (a prefix also lists the leases of longer names)
            lease = read_lock(store, key)
            if lease is not None:
                found.append(lease)
    return found


def live(store: Store, found: list[LockInfo], *, watch: bool = True, remove: bool = True,
         say: Callable[[str], None] | None = None) -> list[LockInfo]:
    """The leases of `found` whose mounts live. Those of this host are judged at once; those
    of other hosts are watched for up to a lease (`watch`), else taken as live. Expired
    ones are removed (`remove`), with a warning naming their mount."""
    if not watch:
        judged = [(lease, lease.alive_here()) for lease in found]
        gone = [lease for lease, here in judged if here is False]
        alive = [lease for lease, here in judged if here is not False]
    else:
        others = {lease.host for lease in found if lease.alive_here() is None}
        if others and say is not None:
            longest = max(lease.lease for lease in found)
            say(f"checking whether the mounts on {', '.join(sorted(others))} are alive "
                f"(up to {longest:.0f} s)")
        alive, gone = live_locks(store, found)
    for lease in gone if remove else []:
        break_lock(store, lease)  # (it says so)
    return alive


def held(store: Store, refs: list[Ref], watch: bool = True,
         say: Callable[[str], None] | None = None) -> dict[Ref, list[LockInfo]]:
    """The live mounts of each of `refs` that has one (see `live`)."""
    found: dict[Ref, list[LockInfo]] = {}
    for lease in live(store, leases(store, refs), watch=watch, say=say):
        found.setdefault(ref_of(lease.key), []).append(lease)
    return found


def mounted_at(ref: Ref, found: list[LockInfo], most: int = 3) -> str:
    """"job X is mounted at /a, /b on host-b": one line, at most `most` places named."""
    places = sorted({where(lease) for lease in found})
    more = f" and {len(places) - most} more" if len(places) > most else ""
    return f"{ref[0]} {ref[1]} is mounted at {', '.join(places[:most])}{more}"
