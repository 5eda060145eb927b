"""What the web view lists, from job records alone: tables of jobs and datasets (filtered,
sorted, paged), who consumes a ref, the lineage graph of a job, usage over time."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from c3fs.jobs.lineage import (  # noqa: F401  (the lineage graph lives in c3fs.jobs.lineage)
    Graph,
    GraphNode,
    Records,
    Ref,
    indexed_records,
    input_ref,
    lineage,
    ref_of,
)
from c3fs.objects.job import DATASET, JOB, JobRecord

PAGE = 100
SORTS = {
    "id": lambda r: r.id, "project": lambda r: (r.project, r.id),
    "status": lambda r: (r.status, r.reason, r.id), "size": lambda r: r.logical_bytes,
    "stored": lambda r: r.stored_delta, "files": lambda r: r.files,
    "age": lambda r: -(r.ended or r.created), "inputs": lambda r: len(r.inputs),
}
KIND_DIR = {JOB: "jobs", DATASET: "datasets"}


@dataclass(frozen=True)
class Query:
    kind: str = JOB
    project: str = ""
    status: str = ""
    text: str = ""
    sort: str = "age"
    descending: bool = False
    page: int = 1


@dataclass
class Listing:
    rows: list[JobRecord]
    total: int  # records matching the filters
    pages: int
    statuses: list[str]
    projects: list[str]


def listing(records: Iterable[JobRecord], query: Query) -> Listing:
    """One page of `records` filtered by project, status and id text, sorted (ties in the
    order given). The records are read once, as they come, and only the rows up to the
    page's are kept: the first page of 100,000 jobs holds 100 of them."""
    statuses: set[str] = set()
    projects: set[str] = set()
    total = 0

    def matching() -> Iterator[JobRecord]:
        nonlocal total
        for r in records:
            statuses.add(r.status)
            projects.add(r.project)
            if _matches(r, query):
                total += 1
                yield r

    key = SORTS.get(query.sort, SORTS["age"])
    first = heapq.nlargest if query.descending else heapq.nsmallest  # (as a stable sort)
    wanted = max(query.page, 1)
    rows = first(wanted * PAGE, matching(), key=key)
    pages = max(1, -(-total // PAGE))
    page = min(wanted, pages)  # past the end: the last page, among the rows kept
    return Listing(rows[(page - 1) * PAGE : page * PAGE], total, pages, sorted(statuses),
                   sorted(projects))


def _matches(record: JobRecord, query: Query) -> bool:
    return ((not query.project or record.project == query.project)
            and (not query.status or record.status == query.status)
            and (not query.text or query.text.lower() in record.id.lower()))


# usage over time ----------------------------------------------------------------------------
@dataclass
class Series:
    project: str
    points: list[tuple[float, int]]  # (time, cumulative bytes)


def usage_series(records: Iterable[JobRecord], measure: str = "stored",
                 max_points: int = 400) -> list[Series]:
    """Cumulative stored (charged) or logical bytes of each project over time, by when each
    job ended; at most `max_points` points per project (the last one always kept). Of each
    record only its time and bytes are kept."""
    by_project: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for r in records:
        by_project[r.project].append(
            (r.ended or r.created, r.stored_delta if measure == "stored" else r.logical_bytes))
    series = []
    for project, items in sorted(by_project.items()):
        items.sort(key=lambda item: item[0])
        total, points = 0, []
        for when, size in items:
            total += size
            points.append((when, total))
        step = max(1, -(-len(points) // max_points))
        series.append(Series(project, points[::step] + ([points[-1]] if
                                                         (len(points) - 1) % step else [])))
    return series

