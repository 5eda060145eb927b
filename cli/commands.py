"""The storage commands: push, ls, cp, index."""

from __future__ import annotations

import itertools
import logging
import os
import stat
import sys
import time
from typing import TYPE_CHECKING

import click

from c3fs.errors import IsADirectory, UsageError
from c3fs.fsutil import json_name

from . import output
from .complete import complete_dir, complete_path, complete_path_or_file
from .main import Ctx, app, pass_ctx

log = logging.getLogger("c3fs.cli")

if TYPE_CHECKING:  # the library is imported in the commands: `c3fs --help` stays quick
    from collections.abc import Iterable, Iterator

    from c3fs.objects.job import JobRecord
    from c3fs.objects.tree import Entry
    from c3fs.vfs import Node, Vfs

NAMESPACE_TOP = (b"jobs", b"projects", b"datasets")


def is_namespace(path: str) -> bool:
    from c3fs.vfs import split_path

    return path.startswith("/") and split_path(path)[:1] in [(t,) for t in NAMESPACE_TOP] or path == "/"


def show(name: bytes) -> str:
    return name.decode("utf-8", "backslashreplace")


# push ---------------------------------------------------------------------------------------
def lock_wait_option(default: str, then: str = "exit 7 (locked)"):
    """--lock-wait SECONDS: how long a push (or run's upload) waits for a running gc; None
    when not given (the library's default, which `default` names for --help)."""
    return click.option(
        "--lock-wait", type=click.FloatRange(min=0), metavar="SECONDS",
        help=f"Wait this long for a gc that holds the store to finish (saying so, and how long "
             f"so far), then {then}; 0: at once (default: {default}).")


@app.command(context_settings={"max_content_width": 100})
@click.argument("directory", shell_complete=complete_dir)
@click.option("-p", "--project",
              help="Project the job belongs to (default: `project` of the c3fs config, C3FS_PROJECT).")
@click.option("-j", "--job", "job_id", help="Job id (default: a fresh job_<time>_<random>).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the job record as JSON (with `changed` and `vanished`, if any: a "
                   "{path} for each file that changed while read, and for each one removed "
                   "before it was read).")
@lock_wait_option("600 s, 10 min")
@pass_ctx
def push(ctx: Ctx, directory: str, project: str | None, job_id: str | None, as_json: bool,
         lock_wait: float | None) -> None:
    """Store DIRECTORY as a finished job's artifacts.

    A file that changes while it is read (its size, mtime or ctime moved, or not its size's
    worth of bytes came) is read again, 3 reads at most. One still changing is stored as
    last read (its size, chunks and digest all describe those bytes) and named in a
    warning "changed while it was read" and in --json's `changed`; the push goes on and
    exits 0 (the job is registered, the other files are whole). -q hides the warning.
    A file, symlink or directory removed after the walk listed it and before it was read
    (a rotated log or checkpoint) is not stored, named in a warning "removed before it was
    read: not stored" and in --json's `vanished`; the push goes on and exits 0 too (DIRECTORY
    itself removed is an error, exit 3).
    A file or directory that refuses to be read (permission denied, an I/O error) stops the
    push before any job is made: one error line naming it, exit 4.
    While gc runs on the store (any machine) the push waits for it to finish, saying so
    every 30 s, up to --lock-wait seconds; then exit 7 (locked), as at once with 0.

    \b
    Examples:
      c3fs push ./artifacts --project vision
      c3fs push ./out -p vision -j job_resnet_01 --json
    """
    from c3fs.jobs.push import push_dir
    from c3fs.store.locks import PUSH_LOCK_WAIT

    project = default_project() if project is None else project
    if project is None:
        raise UsageError("push needs a project: -p NAME (or `project` in the c3fs config, "
                         "or C3FS_PROJECT)")
    started = time.monotonic()
    repo = ctx.repo(write=True)
    changed: list[str] = []
    vanished: list[str] = []
    with output.progress_bar("push", _tree_bytes(directory)) as advance:
        record = push_dir(repo, directory, project, job_id, progress=advance, changed=changed,
                          vanished=vanished,
                          lock_wait=PUSH_LOCK_WAIT if lock_wait is None else lock_wait)
    output.timing(f"push {record.id}: {output.count(record.files, 'file')}, "
                  f"{output.human(record.logical_bytes)} read, "
                  f"{output.human(record.stored_delta)} stored", started, record.logical_bytes)
    if as_json:
        output.print_json(record_json(record, changed, vanished))
        return
    output.out.print(record.id)
    output.note(f"{output.count(record.files, 'file')}, {output.human(record.logical_bytes)} logical, "
                     f"{output.human(record.stored_delta)} newly stored{changed_note(changed, vanished)}")


