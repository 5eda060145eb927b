"""`c3fs tag`: set, move, remove and list the named pointers to jobs."""

from __future__ import annotations

import click

from c3fs.errors import UsageError

from . import output
from .complete import complete_job
from .main import Ctx, app, pass_ctx


@app.command(context_settings={"max_content_width": 100})
@click.argument("args", nargs=-1, metavar="[JOB] NAME", shell_complete=complete_job)
@click.option("--rm", "remove", is_flag=True, help="Remove the tag NAME.")
@click.option("-l", "--list", "list_", is_flag=True, help="List the tags (of --project, or all).")
@click.option("-p", "--project", help="The tag's project (default: the job's; for --rm, the "
                                      "one project that has the tag).")
@click.option("--json", "as_json", is_flag=True, help="Print the tag(s) as JSON.")
@pass_ctx
def tag(ctx: Ctx, args: tuple[str, ...], remove: bool, list_: bool, project: str | None,
        as_json: bool) -> None:
    """Name a job: /projects/<p>/tags/NAME then resolves to JOB wherever a ref is taken
    (ls, cp, pull, mount, .c3 datasets:), and shows as a symlink in ls and the mount.

    A tag belongs to the job's project. Tagging again moves it; every change is a new
    create-only record in the store naming the job before, so when two machines move a tag
    at once exactly one wins and the other is told (exit 4), nothing is lost. A tag keeps
    the job's data through gc; `rm` of a tagged job leaves a tag that resolves to an error.
    /projects/<p>/jobs/latest needs no tag: it is the newest SUCCEEDED job of <p>.

    \b
    Examples:
      c3fs tag job_20261201_101500_a1b2c3 best    # /projects/<p>/tags/best
      c3fs tag /projects/vision/jobs/latest release-3
      c3fs tag --list --project vision --json
      c3fs tag --rm best --project vision
      c3fs mount /projects/vision/tags/best /data/model
    """
    from c3fs.jobs import tags

    repo = ctx.repo()
    store = repo.store
    if list_:
        if args or remove:
            raise UsageError("--list takes no JOB or NAME")
        _print_tags(tags.list_tags(store, project), as_json)
        return
    if remove:
        if len(args) != 1:
            raise UsageError("give the NAME of the tag to remove: c3fs tag --rm NAME")
        old = tags.find_tag(store, args[0], project)
        tags.remove_tag(store, old.project, old.name)
        _report(old, as_json, f"removed tag {old.project}/{old.name} (was {old.job})")
        return
    if len(args) != 2:
        raise UsageError("give a JOB and a NAME: c3fs tag JOB NAME (or --rm NAME, --list)")
    record = tags.resolve_job(repo, args[0])
    if project and project != record.project:
        raise UsageError(f"job {record.id} is of project {record.project!r}, not {project!r}")
    new = tags.set_tag(store, record.project, args[1], record.id)
    moved = f" (moved from {new.previous})" if new.previous else ""
    _report(new, as_json, f"/projects/{new.project}/tags/{new.name} -> {new.job}{moved}")


def _report(tag, as_json: bool, text: str) -> None:
    if as_json:
        output.print_json(tag.as_dict())
    else:
        output.out.print(output.escape(text), markup=False)


def _print_tags(found, as_json: bool) -> None:
    if as_json:
        output.print_json([t.as_dict() for t in found])
        return
    rows = [(output.escape(t.project), output.escape(t.name), output.escape(t.job),
             output.age(t.created), output.escape(t.host)) for t in found]
    output.write_lines(output.columns(("PROJECT", "TAG", "JOB", "AGE", "HOST"), rows))
