"""`c3fs pull`: download jobs' artifacts into DEST/<job id>/.

With no job named, every SUCCEEDED job not pulled before (remembered in the local index)
is pulled. A job is marked pulled only once its copy is complete; the copier skips files
already present with the same size and mtime, so an interrupted pull run again only
fetches what is missing or different.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from c3fs.jobs.download import Copier, CopyStats
from c3fs.objects.job import JOB, SUCCEEDED, JobRecord
from c3fs.repo import Repo
from c3fs.vfs import Vfs

log = logging.getLogger(__name__)


@dataclass
class Pulled:
    record: JobRecord
    dest: str
    stats: CopyStats


def pending_jobs(repo: Repo) -> list[JobRecord]:
    """SUCCEEDED jobs never pulled to this machine, oldest first."""
    repo.refresh(force=True)
    jobs = [r for r in repo.jobs() if r.status == SUCCEEDED and not is_pulled(repo, r.id)]
    return sorted(jobs, key=lambda r: r.created)


def is_pulled(repo: Repo, job_id: str) -> bool:
    return repo.index.local_get(f"pulled/{job_id}") is not None


def pull(repo: Repo, job_ids: list[str], dest: str,
         progress: Callable[[int], None] | None = None) -> list[Pulled]:
    records = [repo.record(JOB, j) for j in job_ids] if job_ids else pending_jobs(repo)
    vfs = Vfs(repo)
    done = []
    for record in records:
        target = os.path.join(dest, record.id)
        stats = Copier(vfs, progress=progress).copy(vfs.ref_root(record), target)
        mark = json.dumps({"dest": os.path.abspath(target), "time": time.time()}).encode()
        repo.index.local_put(f"pulled/{record.id}", mark)
        done.append(Pulled(record, target, stats))
    return done
