"""Storage accounting: what the store holds, what jobs were charged, the soft quota."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from c3fs.objects.job import DATASET, JOB
from c3fs.repo import Repo


@dataclass
class Usage:
    jobs: int = 0
    datasets: int = 0
    logical_bytes: int = 0
    charged_bytes: int = 0  # sum of the stored deltas recorded when jobs were registered
    files: int = 0


@dataclass
class Balance:
    stored_bytes: int  # bytes of every pack in the store, now
    packs: int
    quota: int | None
    total: Usage
    projects: dict[str, Usage] = field(default_factory=dict)

    @property
    def saving(self) -> float:
        """Share of the logical bytes that dedup and compression saved (0..1)."""
        logical = self.total.logical_bytes
        return 1 - self.stored_bytes / logical if logical else 0.0

    @property
    def used_share(self) -> float | None:
        return self.stored_bytes / self.quota if self.quota else None

    @property
    def over_quota(self) -> bool:
        return self.quota is not None and self.stored_bytes > self.quota


def balance(repo: Repo) -> Balance:
    repo.refresh(full=True)
    sizes = repo.index.pack_sizes()
    result = Balance(sum(sizes.values()), len(sizes), repo.store.config.quota, Usage())
    for record in itertools.chain(repo.iter_records(JOB), repo.iter_records(DATASET)):
        for usage in (result.total, result.projects.setdefault(record.project, Usage())):
            if record.kind == "job":
                usage.jobs += 1
            else:
                usage.datasets += 1
            usage.logical_bytes += record.logical_bytes
            usage.charged_bytes += record.stored_delta
            usage.files += record.files
    return result