def record_json(record: JobRecord, changed: list[str], vanished: list[str]) -> object:
    """A pushed or run job's record for --json: with `changed`, a {path} (exact:
    `json_name`) for each file stored as read while it changed, and `vanished`, one for
    each file, symlink or directory removed before it was read (not stored), each list when
    it has any; else the record as `ls --json` shows it."""
    import msgspec

    lists = {key: [json_name("path", os.fsencode(path)) for path in paths]
             for key, paths in (("changed", changed), ("vanished", vanished)) if paths}
    return {**msgspec.to_builtins(record), **lists} if lists else record


def changed_note(changed: list[str], vanished: list[str]) -> str:
    """The end of a push's or run's summary: how many files changed while read, and how
    many files or directories were removed before they were read, if any."""
    return ((f", {output.count(len(changed), 'file')} changed while read" if changed else "")
            + (f", {len(vanished)} removed before read" if vanished else ""))


def default_project() -> str | None:
    from c3fs import settings

    return settings.value("project")


def _tree_bytes(directory: str) -> int | None:
    from c3fs.fsutil import tree_bytes

    # (asked without rich when stderr is surely no terminal: its import costs a push ~30 ms
    # before the walk starts)
    if output.no_bar() or not output.err.is_terminal:
        return None
    return tree_bytes(directory)


# ls -----------------------------------------------------------------------------------------
STATUSES = ("SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED")  # c3fs.objects.job's (not imported
# here: `c3fs --help` loads no library module)


@app.command()
@click.argument("path", default="/", shell_complete=complete_path)
@click.option("-l", "long", is_flag=True, help="Long listing: status, size, files, age / mode, size, mtime.")
@click.option("--json", "as_json", is_flag=True, help="JSON: full job records, or entry details.")
@click.option("--project", help="Jobs or datasets of this project only.")
@click.option("--status", type=click.Choice(STATUSES, case_sensitive=False),
              help="Jobs of this status only.")
