"""Following jobs: `c3fs lineage`, `diff`, `logs` (and `rerun`)."""

from __future__ import annotations

import itertools
from pathlib import Path

import click

from c3fs.errors import UsageError
from c3fs.fsutil import json_name

from . import output
from .commands import lock_wait_option, raw_path
from .complete import complete_job
from .main import Ctx, app, pass_ctx


@app.command(context_settings={"max_content_width": 100})
@click.argument("job", shell_complete=complete_job)
@click.option("--up", "direction", flag_value="up", help="Only what JOB read (its inputs, theirs...).")
@click.option("--down", "direction", flag_value="down", help="Only the jobs that read JOB (and theirs).")
@click.option("--depth", type=click.IntRange(min=1, max=1000), default=20, show_default=True,
              metavar="N", help="Steps to follow each way.")
@click.option("--json", "as_json", is_flag=True, help="Nodes and edges as JSON.")
@click.option("--dot", "as_dot", is_flag=True, help="A Graphviz graph (pipe to `dot -Tsvg`).")
@pass_ctx
def lineage(ctx: Ctx, job: str, direction: str | None, depth: int, as_json: bool,
            as_dot: bool) -> None:
    """Show the lineage of JOB: the jobs and datasets it read (recursively, from the
    inputs its record names) and the jobs that read it, each with status, age and root id.

    JOB is a job id, or a ref: /jobs/<id>, /projects/<p>/jobs/latest,
    /projects/<p>/tags/<tag>, /datasets/<name>. An input no longer in the store is listed
    as missing, with the root id it was read at.

    \b
    Examples:
      c3fs lineage job_20261201_101500_a1b2c3
      c3fs lineage /projects/vision/jobs/latest --up --depth 2
      c3fs lineage /datasets/imagenet-mini --down --json
      c3fs lineage job_abc --dot | dot -Tsvg > lineage.svg
    """
    from c3fs.jobs import lineage as graphs

    if as_json and as_dot:
        raise UsageError("give --json or --dot, not both")
    repo = ctx.repo()
    start = _start(repo, job)
    graph = graphs.lineage(graphs.indexed_records(repo), start, depth, limit=100_000,
                           up=direction != "down", down=direction != "up")
    if as_json:
        output.print_json(graphs.as_json(graph, start))
    elif as_dot:
        output.write_lines([graphs.as_dot(graph).rstrip("\n")])
    else:
        _print_table(graphs.as_json(graph, start))


def _start(repo, job: str) -> tuple[str, str]:
    from c3fs.jobs.tags import bare_id
    from c3fs.objects.job import JOB
    from c3fs.vfs import Vfs

    if (job_id := bare_id(job)) is not None:
        return JOB, repo.record(JOB, job_id).id
    node = Vfs(repo).resolve(job)
    if node.ref is None or node.depth != 2:
        raise UsageError(f"{job} is not a job or dataset: give a job id or a ref to a whole job")
    return node.ref


def _print_table(data: dict) -> None:
    rows = []
    for n in data["nodes"]:
        arrow = {"up": "<-", "down": "->", "self": "=="}[n["direction"]]
        when = n["ended"] or n["created"]
        rows.append((f"{arrow} {n['depth']}", output.escape(n["id"]), n["kind"],
                     output.escape(n["status"] or "MISSING"),
                     output.age(when) if when else "-", (n["root"] or "")[:16]))
    output.write_lines(output.columns(("DIR", "ID", "KIND", "STATUS", "AGE", "ROOT"), rows))
    if data["truncated"]:
        output.note("(truncated)")


# diff ---------------------------------------------------------------------------------------
@app.command(context_settings={"max_content_width": 100})
@click.argument("a", shell_complete=complete_job)
@click.argument("b", shell_complete=complete_job)
@click.argument("path", required=False)
@click.option("--json", "as_json", is_flag=True, help="The differences as JSON.")
@pass_ctx
def diff(ctx: Ctx, a: str, b: str, path: str | None, as_json: bool) -> None:
    """Compare A and B: files added (+), removed (-) and changed (M), with sizes; for a
    changed file, how many of its bytes B shares with A by chunk (stored once).

    A and B are job ids or refs (/jobs/<id>, /datasets/<name>, latest, tags, or folders in
    them); PATH, if given, is a folder or file inside both. Directories whose tree id is the
    same (same names, contents, modes and mtimes below) are skipped unread. Contents and link targets are compared, not modes or mtimes.
    Exit 0 when identical, 1 when different (as diff), 2 or more on errors. --json is exact:
    a path that is not UTF-8 has its bytes in base64 in path_b64 (a_b64, b_b64) besides.

    \b
    Examples:
      c3fs diff job_abc123 job_def456
      c3fs diff /projects/vision/tags/best /projects/vision/jobs/latest checkpoints
      c3fs diff /datasets/imagenet-v1 /datasets/imagenet-v2 --json
    """
    import sys

    from c3fs.jobs.diff import diff_trees

    repo = ctx.repo()
    tree_a, tree_b = _tree(repo, a, path), _tree(repo, b, path)
    if tree_a.tree_id is None or tree_b.tree_id is None:  # files: compare the two entries
        report = _diff_files(tree_a, tree_b)
    else:
        report = diff_trees(repo, tree_a.tree_id, tree_b.tree_id)
    if as_json:
        output.print_json_lists(
            {**json_name("a", raw_path(tree_a)), **json_name("b", raw_path(tree_b)),
             "identical": report.identical,
             "trees_read": report.trees_read, "subtrees_skipped": report.subtrees_skipped},
            {kind: (c.as_dict() for c in getattr(report, kind))
             for kind in ("added", "removed", "changed")})
    else:
        _print_diff(report)
    sys.stdout.flush()
    if not report.identical:
        sys.exit(1)


