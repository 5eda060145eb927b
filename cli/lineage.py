"""`c3fs lineage`: the jobs a job read and the jobs that read it."""

from __future__ import annotations

import click

from c3fs.errors import UsageError
from cli import output
from cli.main import Ctx, app, pass_ctx


@app.command(context_settings={"max_content_width": 100})
@click.argument("job")
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
    graph = graphs.lineage(graphs.all_records(repo), start, depth, limit=100_000,
                           up=direction != "down", down=direction != "up")
    if as_json:
        output.print_json(graphs.as_json(graph, start))
    elif as_dot:
        output.write_lines([graphs.as_dot(graph).rstrip("\n")])
    else:
        _print_table(graphs.as_json(graph, start))


def _start(repo, job: str) -> tuple[str, str]:
    from c3fs.objects.job import JOB
    from c3fs.vfs import Vfs

    if "/" not in job:
        return JOB, repo.record(JOB, job).id
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
        output.err.print("(truncated)", markup=False)