@click.option("--since", metavar="AGE|DATE",
              help="Created within AGE (30m, 12h, 7d) or since DATE (2026-12-01).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="The N most recently created only.")
@pass_ctx
def ls(ctx: Ctx, path: str, long: bool, as_json: bool, project: str | None, status: str | None,
       since: str | None, limit: int | None) -> None:
    """List a path of the namespace.

    Jobs and datasets are listed oldest first; --project, --status, --since and --limit
    choose which (on /jobs/, /projects/<p>/jobs/ and /datasets/). Names are printed as
    GNU `ls -b` prints them (control characters escaped). --json is exact: a name, path or
    link target that is not UTF-8 has its bytes in base64 in name_b64, path_b64 or
    target_b64 besides (name etc. then shows each such byte as \\xNN).

    \b
    Paths:
      /                                   jobs, projects, datasets
      /jobs/                              every job
      /jobs/<id>/sub/dir                  a job's artifacts
      /projects/<p>/jobs/                 the jobs of one project
      /projects/<p>/datasets/             the datasets of one project
      /projects/<p>/jobs/latest           its newest SUCCEEDED job (a symlink)
      /projects/<p>/tags/<tag>            the job a tag names (a symlink; see c3fs tag)
      /datasets/                          every dataset
      /datasets/<name>/sub/dir            a dataset's files
    \b
    Examples:
      c3fs ls -l /jobs/
      c3fs ls -l /jobs/job_abc123         # its inputs first, then its files
      c3fs ls -l /jobs/ --status failed --since 2d
      c3fs ls /jobs/ --project vision --limit 20
      c3fs ls --json /projects/vision/jobs/
    """
    from c3fs.vfs import Vfs, lists_records

    started = time.monotonic()
    repo = ctx.repo()
    repo.refresh(force=True)
    output.timing(f"ls: store {repo.store.url} opened, index synced", started)
    started = time.monotonic()
    vfs = Vfs(repo)
    node = vfs.resolve(path)
    chosen = RecordFilter(project, status, since, limit)
    if chosen.active and not lists_records(node.path):
        raise UsageError("--project, --status, --since and --limit choose jobs or datasets: "
                         "list /jobs/, /projects/<p>/jobs/ or /datasets/")
    if node.is_dir and not (long or as_json or chosen.active):  # names stream, row by row
        names = vfs.iter_names(node)
        written = output.write_lines(output.escape(name) + ("/" if is_dir else "")
                                     for name, is_dir in names)
        output.timing(f"ls {path}: {output.count(written, 'name')} read", started)
        return
    if node.is_dir and node.tree_id is not None:  # a tree's directory: rows stream, no node
        # each (2 M entries: a page of them in memory, not 2 M nodes)
        entries, raw = vfs.iter_entries(node), raw_path(node)
        if as_json:
            written = output.print_json_listing(
                {"schema": LS_SCHEMA, **json_name("path", raw)}, "entries",
                (_json_entry(raw, e) for e in entries))
        else:
            _print_inputs(_record_of(vfs, node))
            written = output.write_lines(_long_line(e.name, e) for e in entries)
        output.timing(f"ls {path}: {output.count(written, 'name')} printed", started)
        return
    if lists_records(node.path) and not limit:  # records stream: none held, no node each
        if long and not as_json:  # the oldest first, from --since
            records, links = vfs.listed_records(node, by_created=True, since=chosen.since)
            if chosen.active:
                records = (r for r in records if chosen.keeps(r))
            written = _print_records(records, links)
            output.timing(f"ls {path}: {output.count(written, 'record')} printed", started)
            return
        items: Iterable[tuple[bytes, Node]] = vfs.iter_record_children(node)
        if chosen.active:  # (links have no record: a filter leaves them out, as `apply`)
            items = ((name, n) for name, n in items
                     if n.record is not None and chosen.keeps(n.record))
        if as_json:
            written = output.print_json_listing(
                {"schema": LS_SCHEMA, **json_name("path", raw_path(node))}, "entries",
                (_json_item(vfs, name, n) for name, n in items))
        else:
            written = output.write_lines(output.escape(name) + ("/" if n.is_dir else "")
                                         for name, n in items)
        output.timing(f"ls {path}: {output.count(written, 'name')} printed", started)
        return
    if chosen.active:  # --limit: the newest first, read only as far as needed
        items = chosen.newest(vfs, node)
    else:
        items = vfs.children(node) if node.is_dir else [(node.name, node)]
    output.timing(f"ls {path}: {output.count(len(items), 'name')} read", started)
    if as_json:
        output.print_json({"schema": LS_SCHEMA, **json_name("path", raw_path(node)),
                           "entries": [_json_item(vfs, name, n) for name, n in items]})
    elif long:
        _print_inputs(_record_of(vfs, node))
        _print_long(vfs, items)
    else:
        output.write_lines(output.escape(name) + ("/" if child.is_dir else "") for name, child in items)


class RecordFilter:
    """Which jobs or datasets `ls` lists: by project, status, creation time, count."""

    def __init__(self, project: str | None, status: str | None, since: str | None,
                 limit: int | None) -> None:
        self.project, self.limit = project, limit
        self.status = status.upper() if status else None
        self.since = _since(since) if since else None
        self.active = any(v is not None for v in (project, status, since, limit))

    def newest(self, vfs: Vfs, node: Node) -> list[tuple[bytes, Node]]:
        """What `apply` keeps of `node`'s listing (a /jobs/-like directory), from the index's
        order of creation: `--limit 20` of 100,000 jobs decodes 20 records, not 100,000."""
        from c3fs.objects.job import DATASET, JOB

        path = node.path
        kind = JOB if path[-1] == b"jobs" else DATASET
        project = path[1].decode() if len(path) == 3 else None
        records = vfs.repo.newest(
            kind, lambda r: self.keeps(r) and (project is None or r.project == project),
            self.limit, self.since)
        items = [(r.id.encode(), vfs.ref_root(r)) for r in reversed(records)]
        return items if self.limit is not None else sorted(items, key=lambda item: item[0])

    def keeps(self, record: JobRecord) -> bool:
        return ((self.project is None or record.project == self.project)
                and (self.status is None or record.status == self.status)
                and (self.since is None or record.created >= self.since))


def _since(text: str) -> float:
    """A time: now minus an age (`30m`, `12h`, `7d`, `90s`) or a date (`2026-12-01`)."""
    import re
    import time
    from datetime import datetime

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]
        return time.time() - float(match.group(1)) * unit
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: give an age (30m, 12h, 7d) or a date "
                         "(2026-12-01, 2026-12-01T08:00)") from None


def _record_of(vfs: Vfs, node: Node) -> JobRecord | None:
    if node.ref and node.depth == 2:  # listed with its record (one decode per listing)
        return node.record or vfs.repo.record(*node.ref)
    return None


