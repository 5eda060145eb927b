"""`gc` and `verify`: walk every live tree (Merkle: each subtree once) and act on packs.

gc runs under the store's gc lock (c3fs.store.locks): it refuses to start while a push holds
a push lock, and pushes wait for it to finish before they start (--lock-wait, then refuse),
so it never deletes a blob that a push in progress has just written or is about to
reference. Packs whose blobs are all dead
are deleted; partly-live packs are repacked (live blobs copied as stored, no re-encoding)
into new packs, which are durable and indexed before the old ones are deleted. A gc killed
at any point leaves at worst duplicate blobs, never a missing one.

What a live mount reads is live too, also once its job is removed: gc reads the mount leases
(c3fs.store.mounts) after the refs, and marks each live mount's tree as a job's.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import blake3

from c3fs.errors import C3fsError, ChunkSizeMismatch, DataError, FormatError
from c3fs.fsutil import count, json_name
from c3fs.index.marks import MarkSet
from c3fs.objects.job import DATASET, JOB, JobRecord
from c3fs.objects.pack import PackBuilder
from c3fs.objects.tree import DIR, FILE, EncodedTree, Entry, PagedTree
from c3fs.reader import trace
from c3fs.repo import Repo
from c3fs.store import mounts
from c3fs.store.locks import gc_lock

log = logging.getLogger(__name__)


def live_records(repo: Repo) -> tuple[int, Iterator[JobRecord]]:
    """How many jobs and datasets there are, and their records, read a batch at a time as
    they are consumed (100,000 jobs: a batch of records in memory, not 100,000)."""
    repo.refresh(full=True)
    total = repo.index.record_count(JOB) + repo.index.record_count(DATASET)
    return total, itertools.chain(repo.iter_records(JOB), repo.iter_records(DATASET))


def walk_blobs(repo: Repo, root: bytes, seen: MarkSet) -> Iterator[tuple[bytes, bytes, int]]:
    """Yield (path, blob id, kind 0 chunk / 1 tree) below `root`, skipping seen subtrees."""
    stack = [(b"", root)]
    while stack:
        path, tree_id = stack.pop()
        if not seen.mark(tree_id):
            continue
        yield path, tree_id, 1
        tree = repo.tree(tree_id, check=False, keep=False)  # each tree is read once
        for page in tree.pages:  # a paged directory's pages (each read as its entries are)
            if seen.mark(page):
                yield path, page, 1
        for entry in tree.entries:
            child = path + b"/" + entry.name
            if entry.kind == DIR:
                stack.append((child, entry.target))
            elif entry.kind == FILE:
                for chunk_id in entry.chunk_ids():
                    if seen.mark(chunk_id):
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
    traces_deleted: int = 0  # access traces of jobs that are gone (c3fs/reader/trace.py)
    mounted_kept: int = 0  # live mounts of trees no job or dataset reaches any more, kept
    dry_run: bool = False


def gc(repo: Repo, dry_run: bool = False, progress: Callable[[str], None] | None = None) -> GcReport:
    """`progress(text)`: which phase gc is in, for a status line."""
    say = progress or (lambda text: None)
    with gc_lock(repo.store) as lease:
        repo.index.sync(repo.store, full=True)
        with MarkSet(expect=repo.index.blob_count()) as live:  # (on disk past 65,536 ids)
            return _collect(repo, lease, live, dry_run, say)


def _collect(repo: Repo, lease, live: MarkSet, dry_run: bool, say: Callable[[str], None]
             ) -> GcReport:
    """Mark what the live jobs and datasets reach, then sweep and repack the packs."""
    total, records = live_records(repo)
    for n, record in enumerate(records, 1):
        say(f"marking what {record.kind} {record.id} uses ({n}/{max(n, total)})")
        try:
            for root in (record.root_id, *([bytes.fromhex(record.logs)] if record.logs else [])):
                for _ in walk_blobs(repo, root, live):  # the artifacts, and the logs
                    pass
        except (DataError, FormatError) as exc:
            raise C3fsError(f"gc stopped: {record.kind} {record.id} cannot be read ({exc}); "
                            "run `c3fs verify` — nothing was deleted") from None
    mounted_kept = _mark_mounted(repo, live, dry_run, say)  # after the refs: see mounts
    say(f"sweeping: {len(live)} blobs in use")
    lease.check()  # a push that broke our lock may be using what looks dead
    report = _sweep(repo, live, dry_run, say, lease.confirm)
    report.mounted_kept = mounted_kept
    report.traces_deleted = _sweep_traces(repo, dry_run)
    if not dry_run:
        repo.store.backend.sweep_temp()
        repo.store.prune_changes()
        repo.store.prune_snapshots()
    return report


def _mark_mounted(repo: Repo, live: MarkSet, dry_run: bool, say: Callable[[str], None]) -> int:
    """Mark what each live mount reads (its tree, a job's or a folder's); how many of them
    read a tree that no job or dataset reaches any more (removed, or pushed again)."""
    kept = 0
    for lease in mounts.live(repo.store, mounts.leases(repo.store), remove=not dry_run, say=say):
        root, place = mounts.root_of(lease), mounts.where(lease)
        if root is None or repo.index.lookup(root) is None:  # (its bytes are gone already)
            log.warning("the mount at %s reads a tree this store does not hold: nothing of "
                        "it is kept", place)
            continue
        kept += root not in live
        say(f"marking what the mount at {place} reads")
        try:
            for _ in walk_blobs(repo, root, live):
                pass
        except (DataError, FormatError) as exc:
            raise C3fsError(f"gc stopped: the tree mounted at {place} cannot be read ({exc}); "
                            "nothing was deleted") from None
    return kept


def _sweep(repo: Repo, live: MarkSet, dry_run: bool, say: Callable[[str], None],
           confirm: Callable[[], None] = lambda: None) -> GcReport:
    """Delete the packs nothing live is in, repack those partly in use. `confirm()`
    before each delete: LockedError if gc's lock was broken (`Lease.confirm`)."""
    sizes = repo.index.pack_sizes()
    report = GcReport(len(sizes), sum(sizes.values()), dry_run=dry_run)
    kept = dict.fromkeys(sizes, 0)  # a pack's live blobs that the index finds in it
    for blob_id in live:  # (one read of the marks in their order, not a lookup per blob)
        loc = repo.index.lookup(blob_id)
        if loc is not None and loc.pack_id in kept:
            kept[loc.pack_id] += 1
    partly: list[str] = []  # (their live blobs are listed again when each is repacked)
    for pack_id, size in sizes.items():
        keep = kept[pack_id]
        if keep == len(repo.index.pack_blob_ids(pack_id)):
            continue
        if keep:
            partly.append(pack_id)
        else:
            report.packs_deleted += 1
            report.bytes_freed += size
            if not dry_run:
                confirm()
                _delete_pack(repo, pack_id)
    if partly:
        say(f"repacking {count(len(partly), 'pack')} partly in use")
        _repack(repo, live, partly, sizes, report, dry_run, confirm)
    return report


