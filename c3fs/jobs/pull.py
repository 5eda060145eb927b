"""`c3fs pull`: download jobs' artifacts into DEST/<job id>/.

With no job named, every SUCCEEDED job not pulled before (remembered in the local index)
is pulled. A job is marked pulled only once its copy is complete; the copier skips files
already present with the same size and mtime, so an interrupted pull run again only
fetches what is missing or different.

Size and mtime are trusted only where the destination can hold nothing but this job's files
(or none): no mark (a first pull, or its re-run after an interruption), or a mark of this
root at this destination. Where the mark names another root (a re-created job: reproducible
builds, `cp -p` and untarred files keep their mtimes) or another destination, a file with
the job's size and mtime is skipped only if its bytes match (`Copier(check_content=True)`),
so that an old file is never kept as the new job's; files that match are left untouched.
A re-run of such a pull after an interruption compares again (the mark still names the
old root): the cost of one read of the local files, next to fetching them.

A mark (`pulled/<job id>` in the index's local table, JSON) names the job's root tree, so a
job removed and pushed again under the same id with other content is pulled again. Marks
written before they named the root (`{"dest", "time"}`) stand for the job that existed when
they were written: a job created after the mark is pending again.

A job re-created with other content is pulled into the same DEST/<job id>/: its files
replace the old job's, and files the old job had but the new one does not are left there
(they may be the user's own); the pull says so in one warning, with how many and a few
names, so that nothing is deleted behind the user's back.

Damaged data in one job does not stop the others: each job is copied as far as it can be
(`Copier`), only the jobs copied in full are marked, and the pull then fails with one
`PullIncomplete` naming the jobs that were not (with one job alone, with its own error).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from c3fs.errors import BlobUnavailable, DataError, FormatError, one_line
from c3fs.fsutil import count, sorted_names
from c3fs.jobs.download import Copier, CopyIncomplete, CopyStats
from c3fs.objects.job import JOB, SUCCEEDED, JobRecord
from c3fs.repo import Repo
from c3fs.vfs import Vfs

log = logging.getLogger(__name__)


@dataclass
class Pulled:
    record: JobRecord
    dest: str
    stats: CopyStats


class PullIncomplete(DataError):
    """Some jobs could not be copied in full (damaged data, each file or directory logged);
    they stay pending. `pulled` holds the jobs that were."""

    def __init__(self, failed: list[str], pulled: list[Pulled]) -> None:
        self.failed = failed
        self.pulled = pulled
        super().__init__(
            f"{count(len(failed), 'job')} not pulled in full ({', '.join(failed)}): damaged "
            f"data, named above; {count(len(pulled), 'job')} pulled in full")


def pending_jobs(repo: Repo) -> list[JobRecord]:
    """SUCCEEDED jobs never pulled to this machine, oldest first."""
    repo.refresh(force=True)
    return [r for r in repo.iter_records(JOB, by_created=True)
            if r.status == SUCCEEDED and not is_pulled(repo, r)]


def is_pulled(repo: Repo, record: JobRecord) -> bool:
    """Whether this job, by id and root, was pulled here (an old mark: see the module doc)."""
    raw = repo.index.local_get(f"pulled/{record.id}")
    if raw is None:
        return False
    try:
        mark = json.loads(raw)
    except ValueError:
        return False  # pulled again: unchanged files are skipped
    if not isinstance(mark, dict):
        return False
    if "root" in mark:
        return mark["root"] == record.root
    time_pulled = mark.get("time")
    return isinstance(time_pulled, (int, float)) and time_pulled >= record.created


def to_pull(repo: Repo, job_ids: list[str]) -> list[JobRecord]:
    """The records of `job_ids`; with none, those of every completed job not pulled here
    before (`pending_jobs`)."""
    return [repo.record(JOB, j) for j in job_ids] if job_ids else pending_jobs(repo)


def pull_total(records: list[JobRecord]) -> int | None:
    """The bytes a pull of `records` goes through (the progress it reports, unchanged files
    too), from their records; None if a record does not say (an empty job's 0 does)."""
    if any(r.files and not r.logical_bytes for r in records):
        return None
    return sum(r.logical_bytes for r in records)


def pull(repo: Repo, job_ids: list[str], dest: str,
         progress: Callable[[int], None] | None = None, keep_setuid: bool = False,
         records: list[JobRecord] | None = None,
         files_done: Callable[[int], None] | None = None, fork: bool = False) -> list[Pulled]:
    """`records`: `to_pull(repo, job_ids)`, if the caller has them (the CLI sizes its
    progress bar with them); `progress`, `files_done` and `fork`: as the Copier's."""
    if records is None:
        records = to_pull(repo, job_ids)
    vfs = Vfs(repo)
    done: list[Pulled] = []
    failed: list[tuple[str, DataError | FormatError]] = []
    for record in records:
        target = os.path.join(dest, record.id)
        recreated = _recreated(repo, record) and os.path.isdir(target)
        try:
            copier = Copier(vfs, progress=progress, keep_setuid=keep_setuid,
                            check_content=_may_hold_other(repo, record, target),
                            files_done=files_done, fork=fork)
            stats = copier.copy(vfs.ref_root(record), target, follow=False)  # c3fs named it
        except (DataError, FormatError) as exc:
            if isinstance(exc, BlobUnavailable):  # the store did not answer: stop
                raise
            failed.append((record.id, exc))
            continue
        _mark_pulled(repo, record, target)
        if recreated:
            _warn_extras(vfs, record, target)
        done.append(Pulled(record, target, stats))
    if len(failed) == 1 and not done:
        raise failed[0][1]  # as `cp -r` says it
    if failed:
        for _, exc in failed:
            if not isinstance(exc, CopyIncomplete):  # the job's root: not logged yet
                log.error("%s", one_line(str(exc)))
        raise PullIncomplete([job_id for job_id, _ in failed], done)
    return done


def _recreated(repo: Repo, record: JobRecord) -> bool:
    """Whether an earlier pull here was of another job under this id (another root)."""
    raw = repo.index.local_get(f"pulled/{record.id}")
    try:
        mark = json.loads(raw) if raw is not None else None
    except ValueError:
        return False
    return isinstance(mark, dict) and mark.get("root", record.root) != record.root


def _may_hold_other(repo: Repo, record: JobRecord, target: str) -> bool:
    """Whether `target` may hold files of another job under this id with the same sizes and
    mtimes: it exists and the mark names another root (or an old mark, another job) or
    another destination. No mark: trusted, as `cp` trusts what it finds."""
    raw = repo.index.local_get(f"pulled/{record.id}")
    if raw is None or not os.path.isdir(target):
        return False
    try:
        dest = json.loads(raw).get("dest")
    except (ValueError, AttributeError):
        return True
    return not is_pulled(repo, record) or dest != os.path.abspath(target)


def _warn_extras(vfs: Vfs, record: JobRecord, target: str) -> None:
    extras = _extras(vfs, vfs.ref_root(record), os.fsencode(target))
    shown = [os.fsdecode(p) for p in itertools.islice(extras, 3)]
    n = len(shown) + sum(1 for _ in extras)
    if n:
        more = ", ..." if n > len(shown) else ""
        log.warning("job %s was re-created with other content since it was pulled to %s; "
                    "%s there, not in the new job, %s left in place (%s%s): remove what the "
                    "old job left", record.id, target, count(n, "path"),
                    "is" if n == 1 else "are", one_line(", ".join(shown)), more)


EXTRAS_RUN = 65_536  # local names sorted in memory at once by `_extras` (more: runs on disk)


def _extras(vfs: Vfs, node, path: bytes) -> Iterator[bytes]:
    """Entries under the local directory `path` that the job's directory `node` lacks, in
    name order, depth first: the local names, sorted (`EXTRAS_RUN` at a time, then merged
    from disk), walked beside the tree's entries (in name order, a paged tree page by page):
    a directory of 2 M entries is held whole on neither side."""
    children = vfs.iter_children(node, keep=False)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        local = sorted_names(fd, EXTRAS_RUN)  # (read whole: the fd may go)
    finally:
        os.close(fd)
    theirs = next(children, None)
    for name in local:
        while theirs is not None and theirs[0] < name:
            theirs = next(children, None)
        local_path = os.path.join(path, name)
        if theirs is None or theirs[0] != name:
            yield local_path
        elif theirs[1].is_dir and _is_dir(local_path):
            yield from _extras(vfs, theirs[1], local_path)


def _is_dir(path: bytes) -> bool:
    """Whether `path` is a directory, not following a symlink (gone: not one)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _mark_pulled(repo: Repo, record: JobRecord, target: str) -> None:
    mark = {"dest": os.path.abspath(target), "time": time.time(), "root": record.root}
    repo.index.local_put(f"pulled/{record.id}", json.dumps(mark).encode())