def _print_inputs(record: JobRecord | None) -> None:
    """`ls -l` of a job: first the inputs it read (as `total` comes first in GNU ls)."""
    if record is None:
        return
    output.write_lines(
        f"input {output.escape(i.mount or '-')} <- {output.escape(i.ref)}"
        + (f" ({output.escape(i.resolved)})" if i.resolved and i.resolved != i.ref else "")
        + f" root {i.root}" for i in record.inputs)


def _virtual_link(node: Node) -> bool:
    """Whether `node` is one of the namespace's links (`latest`, a tag), not a tree's."""
    from c3fs.objects.tree import LINK

    return node.kind == LINK and node.ref is None


LS_SCHEMA = 1  # `ls --json`: {"schema", "path", "entries": [...]}, the same for every path


def raw_path(node: Node) -> bytes:
    """The path of `node` as bytes, exactly (`node.display` escapes bytes that are not UTF-8)."""
    return b"/" + b"/".join(node.path)


def _json_item(vfs: Vfs, name: bytes, node: Node) -> dict:
    """One entry of `ls --json`: the same fields for every path (a job, a folder, /jobs/);
    `record` on a job's or dataset's root, `target` on a symlink. `mode`: permission bits,
    a number. A name, path or target that is not UTF-8 has its bytes in `name_b64`,
    `path_b64`, `target_b64` too (`json_name`)."""
    item = _json_fields(name, raw_path(node), node.kind, node.mode, node.size, node.mtime_ns,
                        node.entry.target if node.entry is not None else None)
    record = _record_of(vfs, node)
    if record is not None:
        item["record"] = record
    return item


def _json_entry(parent: bytes, entry: Entry) -> dict:
    """`_json_item` of an entry of the tree of directory `parent` (its `raw_path`)."""
    return _json_fields(entry.name, parent.rstrip(b"/") + b"/" + entry.name, entry.kind,
                        entry.mode, entry.size, entry.mtime_ns, entry.target)


def _json_fields(name: bytes, path: bytes, kind: int, mode: int, size: int, mtime_ns: int,
                 target: bytes | None) -> dict:
    from c3fs.objects.tree import DIR, FILE

    kind_name = {FILE: "file", DIR: "dir"}.get(kind, "symlink")
    item = {**json_name("name", name), **json_name("path", path), "type": kind_name,
            "mode": mode, "size": size, "mtime_ns": mtime_ns}
    if kind_name == "symlink":
        item.update(json_name("target", target) if target is not None else {"target": None})
    return item


def _print_long(vfs: Vfs, items: list[tuple[bytes, Node]]) -> None:
    records = [_record_of(vfs, n) for _, n in items]
    links = [(name, n) for (name, n), r in zip(items, records, strict=True)
             if r is None and _virtual_link(n)]
    records = [r for r in records if r is not None]
    if records and len(records) + len(links) == len(items):
        _print_records(records, links)
        return

    output.write_lines(_long_line(name, node) for name, node in items)


def _long_line(name: bytes, item: Node | Entry) -> str:
    """One row of `ls -l` of a directory's entries: a node, or an entry of its tree."""
    from c3fs.objects.tree import DIR, FILE, Entry, st_mode

    entry = item if isinstance(item, Entry) else item.entry
    text = (f"{stat.filemode(st_mode(item.kind, item.mode))} {item.size:>12} "
            f"{output.mtime(item.mtime_ns)} {output.escape(name)}")
    if entry is not None and item.kind not in (FILE, DIR):
        text += f" -> {output.escape(entry.target)}"
    return text


def _print_records(records: Iterable[JobRecord], links: list[tuple[bytes, Node]]) -> int:
    """`ls -l` of jobs or datasets: one row each, in the order given (the oldest first),
    then the links (`latest`); nothing if there is no record. Returns how many rows."""
    escape, human, age = output.escape, output.human, output.age
    count = 0

    def rows() -> Iterator[tuple[str, ...]]:
        nonlocal count
        for r in records:
            count += 1
            yield (escape(r.id), escape(r.project),
                   escape(r.status + (f" ({r.reason})" if r.reason else "")),
                   human(r.logical_bytes), human(r.stored_delta), str(r.files),
                   age(r.ended or r.created))
        if count:
            for name, n in links:
                yield (f"{escape(name)} -> {escape(n.entry.target)}", "", "", "", "", "",
                       age(n.mtime_ns / 1e9))

    lines = output.columns(("ID", "PROJECT", "STATUS", "SIZE", "STORED", "FILES", "AGE"),
                           rows(), right=(3, 4, 5))
    head = next(lines)  # (every row read: the widths are known)
    if count:  # (an empty listing prints nothing, as `ls -l` of an empty directory)
        output.write_lines(itertools.chain([head], lines))
    lines.close()
    return count