def _live_in(repo: Repo, live: MarkSet, pack_id: str, blob_ids: list[bytes]) -> list[bytes]:
    """The blobs of `blob_ids` (the pack's) that are live and that the index finds in this
    pack (a blob also in another pack is kept where the index points)."""
    return [b for b in blob_ids if b in live and _here(repo, b, pack_id)]


def _sweep_traces(repo: Repo, dry_run: bool) -> int:
    """Delete the access traces of jobs and datasets that are gone (a mount that stored
    one after `c3fs rm`, an rm that could not delete them); how many. (Whether a job is
    live: asked of the index, which gc's lock keeps as it was while marking.)"""
    dead = trace.orphans(repo.store, lambda ref: repo.index.has_record(*ref))
    for key in [] if dry_run else dead:
        repo.store.backend.delete(key)
    return len(dead)


def _here(repo: Repo, blob_id: bytes, pack_id: str) -> bool:
    loc = repo.index.lookup(blob_id)
    return loc is not None and loc.pack_id == pack_id


def _repack(repo, live: MarkSet, partly, sizes, report: GcReport, dry_run: bool,
            confirm: Callable[[], None]) -> None:
    builder = PackBuilder()
    done: list[str] = []
    for pack_id in partly:
        report.packs_repacked += 1
        for blob_id in _live_in(repo, live, pack_id, repo.index.pack_blob_ids(pack_id)):
            loc = repo.index.lookup(blob_id)
            builder.add(loc.kind, blob_id, loc.codec,
                        repo.store.read(loc.pack_id, loc.offset, loc.length), loc.plain_len)
        done.append(pack_id)
        if builder.size >= repo.store.config.pack_target:
            _finish_repack(repo, builder, done, sizes, report, dry_run, confirm)
            builder, done = PackBuilder(), []
    if done:
        _finish_repack(repo, builder, done, sizes, report, dry_run, confirm)


