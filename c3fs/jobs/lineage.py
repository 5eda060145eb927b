"""The lineage graph of jobs, from job records alone: which jobs and datasets a job read
(its `inputs`, recursively) and which jobs read it. Used by `c3fs lineage` and the web view.

Records are untrusted: a damaged record may name itself or form a cycle. The walk is
breadth first over a set of seen nodes, so every node is expanded at most once and the walk
ends whatever the records say.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Ref: (kind, name); ("root", <tree id>) for an input named by no record. `input_ref` and
# `ref_of` live with the records (the index keys its consumers by them): the web view takes
# them from here.
from c3fs.objects.job import DATASET, JOB, JobRecord, Ref, input_ref, ref_of  # noqa: F401
from c3fs.repo import Repo


class Records:
    """The records a lineage walk reads, from the index as the walk reaches them: a job's
    own (its inputs) and those of the jobs that read it (kept by the index, `consumers`),
    never the whole store's (100,000 jobs held: ~130 MB and a second for each walk)."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._known: dict[Ref, JobRecord | None] = {}

    def get(self, ref: Ref) -> JobRecord | None:
        if ref not in self._known:
            self._known[ref] = (self.repo.find_record(*ref) if ref[0] in (JOB, DATASET)
                                else None)
        return self._known[ref]

    def users(self, ref: Ref) -> list[JobRecord]:
        """The jobs whose inputs name `ref`, by name."""
        return self.repo.consumers(*ref) if ref[0] in (JOB, DATASET) else []


def indexed_records(repo: Repo) -> Records:
    """The store's records as lineage reads them, the index synced first."""
    repo.refresh()
    return Records(repo)


@dataclass
class GraphNode:
    ref: Ref
    label: str
    column: int  # < 0 upstream, 0 the job itself, > 0 downstream
    record: JobRecord | None = None  # None: an input no longer (or never) in the store
    root: str = ""  # the root id an input was read at ("" for the start and consumers)


@dataclass
class Graph:
    nodes: dict[Ref, GraphNode] = field(default_factory=dict)
    edges: set[tuple[Ref, Ref]] = field(default_factory=set)  # (input, consumer)
    truncated: bool = False


def lineage(records: Records, start: Ref, depth: int = 6, limit: int = 60,
            up: bool = True, down: bool = True) -> Graph:
    """Upstream (inputs, their inputs, ...) and downstream (consumers, ...) of `start`, each
    up to `depth` steps and `limit` nodes in all."""
    graph = Graph()
    graph.nodes[start] = GraphNode(start, start[1], 0, records.get(start))
    for step in [s for s, wanted in ((-1, up), (1, down)) if wanted]:
        frontier = [start]
        for level in range(1, depth + 1):
            frontier = _expand(graph, records, frontier, step * level, limit)
            if not frontier:
                break
    return graph


def _expand(graph: Graph, records: Records, frontier: list[Ref], column: int,
            limit: int) -> list[Ref]:
    found: list[Ref] = []
    for ref in frontier:
        for other, label, root in _neighbours(records, ref, upstream=column < 0):
            edge = (other, ref) if column < 0 else (ref, other)
            if other not in graph.nodes:
                if len(graph.nodes) >= limit:
                    graph.truncated = True
                    continue
                graph.nodes[other] = GraphNode(other, label, column, records.get(other), root)
                found.append(other)
            if other != ref:  # a damaged record naming itself: no edge, no loop
                graph.edges.add(edge)
    return found


def _neighbours(records: Records, ref: Ref, upstream: bool) -> list[tuple[Ref, str, str]]:
    if not upstream:
        return [((r.kind, r.id), r.id, "") for r in records.users(ref)]
    record = records.get(ref)
    if record is None:
        return []
    found = []
    for item in record.inputs:
        parsed = input_ref(item)
        if parsed is not None:
            found.append((parsed, parsed[1], item.root))
        else:  # a ref we cannot name a record by: shown by its root id
            found.append((("root", item.root), f"root {item.root[:12]}", item.root))
    return found


def as_json(graph: Graph, start: Ref) -> dict:
    """The graph as plain data: nodes (kind, id, direction, depth, status, times, root) and
    edges (input, consumer)."""
    nodes = []
    for node in sorted(graph.nodes.values(), key=lambda n: (n.column, n.ref)):
        record = node.record
        nodes.append({
            "kind": node.ref[0], "id": node.ref[1], "depth": abs(node.column),
            "direction": "self" if node.column == 0 else "up" if node.column < 0 else "down",
            "status": record.status if record else None,
            "project": record.project if record else None,
            "created": record.created if record else None,
            "ended": record.ended if record else None,
            "root": record.root if record else node.root,
            "read_root": node.root or None,
            "in_store": record is not None,
        })
    edges = [{"input": list(a), "consumer": list(b)} for a, b in sorted(graph.edges)]
    return {"start": list(start), "nodes": nodes, "edges": edges, "truncated": graph.truncated}


def as_dot(graph: Graph) -> str:
    """The graph in Graphviz dot: an edge from each input to the job that read it."""
    def name(ref: Ref) -> str:
        return '"' + f"{ref[0]}:{ref[1]}".replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph lineage {", "  rankdir=LR;"]
    for node in sorted(graph.nodes.values(), key=lambda n: (n.column, n.ref)):
        status = node.record.status if node.record else "missing"
        label = f"{node.label}\\n{status}".replace('"', '\\"')
        style = ", style=bold" if node.column == 0 else ""
        lines.append(f'  {name(node.ref)} [label="{label}"{style}];')
    lines += [f"  {name(a)} -> {name(b)};" for a, b in sorted(graph.edges)]
    return "\n".join([*lines, "}"]) + "\n"