# cp -----------------------------------------------------------------------------------------
@app.command()
@click.argument("src", shell_complete=complete_path_or_file)
@click.argument("dst", shell_complete=complete_path_or_file)
@click.option("-r", "--recursive", is_flag=True, help="Copy a directory and everything in it.")
@click.option("-p", "--project", help="Project of an uploaded dataset (else from DST).")
@click.option("--keep-setuid", is_flag=True,
              help="Keep setuid, setgid and sticky bits (dropped by default).")
@pass_ctx
def cp(ctx: Ctx, src: str, dst: str, recursive: bool, project: str | None,
       keep_setuid: bool) -> None:
    """Copy a file or tree out of the store, or upload a directory as a dataset.

    Downloading writes every file to a temp name and renames it into place; modes, mtimes
    and symlinks are restored, and files already present with the same size and mtime are
    skipped. The setuid, setgid and sticky bits are dropped (as `tar` does without
    --same-permissions: a store is written by others) unless --keep-setuid. A directory's
    contents go into DST (created if missing); a SRC ending in `/` is a directory's copy
    without -r. With -r, a damaged file is named and left out, the rest is copied, and the
    exit code is 6.

    \b
    Destinations, as with cp(1):
      -                      a file's bytes go to stdout
      DST a symlink          followed: into the directory, fifo, device or file it points to
      a FIFO or device       written into, not replaced (c3fs cp FILE /dev/null)
      a file with other hard links, or another owner
                             written in place: owner, mode and links stay (bytes staged first)
      inside a directory's copy, no symlink is followed: nothing is written outside DST
      read-only, or inside a c3fs mount: one error line, exit 4
    \b
    Examples:
      c3fs cp /jobs/job_abc123/metrics.json .
      c3fs cp /jobs/job_abc123/metrics.json - | jq .loss
      c3fs cp /jobs/job_abc123/ ./local-output/
      c3fs cp -r /jobs/job_abc123 ./local-output
      c3fs cp -r --keep-setuid /jobs/job_abc123/bin ./bin   # as root: setuid bits too
      c3fs cp -r ./imagenet-mini /projects/vision/datasets/imagenet-mini
    """
    from c3fs.jobs.download import Copier
    from c3fs.objects.tree import FILE
    from c3fs.vfs import Vfs

    if is_namespace(dst) and not is_namespace(src):
        _upload_dataset(ctx, src, dst, recursive, project)
        return
    if not is_namespace(src):
        raise UsageError(f"{src!r} is not a c3fs path (it must start with /jobs/, /projects/ "
                         "or /datasets/)")
    if is_namespace(dst):  # it would be written on this machine, at /jobs/... of its root
        raise UsageError(f"cannot copy {src} to {dst}: the store's jobs are immutable; to "
                         f"write a local directory with that name, use .{dst}")
    vfs = Vfs(ctx.repo())
    node = vfs.resolve(src)
    if node.is_dir and not recursive and not src.endswith("/"):  # `/jobs/<id>/`: the seed's
        raise IsADirectory(f"{src} is a directory (use cp -r, or end it with /)")
    if dst == "-":
        sys.stdout.flush()
        Copier(vfs).copy_to(node, sys.stdout.fileno())
        return
    target = dst
    if not node.is_dir and (dst.endswith("/") or os.path.isdir(dst)):
        target = os.path.join(dst, os.fsdecode(node.name))  # the name's bytes, as cp -r
    sizes = [n.size for n in vfs.walk(node, keep=False)
             if n.kind == FILE] if output.err.is_terminal else None
    started = time.monotonic()
    with output.progress_bar("cp", None if sizes is None else sum(sizes),
                             None if sizes is None else len(sizes)) as advance:
        stats = Copier(vfs, progress=advance, keep_setuid=keep_setuid,
                       files_done=lambda n: advance(0, n), fork=True).copy(node, target)
    output.timing(f"cp {src}: {output.count(stats.files, 'file')} copied", started, stats.bytes)
    output.note(f"{output.count(stats.files, 'file')} copied ({output.human(stats.bytes)}), "
                     f"{stats.skipped} unchanged, {output.count(stats.links, 'symlink')}")


