"""Register a directory as a job (or dataset): ingest it, then create its ref.

The ref is created last, create-only, after every pack is durable: a job is either wholly
visible or not at all, and an id can never be taken twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from c3fs.errors import AlreadyExists, NotFound
from c3fs.fsutil import human
from c3fs.index import IndexUnavailable
from c3fs.ingest import Ingester, IngestStats
from c3fs.objects.ids import check_name, check_new_job_id, new_job_id
from c3fs.objects.job import DATASET, JOB, SUCCEEDED, JobRecord
from c3fs.repo import Repo
from c3fs.store.backend import KeyExists
from c3fs.store.locks import PUSH_LOCK_WAIT, push_lock

log = logging.getLogger(__name__)


def ensure_free(repo: Repo, kind: str, name: str) -> None:
    try:
        record = repo.store.get_ref(kind, name)
    except NotFound:
        return
    shared = "; dataset names are shared by every project" if kind == DATASET else ""
    raise AlreadyExists(f"{kind} {name!r} already exists in the store (project "
                        f"{record.project}){shared}")


def ingest(repo: Repo, build: Callable[[Ingester], bytes],
           make_record: Callable[[bytes, IngestStats], JobRecord],
           progress: Callable[[int], None] | None = None,
           changed: list[str] | None = None, vanished: list[str] | None = None,
           lock_wait: float = PUSH_LOCK_WAIT) -> JobRecord:
    """Run `build` (which stores trees and returns a root id), then register the record
    `make_record(root, stats)`, all under the push lock (a running gc is waited for up to
    `lock_wait` seconds). The paths of files that kept changing while they were read
    (stored as read, each named in a warning) are added to `changed`; those of files,
    symlinks and directories removed between their listing and their first read (not
    stored, each named in a warning) to `vanished`.

    Both the index sync and the ref are inside the lock: a gc can neither delete packs
    between our sync and our dedup lookups, nor see our new packs (and the old blobs we
    dedup against) as garbage before our ref names them.
    """
    with push_lock(repo.store, lock_wait) as lease:
        repo.index.sync(repo.store, refs=False)  # dedup against packs other machines wrote
        with Ingester(repo.store, repo.index, progress=progress) as ingester:
            root = build(ingester)
            ingester.sink.flush()
        if changed is not None:
            changed.extend(ingester.stats.changed)
        if vanished is not None:
            vanished.extend(ingester.stats.vanished)
        lease.check()  # a gc that broke our lock may have deleted what the ref would name
        return register(repo, make_record(root, ingester.stats))


def register(repo: Repo, record: JobRecord) -> JobRecord:
    try:
        repo.store.create_ref(record)
    except KeyExists:  # another push took the name first: say whose it is
        ensure_free(repo, record.kind, record.id)
        raise AlreadyExists(f"{record.kind} {record.id!r} already exists in the store") from None
    try:
        repo.index.put_record(record)
    except IndexUnavailable as exc:  # the ref is the truth: the job is registered
        log.warning("%s registered, but the local index could not record it (%s); the next "
                    "command learns it from the store", record.id, exc)
    _warn_quota(repo)
    return record


def _warn_quota(repo: Repo) -> None:
    quota = repo.store.config.quota
    if quota is None:
        return
    used = sum(repo.index.pack_sizes().values())
    if used > quota:
        log.warning("storage usage %s exceeds the quota of %s (soft quota: nothing is "
                    "rejected)", human(used), human(quota))


def _check_not_inside(repo: Repo, path: str | os.PathLike) -> None:
    """A local store inside the pushed directory (`c3fs push /`, `push ~` with the store in
    ~) would be read into itself while it grows: refused before anything is stored."""
    from c3fs.errors import UsageError
    from c3fs.store.backend import LOCAL

    if LOCAL not in repo.store.backend.capabilities:
        return
    top, store = os.path.realpath(path), os.path.realpath(repo.store.url)
    if store == top or store.startswith(top.rstrip("/") + "/"):
        raise UsageError(f"the store {store} is inside {os.fsdecode(path)}: a push would "
                         "store the store itself (push a directory that does not hold it)")


def push_dir(repo: Repo, path: str | os.PathLike, project: str, job_id: str | None = None,
             kind: str = JOB, progress: Callable[[int], None] | None = None,
             changed: list[str] | None = None, vanished: list[str] | None = None,
             lock_wait: float = PUSH_LOCK_WAIT, **fields) -> JobRecord:
    """Store `path` and register it as job `job_id` (a fresh id if None) of `project`;
    files that kept changing while read are added to `changed`, what was removed before
    it was read to `vanished`, and a running gc is waited for up to `lock_wait` seconds
    (see `ingest`)."""
    check_name(project, "project")
    if job_id is None:
        name = new_job_id()
    else:  # ("" is invalid, not "none")
        name = check_name(job_id, "dataset name") if kind == DATASET else check_new_job_id(job_id)
    ensure_free(repo, kind, name)
    _check_not_inside(repo, path)
    started = time.time()
    return ingest(repo, lambda ing: ing.ingest_dir(path),
                  lambda root, stats: record_for(kind, name, project, root, stats, started,
                                                 **fields),
                  progress, changed, vanished, lock_wait)


def record_for(kind: str, name: str, project: str, root: bytes, stats: IngestStats,
               started: float, **fields) -> JobRecord:
    now = time.time()
    base = dict(kind=kind, id=name, project=project, status=SUCCEEDED, created=now,
                started=started, ended=now, root=root.hex(), logical_bytes=stats.logical_bytes,
                files=stats.files, stored_delta=stats.stored_bytes, host=os.uname().nodename)
    base.update(fields)
    return JobRecord(**base)
