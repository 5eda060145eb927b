"""`gc` and `verify`: walk every live tree (Merkle: each subtree once) and act on packs.

gc runs under the store's gc lock (c3fs.store.locks): it refuses to start while a push holds
a push lock, and pushes refuse to start while it runs, so it never deletes a blob that a
push in progress has just written or is about to reference. Packs whose blobs are all dead
are deleted; partly-live packs are repacked (live blobs copied as stored, no re-encoding)
into new packs, which are durable and indexed before the old ones are deleted. A gc killed
at any point leaves at worst duplicate blobs, never a missing one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from c3fs.errors import C3fsError, DataError, FormatError
from c3fs.fsutil import count
from c3fs.objects.job import DATASET, JOB, JobRecord
from c3fs.objects.pack import PackBuilder
from c3fs.objects.tree import DIR, FILE, decode_tree
from c3fs.repo import Repo
from c3fs.store.locks import gc_lock

log = logging.getLogger(__name__)


def live_records(repo: Repo) -> list[JobRecord]:
    repo.refresh(force=True)
    return repo.jobs() + repo.datasets()


def walk_blobs(repo: Repo, root: bytes, seen: set[bytes]) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield (path, blob id, kind 0 chunk / 1 tree) below `root`, skipping seen subtrees."""
    stack = [(b"", root)]
    while stack:
        path, tree_id = stack.pop()
        if tree_id in seen:
            continue
        seen.add(tree_id)
        yield path, tree_id, 1
        for entry in repo.tree(tree_id).entries:
            child = path + b"/" + entry.name
            if entry.kind == DIR:
                stack.append((child, entry.target))
            elif entry.kind == FILE:
                for chunk_id in entry.chunk_ids():
                    if chunk_id not in seen:
                        seen.add(chunk_id)
                        yield child, chunk_id, 0


# gc -----------------------------------------------------------------------------------------
@dataclass
class GcReport:
    packs_before: int = 0
    bytes_before: int = 0
    packs_deleted: int = 0
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_freed: int = 0
    dry_run: bool = False


def gc(repo: Repo, dry_run: bool = False, progress: Callable[[str], None] | None = None) -> GcReport:
    """`progress(text)`: which phase gc is in, for a status line."""
    say = progress or (lambda text: None)
    with gc_lock(repo.store):
        repo.index.sync(repo.store)
        live: set[bytes] = set()
        records = live_records(repo)
        for n, record in enumerate(records, 1):
            say(f"marking what {record.kind} {record.id} uses ({n}/{len(records)})")
            try:
                for _ in walk_blobs(repo, record.root_id, live):
                    pass
            except (DataError, FormatError) as exc:
                raise C3fsError(f"gc stopped: {record.kind} {record.id} cannot be read ({exc}); "
                                "run `c3fs verify` — nothing was deleted") from None
        say(f"sweeping: {len(live)} blobs in use")
        report = _sweep(repo, live, dry_run, say)
        if not dry_run:
            repo.store.backend.sweep_temp()
        return report


def _sweep(repo: Repo, live: set[bytes], dry_run: bool, say: Callable[[str], None]) -> GcReport:
    sizes = repo.index.pack_sizes()
    report = GcReport(len(sizes), sum(sizes.values()), dry_run=dry_run)
    partly: list[tuple[str, list[bytes]]] = []
    for pack_id, size in sizes.items():
        keep = [b for b in repo.index.pack_blob_ids(pack_id) if b in live and _here(repo, b, pack_id)]
        all_ids = repo.index.pack_blob_ids(pack_id)
        if len(keep) == len(all_ids):
            continue
        if keep:
            partly.append((pack_id, keep))
        else:
            report.packs_deleted += 1
            report.bytes_freed += size
            if not dry_run:
                _delete_pack(repo, pack_id)
    if partly:
        say(f"repacking {count(len(partly), 'pack')} partly in use")
        _repack(repo, partly, sizes, report, dry_run)
    return report


def _here(repo: Repo, blob_id: bytes, pack_id: str) -> bool:
    loc = repo.index.lookup(blob_id)
    return loc is not None and loc.pack_id == pack_id