# cat ----------------------------------------------------------------------------------------
@app.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...", shell_complete=complete_path)
@pass_ctx
def cat(ctx: Ctx, paths: tuple[str, ...]) -> None:
    """Write the bytes of each file PATH to stdout, one after another.

    The same rules as `c3fs cp PATH -`: a directory or a symlink is an error, damaged data
    stops the file there (never wrong bytes) and is named. As cat(1), a PATH that fails is
    reported and the others are still written; the exit code is the first failure's.

    \b
    Examples:
      c3fs cat /jobs/job_abc123/metrics.json | jq .loss
      c3fs cat /projects/vision/jobs/latest/train.log /projects/vision/jobs/latest/eval.log
      c3fs cat /jobs/job_abc123/weights.pt > weights.pt
    """
    from c3fs.errors import C3fsError, one_line
    from c3fs.jobs.download import Copier
    from c3fs.vfs import Vfs

    vfs = Vfs(ctx.repo())
    failed: C3fsError | None = None
    for path in paths:
        started = time.monotonic()
        try:
            if not is_namespace(path):
                raise UsageError(f"{path!r} is not a c3fs path (it must start with /jobs/, "
                                 "/projects/ or /datasets/)")
            node = vfs.resolve(path)
            if node.is_dir:
                raise IsADirectory(f"{path} is a directory (c3fs ls lists it; cp -r copies it)")
            sys.stdout.flush()
            Copier(vfs).copy_to(node, sys.stdout.fileno())
        except C3fsError as exc:
            output.err.print(f"c3fs: error: {one_line(str(exc))}", markup=False, highlight=False)
            failed = failed or exc
            continue
        log.info("cat %s: %s in %.2f s", path, output.human(node.size), time.monotonic() - started)
    if failed is not None:
        sys.exit(failed.exit_code)


def _upload_dataset(ctx: Ctx, src: str, dst: str, recursive: bool, project: str | None) -> None:
    from c3fs.jobs.push import push_dir
    from c3fs.objects.job import DATASET
    from c3fs.vfs import split_path

    parts = [p.decode() for p in split_path(dst)]
    if len(parts) == 4 and parts[0] == "projects" and parts[2] == "datasets":
        if project not in (None, parts[1]):
            raise UsageError(f"--project {project} but {dst} is in project {parts[1]}")
        project, name = parts[1], parts[3]
    elif len(parts) == 2 and parts[0] == "datasets" and (project := project or default_project()):
        name = parts[1]
    else:
        raise UsageError(f"upload to {dst!r}: use /projects/<project>/datasets/<name> "
                         "(or /datasets/<name> with --project)")
    if os.path.exists(src) and not os.path.isdir(src):
        raise UsageError(f"{src} is not a directory: a dataset is uploaded from one (put the "
                         "file in a directory, then cp -r DIR /datasets/NAME)")
    if not recursive:
        raise UsageError("uploading a dataset copies a directory: use cp -r")
    repo = ctx.repo(write=True)
    with output.progress_bar("upload", _tree_bytes(src)) as advance:
        record = push_dir(repo, src, project, name, kind=DATASET, progress=advance)
    output.out.print(f"/projects/{record.project}/datasets/{record.id}")
    output.note(f"{output.count(record.files, 'file')}, {output.human(record.logical_bytes)} logical, "
                     f"{output.human(record.stored_delta)} newly stored")


# index --------------------------------------------------------------------------------------
@app.group()
def index() -> None:
    """Maintain the local index (a cache of the store, rebuilt from it).

    \b
    Examples:
      c3fs index rebuild
      c3fs index rebuild -q     # no summary
    """


@index.command("rebuild")
@pass_ctx
def index_rebuild(ctx: Ctx) -> None:
    """Rebuild the local LMDB index from the store's packs and refs.

    Every command brings the index up to date by itself; rebuild it from scratch when it
    was lost or damaged, or its summary (packs, jobs, datasets) is wanted.

    \b
    Examples:
      c3fs index rebuild
      c3fs index rebuild --store /mnt/shared/c3fs   # a store of another path
    """
    repo = ctx.repo()
    repo.index.rebuild(repo.store)
    packs = len(repo.index.pack_sizes())
    output.note(f"index rebuilt: {output.count(packs, 'pack')}, "
                     f"{output.count(repo.index.record_count('job'), 'job')}, "
                     f"{output.count(repo.index.record_count('dataset'), 'dataset')}")