def _tree(repo, ref: str, path: str | None):
    from c3fs.jobs.tags import bare_id
    from c3fs.vfs import Vfs

    if (job_id := bare_id(ref)) is not None:
        ref = f"/jobs/{job_id}"
    node = Vfs(repo).resolve(ref.rstrip("/") + ("/" + path.lstrip("/") if path else ""))
    if node.ref is None:
        raise UsageError(f"{node.display} is not in a job or dataset")
    return node


def _diff_files(na, nb):
    from c3fs.jobs.diff import DiffReport, _compare

    report = DiffReport()
    if na.entry is None or nb.entry is None:
        raise UsageError("compare two folders or two files, not a folder with a file")
    _compare(na.path[-1], na.entry, nb.entry, report)
    return report


def _print_diff(report) -> None:
    def show(c) -> str:
        return output.escape(c.path)

    output.write_lines(itertools.chain(
        (f"+ {show(c)}  {output.human(c.size_b)}" for c in report.added),
        (f"- {show(c)}  {output.human(c.size_a)}" for c in report.removed),
        (f"M {show(c)}  {output.human(c.size_a)} -> {output.human(c.size_b)}, "
         f"{output.human(c.shared)} shared" for c in report.changed)))
    output.note(f"{len(report.added)} added, {len(report.removed)} removed, "
                f"{len(report.changed)} changed")


# logs ---------------------------------------------------------------------------------------
@app.command(context_settings={"max_content_width": 100})
@click.argument("job", shell_complete=complete_job)
@click.option("-n", "--tail", type=click.IntRange(min=0), metavar="N",
              help="Only the last N lines of each stream.")
@click.option("--stdout", "only", flag_value="stdout", help="Only what the job wrote to stdout.")
@click.option("--stderr", "only", flag_value="stderr", help="Only what the job wrote to stderr.")
@pass_ctx
def logs(ctx: Ctx, job: str, tail: int | None, only: str | None) -> None:
    """Print what JOB's command wrote: its stdout to stdout, its stderr to stderr.

    `c3fs run` keeps both (for FAILED, TIMEOUT and CANCELED jobs too) in the store with
    the job, outside its artifacts. When the upload failed (UPLOAD_ERROR) they are kept
    in the working dir, in c3fs-logs/<job id>/. The two streams are kept apart: their
    interleaving is not.

    \b
    Examples:
      c3fs logs job_20261201_101500_a1b2c3
      c3fs logs /projects/vision/jobs/latest --tail 50
      c3fs logs job_abc123 --stderr -n 20
    """
    import sys

    from c3fs.jobs.logs import read_log
    from c3fs.jobs.tags import resolve_job

    repo = ctx.repo()
    record = resolve_job(repo, job)
    for stream, target in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if only in (None, stream):
            _write_bytes(target, read_log(repo, record, stream, tail))


def _write_bytes(target, data: bytes) -> None:
    """The job's bytes as they were (text only where the stream takes text: tests)."""
    target.flush()
    buffer = getattr(target, "buffer", None)
    if buffer is not None:
        buffer.write(data)
        buffer.flush()
    else:
        target.write(data.decode("utf-8", "replace"))


# rerun --------------------------------------------------------------------------------------
@app.command(context_settings={"max_content_width": 100})
@click.argument("job", shell_complete=complete_job)
@click.option("-j", "--job", "job_id", help="Id of the new job (default: a fresh one); "
              "reserved as for run.")
@click.option("--timeout", type=float, metavar="SECONDS", help="As for run.")
@click.option("-C", "--workdir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=".", help="Working directory of the new job (default: .).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the new job's record as JSON (with `changed` and `vanished`, as for "
                   "run); the command's stdout then goes to stderr, as for run.")
@lock_wait_option("3600 s, as for run", "the upload fails (UPLOAD_ERROR, exit 74)")
@pass_ctx
def rerun(ctx: Ctx, job: str, job_id: str | None, timeout: float | None, workdir: Path,
          as_json: bool, lock_wait: float | None) -> None:
    """Run JOB's command again as a new job of its project, with its inputs pinned: each
    input is mounted where it was, from the job or dataset it resolved to then (not what
    latest or a tag names now), and refused (exit 8, nothing run) unless it still has the
    root id it had. Output dirs and env come from the working dir's .c3, as for run (the
    record does not keep them); its datasets: are replaced by the recorded inputs.

    \b
    Examples:
      c3fs rerun job_20261201_101500_a1b2c3
      c3fs rerun /projects/vision/jobs/latest -C ~/src/vision --json
    """
    from c3fs.jobs.config import load_config
    from c3fs.jobs.pins import pinned_config
    from c3fs.jobs.run import JobSpec, run_job
    from c3fs.jobs.tags import resolve_job

    from .lifecycle import finish_run, result_only

    repo = ctx.repo(write=True)
    record = resolve_job(repo, job)
    if not record.command:
        raise UsageError(f"job {record.id} was pushed, not run: it has no command to rerun")
    workdir = workdir.resolve()
    config = pinned_config(record, load_config(None, workdir))
    spec = JobSpec(list(record.command), workdir, config, record.project, job_id, timeout,
                   ctx.store_url, stdout_to_stderr=result_only(as_json), rerun_of=record.id,
                   progress=output.progress_bar,
                   **({} if lock_wait is None else {"lock_wait": lock_wait}))
    changed: list[str] = []
    vanished: list[str] = []
    finish_run(*run_job(repo, spec, changed, vanished), as_json, changed, vanished)