def _finish_repack(repo, builder, old_packs, sizes, report: GcReport, dry_run: bool,
                   confirm: Callable[[], None]) -> None:
    pack_id, data = builder.finish()
    report.packs_written += 1
    report.bytes_freed += sum(sizes[p] for p in old_packs) - len(data)
    if dry_run:
        return
    repo.store.put_pack(pack_id, data)
    repo.index.add_pack(pack_id, len(data), builder.entries, replace=True)
    for old in old_packs:
        confirm()
        _delete_pack(repo, old)


def _delete_pack(repo: Repo, pack_id: str) -> None:
    repo.store.delete_pack(pack_id)
    repo.index.remove_pack(pack_id)
    log.info("deleted pack %s", pack_id)


# verify -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where a problem breaks a job or dataset: a path of its tree (its bytes: `/` is the
    root, `<logs>/...` the job's logs; a paged directory's `page`), or None for its ref."""

    kind: str  # JOB or DATASET
    id: str
    path: bytes | None = None
    page: int | None = None

    def __str__(self) -> str:
        """`job j1:/a/b` (`job j1:/big (page 3)`, `job j1` for its ref), each byte of the
        path that is not UTF-8 as `\\xNN`."""
        return self.text(_show)

    def text(self, show: Callable[[bytes], str]) -> str:
        """As `str`, the path shown by `show` (the CLI's: as `ls` shows names)."""
        if self.path is None:
            return f"{self.kind} {self.id}"
        page = "" if self.page is None else f" (page {self.page})"
        return f"{self.kind} {self.id}:{show(self.path)}{page}"

    def as_dict(self) -> dict:
        """`{"job": id}` (`"dataset"`) with `path`, exactly as `ls --json` gives a path
        (`path_b64` too when it is not UTF-8: `json_name`), and `page`, when it has them."""
        place: dict = {self.kind: self.id}
        if self.path is not None:
            place.update(json_name("path", self.path))
        if self.page is not None:
            place["page"] = self.page
        return place


@dataclass
class Problem:
    blob_id: str
    kind: str  # "chunk", "tree", "ref", "size" (a file's tree gives a chunk a wrong size),
    # "digest" (a file's chunks are whole but their bytes do not have its digest)
    error: str
    broken: list[Place] = field(default_factory=list)

    def as_dict(self) -> dict:
        """For --json: `broken`, each place as the text names it (`job j1:/a/b`), and
        `paths`, the same places exactly (`Place.as_dict`)."""
        return {"blob_id": self.blob_id, "kind": self.kind, "error": self.error,
                "broken": [str(place) for place in self.broken],
                "paths": [place.as_dict() for place in self.broken]}


@dataclass
class VerifyReport:
    records: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"records": self.records, "blobs": self.blobs, "bytes": self.bytes,
                "problems": [problem.as_dict() for problem in self.problems]}