def _repack(repo, partly, sizes, report: GcReport, dry_run: bool) -> None:
    builder = PackBuilder()
    done: list[str] = []
    for pack_id, keep in partly:
        report.packs_repacked += 1
        for blob_id in keep:
            loc = repo.index.lookup(blob_id)
            builder.add(loc.kind, blob_id, loc.codec,
                        repo.store.read(loc.pack_id, loc.offset, loc.length), loc.plain_len)
        done.append(pack_id)
        if builder.size >= repo.store.config.pack_target:
            _finish_repack(repo, builder, done, sizes, report, dry_run)
            builder, done = PackBuilder(), []
    if done:
        _finish_repack(repo, builder, done, sizes, report, dry_run)


def _finish_repack(repo, builder, old_packs, sizes, report: GcReport, dry_run: bool) -> None:
    pack_id, data = builder.finish()
    report.packs_written += 1
    report.bytes_freed += sum(sizes[p] for p in old_packs) - len(data)
    if dry_run:
        return
    repo.store.put_pack(pack_id, data)
    repo.index.add_pack(pack_id, len(data), builder.entries, replace=True)
    for old in old_packs:
        _delete_pack(repo, old)


def _delete_pack(repo: Repo, pack_id: str) -> None:
    repo.store.delete_pack(pack_id)
    repo.index.remove_pack(pack_id)
    log.info("deleted pack %s", pack_id)


# verify -------------------------------------------------------------------------------------
@dataclass
class Problem:
    blob_id: str
    kind: str  # "chunk", "tree", "ref"
    error: str
    broken: list[str] = field(default_factory=list)  # "<job>:<path>"


@dataclass
class VerifyReport:
    records: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(repo: Repo, names: list[str] | list[tuple[str, str]] | None = None,
           workers: int = 4, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Read and check every blob the named jobs (default: all jobs and datasets) reach.
    A name is a job id, or a (kind, name) pair. `progress(n)`: n more bytes verified."""
    report = VerifyReport()
    refs = [(JOB, n) if isinstance(n, str) else n for n in names or []]
    records = [repo.record(kind, n) for kind, n in refs] if refs else live_records(repo)
    if not names:
        report.problems += _damaged_refs(repo)
    problems: dict[bytes, Problem] = {}
    checked: dict[bytes, str | None] = {}
    with ThreadPoolExecutor(workers) as pool:
        for record in records:
            report.records += 1
            _verify_record(repo, record, pool, problems, checked, report, progress)
    report.problems += problems.values()
    return report


def _verify_record(repo, record, pool, problems, checked, report, progress) -> None:
    label = f"{record.kind} {record.id}"
    stack = [(b"", record.root_id)]
    pending = []
    while stack:
        path, tree_id = stack.pop()
        error = _check_blob(repo, tree_id, checked, report, progress)
        if error is None:
            try:
                tree = decode_tree(repo.blobs.get(tree_id))
            except (DataError, FormatError) as exc:
                error = str(exc)
        if error is not None:
            _note(problems, tree_id, "tree", error, f"{label}:{_show(path) or '/'}")
            continue
        for entry in tree.entries:
            child = path + b"/" + entry.name
            if entry.kind == DIR:
                stack.append((child, entry.target))
            elif entry.kind == FILE:
                for chunk_id in entry.chunk_ids():
                    pending.append((chunk_id, child, pool.submit(_check_blob, repo, chunk_id, checked, report,
                                                          progress)))
    for chunk_id, child, future in pending:
        error = future.result()
        if error is not None:
            _note(problems, chunk_id, "chunk", error, f"{label}:{_show(child)}")


_count_lock = threading.Lock()


def _check_blob(repo: Repo, blob_id: bytes, checked: dict, report: VerifyReport,
                progress: Callable[[int], None] | None) -> str | None:
    if blob_id in checked:
        return checked[blob_id]
    try:
        data = repo.blobs.fetch_uncached(blob_id)
        error = None
        with _count_lock:
            report.blobs += 1
            report.bytes += len(data)
        if progress is not None:
            progress(len(data))
    except DataError as exc:
        error = str(exc)
    checked[blob_id] = error
    return error


def _note(problems: dict, blob_id: bytes, kind: str, error: str, where: str) -> None:
    problem = problems.setdefault(blob_id, Problem(blob_id.hex(), kind, error))
    if where not in problem.broken:
        problem.broken.append(where)


def _damaged_refs(repo: Repo) -> list[Problem]:
    found = []
    for kind in (JOB, DATASET):
        for name in repo.store.list_refs(kind):
            try:
                repo.store.get_ref(kind, name)
            except C3fsError as exc:
                found.append(Problem("", "ref", str(exc), [f"{kind} {name}"]))
    return found


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
