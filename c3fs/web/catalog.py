"""What the web view lists, from job records alone: tables of jobs and datasets (filtered,
sorted, paged), who consumes a ref, the lineage graph of a job, usage over time."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from c3fs.errors import C3fsError
from c3fs.objects.job import DATASET, JOB, JobRecord
from c3fs.repo import Repo
from c3fs.vfs import split_path

PAGE = 100
SORTS = {
    "id": lambda r: r.id, "project": lambda r: (r.project, r.id),
    "status": lambda r: (r.status, r.reason, r.id), "size": lambda r: r.logical_bytes,
    "stored": lambda r: r.stored_delta, "files": lambda r: r.files,
    "age": lambda r: -(r.ended or r.created), "inputs": lambda r: len(r.inputs),
}
KIND_DIR = {JOB: "jobs", DATASET: "datasets"}
Ref = tuple[str, str]  # (kind, name)


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


def listing(records: list[JobRecord], query: Query) -> Listing:
    """One page of `records` filtered by project, status and id text, sorted."""
    matching = [r for r in records if _matches(r, query)]
    key = SORTS.get(query.sort, SORTS["age"])
    matching.sort(key=key, reverse=query.descending)
    pages = max(1, -(-len(matching) // PAGE))
    page = min(max(query.page, 1), pages)
    return Listing(matching[(page - 1) * PAGE : page * PAGE], len(matching), pages,
                   sorted({r.status for r in records}), sorted({r.project for r in records}))


def _matches(record: JobRecord, query: Query) -> bool:
    return ((not query.project or record.project == query.project)
            and (not query.status or record.status == query.status)
            and (not query.text or query.text.lower() in record.id.lower()))


def ref_of(path: str) -> Ref | None:
    """The job or dataset an input's ref names (`/jobs/<id>/...`,
    `/projects/<p>/jobs/<id>/...`, `/datasets/<name>`), or None."""
    try:
        parts = [p.decode(errors="replace") for p in split_path(path)]
    except C3fsError:
        return None
    if len(parts) >= 4 and parts[0] == "projects":
        parts = parts[2:]
    if len(parts) >= 2 and parts[0] in ("jobs", "datasets"):
        return (JOB if parts[0] == "jobs" else DATASET), parts[1]
    return None


def all_records(repo: Repo) -> dict[Ref, JobRecord]:
    repo.refresh()
    return {(r.kind, r.id): r for kind in (JOB, DATASET) for r in repo.records(kind)}


def consumers(records: dict[Ref, JobRecord]) -> dict[Ref, list[JobRecord]]:
    """For each ref, the jobs whose inputs name it."""
    found: dict[Ref, list[JobRecord]] = defaultdict(list)
    for record in records.values():
        for ref in {ref_of(i.ref) for i in record.inputs} - {None}:
            found[ref].append(record)
    return found


# lineage ------------------------------------------------------------------------------------
@dataclass
class GraphNode:
    ref: Ref
    label: str
    column: int  # < 0 upstream, 0 the job itself, > 0 downstream
    record: JobRecord | None = None  # None: an input no longer (or never) in the store


@dataclass
class Graph:
    nodes: dict[Ref, GraphNode] = field(default_factory=dict)
    edges: set[tuple[Ref, Ref]] = field(default_factory=set)  # (input, consumer)
    truncated: bool = False


def lineage(records: dict[Ref, JobRecord], start: Ref, depth: int = 6,
            limit: int = 60) -> Graph:
    """Upstream (inputs, their inputs, ...) and downstream (consumers, ...) of `start`, each
    up to `depth` steps and `limit` nodes in all."""
    graph = Graph()
    graph.nodes[start] = GraphNode(start, start[1], 0, records.get(start))
    users = consumers(records)
    for step in (-1, 1):
        frontier = [start]
        for level in range(1, depth + 1):
            frontier = _expand(graph, records, users, frontier, step * level, limit)
    return graph


def _expand(graph: Graph, records: dict[Ref, JobRecord], users: dict[Ref, list[JobRecord]],
            frontier: list[Ref], column: int, limit: int) -> list[Ref]:
    found: list[Ref] = []
    for ref in frontier:
        for other, label in _neighbours(records, users, ref, upstream=column < 0):
            edge = (other, ref) if column < 0 else (ref, other)
            if other not in graph.nodes:
                if len(graph.nodes) >= limit:
                    graph.truncated = True
                    continue
                graph.nodes[other] = GraphNode(other, label, column, records.get(other))
                found.append(other)
            graph.edges.add(edge)
    return found


def _neighbours(records: dict[Ref, JobRecord], users: dict[Ref, list[JobRecord]], ref: Ref,
                upstream: bool) -> list[tuple[Ref, str]]:
    if not upstream:
        return [((r.kind, r.id), r.id) for r in users.get(ref, [])]
    record = records.get(ref)
    if record is None:
        return []
    found = []
    for item in record.inputs:
        parsed = ref_of(item.ref)
        if parsed is not None:
            found.append((parsed, parsed[1]))
        else:  # a ref we cannot name a record by: shown by its root id
            found.append((("root", item.root), f"root {item.root[:12]}"))
    return found


# usage over time ----------------------------------------------------------------------------
@dataclass
class Series:
    project: str
    points: list[tuple[float, int]]  # (time, cumulative bytes)


def usage_series(records: list[JobRecord], measure: str = "stored",
                 max_points: int = 400) -> list[Series]:
    """Cumulative stored (charged) or logical bytes of each project over time, by when each
    job ended; at most `max_points` points per project (the last one always kept)."""
    by_project: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        by_project[record.project].append(record)
    series = []
    for project, items in sorted(by_project.items()):
        items.sort(key=lambda r: r.ended or r.created)
        total, points = 0, []
        for r in items:
            total += r.stored_delta if measure == "stored" else r.logical_bytes
            points.append((r.ended or r.created, total))
        step = max(1, -(-len(points) // max_points))
        series.append(Series(project, points[::step] + ([points[-1]] if
                                                         (len(points) - 1) % step else [])))
    return series