def verify(repo: Repo, names: list[str] | list[tuple[str, str]] | None = None,
           workers: int = 4, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Read and check every blob the named jobs (default: all jobs and datasets) reach.
    A name is a job id, or a (kind, name) pair. `progress(n)`: n more bytes verified.

    Each blob is read once, and each job walks each of its trees once (a subtree shared
    by many paths is named by the first path met): work is linear in the unique trees and
    chunks, however they are shared (40 levels of {a -> T, b -> T} are 41 trees, not 2**40
    paths). At most `WINDOW` chunk checks are in flight; the blobs checked, and each job's
    trees walked, are marks (c3fs.index.marks: on disk past 65,536), and what stays in
    memory is the error of each blob that has one."""
    report = VerifyReport()
    refs = [(JOB, n) if isinstance(n, str) else n for n in names or []]
    records = [repo.record(kind, n) for kind, n in refs] if refs else live_records(repo)[1]
    if not names:
        report.problems += _damaged_refs(repo)
    with ThreadPoolExecutor(workers) as pool, _Checker(repo, pool, report, progress) as checker:
        for record in records:
            report.records += 1
            checker.record(record)
    report.problems += checker.problems.values()
    return report


WINDOW = 256  # chunk checks in flight at once in verify


class _Checker:
    """Checks blobs for `verify`: each once, chunks in worker threads (a bounded window)."""

    def __init__(self, repo: Repo, pool: ThreadPoolExecutor, report: VerifyReport,
                 progress: Callable[[int], None] | None) -> None:
        self.repo, self.pool, self.report, self.progress = repo, pool, report, progress
        self.problems: dict[tuple[bytes, str], Problem] = {}
        self.checked = MarkSet(expect=repo.index.blob_count())  # the blobs checked, fine or not
        self.errors: dict[bytes, str] = {}  # a blob checked -> its error (set before its mark)
        self.window: deque[tuple[bytes, Place, Future]] = deque()
        self.inflight: dict[bytes, Future] = {}

    def __enter__(self) -> _Checker:
        return self

    def __exit__(self, *exc) -> None:
        self.checked.close()

    def record(self, record: JobRecord) -> None:
        with MarkSet() as seen:  # this job's trees walked already
            self._walk(record, seen)
        while self.window:
            self._settle()

    def _walk(self, record: JobRecord, seen: MarkSet) -> None:
        stack = [(b"", record.root_id)]
        if record.logs:  # the job's stdout and stderr (c3fs.jobs.logs)
            stack.append((b"<logs>", bytes.fromhex(record.logs)))
        while stack:
            path, tree_id = stack.pop()
            if not seen.mark(tree_id):
                continue
            where = Place(record.kind, record.id, path or b"/")
            tree = self._tree(tree_id, where)
            for entry in self._entries(tree, where):
                child = path + b"/" + entry.name
                if entry.kind == DIR and entry.target not in seen:
                    stack.append((child, entry.target))
                elif entry.kind == FILE:
                    self._file(entry, Place(record.kind, record.id, child))

    def _tree(self, tree_id: bytes, where: Place) -> EncodedTree | PagedTree | None:
        error = self._check(tree_id)
        if error is None:
            try:  # each tree is read once; a paged one's pages in `_entries`
                tree = self.repo.tree(tree_id, check=False, keep=False)
                if not tree.pages:
                    tree.check()
                return tree
            except (DataError, FormatError) as exc:
                error = str(exc)
        _note(self.problems, tree_id, "tree", error, where)
        return None

    def _entries(self, tree: EncodedTree | PagedTree | None, where: Place) -> Iterator[Entry]:
        """The entries of a tree, checked; of a paged directory, those of each page that
        can be read (a damaged page is noted, the others still walked)."""
        if tree is None or not tree.pages:
            yield from tree or ()
            return
        for k, page_id in enumerate(tree.pages):
            error = self._check(page_id)
            if error is None:
                try:
                    page = tree.page(k)
                    page.check()
                except (DataError, FormatError) as exc:
                    error = str(exc)
            if error is not None:
                _note(self.problems, page_id, "tree", error, replace(where, page=k))
                continue
            yield from page

    def _file(self, entry: Entry, where: Place) -> None:
        _check_sizes(self.repo, entry, self.problems, where)
        if entry.digest:  # (tree version 2, a file of 2+ chunks): its chunks in order, hashed
            self.window.append((entry.digest, where, self.pool.submit(self._content, entry)))
            if len(self.window) >= WINDOW:
                self._settle()
            return
        for chunk_id in entry.chunk_ids():
            if chunk_id in self.checked:
                if chunk_id in self.errors:
                    _note(self.problems, chunk_id, "chunk", self.errors[chunk_id], where)
                continue
            future = self.inflight.get(chunk_id)
            if future is None:
                future = self.inflight[chunk_id] = self.pool.submit(self._check, chunk_id)
            self.window.append((chunk_id, where, future))
            if len(self.window) >= WINDOW:
                self._settle()

    def _settle(self) -> None:
        """Wait for the oldest check in the window; note the file if it failed."""
        blob_id, where, future = self.window.popleft()
        error = future.result()
        if isinstance(error, tuple):  # a whole file's check: (kind, blob id, error) or ()
            if error:
                kind, blob_id, error = error
                _note(self.problems, blob_id, kind, error, where)
            return
        self.inflight.pop(blob_id, None)
        if error is not None:
            _note(self.problems, blob_id, "chunk", error, where)

    def _content(self, entry: Entry) -> tuple:
        """Check a file's chunks and that their bytes, in order, have the file's digest:
        () if they do, else (kind, blob id, error) of the first problem. Each chunk is read
        once more for each such file it is in (its own check is still done once)."""
        whole = blake3.blake3()
        for chunk_id in entry.chunk_ids():
            done = chunk_id in self.checked
            error = self.errors.get(chunk_id) if done else None
            if error is None:  # (fine, or not checked yet: read for the digest)
                data = b""
                try:
                    data = self.repo.blobs.fetch_uncached(chunk_id)
                except DataError as exc:
                    error = str(exc)
                if not done:
                    self._checked(chunk_id, error, data)
            if error is not None:
                return ("chunk", chunk_id, error)
            whole.update(data)
        if whole.digest() != entry.digest:
            return ("digest", entry.digest, f"content does not match the file's digest "
                    f"{entry.digest.hex()[:16]} (its chunks are whole: the tree is wrong)")
        return ()

    def _check(self, blob_id: bytes) -> str | None:
        """Read `blob_id` from the store (no cache), once; its error, or None."""
        if blob_id in self.checked:
            return self.errors.get(blob_id)
        data, error = b"", None
        try:
            data = self.repo.blobs.fetch_uncached(blob_id)
        except DataError as exc:
            error = str(exc)
        self._checked(blob_id, error, data)
        return error

    def _checked(self, blob_id: bytes, error: str | None, data) -> None:
        """Note that `blob_id` was checked (counted once, whichever thread is first)."""
        if error is not None:
            self.errors[blob_id] = error
        if self.checked.mark(blob_id) and error is None:
            self._count(len(data))

    def _count(self, size: int) -> None:
        with _count_lock:
            self.report.blobs += 1
            self.report.bytes += size
        if self.progress is not None:
            self.progress(size)


_count_lock = threading.Lock()


def _check_sizes(repo: Repo, entry: Entry, problems: dict, where: Place) -> None:
    """Note a file whose tree gives a chunk another size than the index knows it has (the
    plain length from its pack's trailer, checked whenever the chunk is decoded)."""
    for chunk_id, size in zip(entry.chunk_ids(), entry.sizes, strict=True):
        loc = repo.index.lookup(chunk_id)
        if loc is not None and loc.plain_len != size:
            error = ChunkSizeMismatch(chunk_id, size, loc.plain_len)
            _note(problems, chunk_id, "size", str(error), where)
            return


def _note(problems: dict, blob_id: bytes, kind: str, error: str, where: Place) -> None:
    problem = problems.setdefault((blob_id, kind), Problem(blob_id.hex(), kind, error))
    if where not in problem.broken:
        problem.broken.append(where)


def _damaged_refs(repo: Repo) -> list[Problem]:
    found = []
    for kind in (JOB, DATASET):
        for name in repo.store.list_refs(kind):
            try:
                repo.store.get_ref(kind, name)
            except C3fsError as exc:
                found.append(Problem("", "ref", str(exc), [Place(kind, name)]))
    return found


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
