"""Lifecycle commands: run, pull, balance, rm, gc, verify, config; `data` aliases."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from c3fs.errors import LockedError, NotFound, UsageError

from . import output
from .commands import changed_note, cp, default_project, lock_wait_option, ls, record_json
from .complete import complete_job
from .main import Ctx, app, pass_ctx

log = logging.getLogger("c3fs.cli")


# run ----------------------------------------------------------------------------------------
@app.command(context_settings={"allow_interspersed_args": False})
@click.option("-p", "--project", help="Project (default: `project:` in .c3, else `project` of "
                                       "the c3fs config or C3FS_PROJECT, else 'default').")
@click.option("-j", "--job", "job_id", help="Job id (default: a fresh job_<time>_<random>). "
              "Reserved in the store while the job runs: a second run of it meanwhile, on any "
              "host, is refused at its start (exit 7); one the store has already, too (exit 4).")
@click.option("--timeout", type=float, metavar="SECONDS", help="Stop the job after this many seconds, > 0 (TIMEOUT).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Job config (default: .c3 in the working directory, if present).")
@click.option("-C", "--workdir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=".", help="Working directory of the job (default: .).")
@click.option("--json", "as_json", is_flag=True,
              help="At the end, print the job record as JSON on stdout (not just its id; with "
                   "`changed` and `vanished`, if any, as for push); the command's stdout then "
                   "goes to stderr.")
@lock_wait_option("3600 s, 1 h: the job's work is done",
                  "the upload fails (UPLOAD_ERROR, exit 74)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def run(ctx: Ctx, project, job_id, timeout, config_path, workdir: Path, as_json: bool,
        lock_wait: float | None, command) -> None:
    """Run COMMAND as a job; collect its artifacts into the store.

    The job writes into $C3_ARTIFACTS_DIR, the working dir's artifacts/ (pre-created and
    empty; one left holding files is removed if the job last run there stored all of them,
    else moved aside to artifacts.prev-<time>, never deleted), and into the `output:`
    dirs of .c3; both are collected into one manifest at
    /jobs/<id>/. The `datasets:` of .c3 are mounted read-only before the command starts.
    One run at a time per working dir, and per job id (-j) on any host sharing the store. What
    a killed run left (mounts, its temp dir) is cleaned up by the next run, which says so;
    the reservation of its -j id, by the next run of that id. A dataset mounted inside artifacts/ or an
    `output:` dir is refused (exit 2): its files would be taken for the job's.

    The command's stdout and stderr are shown live and kept with the job (`c3fs logs`).
    With --json or -q, stdout is c3fs's result alone (the record, or the job id): the
    command's stdout goes to stderr instead, so `ID=$(c3fs run -q -- cmd)` and a pipe
    to jq get just that.

    \b
    Status and exit code:
      SUCCEEDED                 exit 0, artifacts stored
      FAILED (SCRIPT_ERROR)     the command's exit code (upload is best effort)
      FAILED (UPLOAD_ERROR)     74: exit 0 but the artifacts could not be stored
      TIMEOUT                   124 (--timeout passed)
      CANCELED                  130 (Ctrl-C or SIGTERM)

    A gc running on the store when the job ends is waited for (saying so every 30 s) up to
    --lock-wait seconds, then the upload fails (UPLOAD_ERROR). An S3 store that refuses
    connections meanwhile (a restart) is retried for C3FS_STORE_DEADLINE (60 s).

    Options go before COMMAND (or before `--`): everything after it is the command's.

    \b
    Examples:
      c3fs run --project vision -- python train.py --epochs 3
      c3fs run --timeout 3600 -- ./eval.sh
      c3fs run --json -- python eval.py | jq .status   # eval.py's stdout: on stderr
      ID=$(c3fs run -q -- python train.py)
    \b
    .c3:
      project: vision
      output: [results, checkpoints]
      datasets:
        - ref: /jobs/job_preprocess
          mount: /data/preprocessed
        - ref: /projects/vision/tags/best   # latest and tags too
          mount: model
          digest: "3f2a...e655"   # optional pin: refused if it is another root
      env:
        SEED: "42"              # strings only; unknown keys are an error
    """
    from c3fs.jobs.config import load_config
    from c3fs.jobs.run import JobSpec, run_job

    workdir = workdir.resolve()
    config = load_config(config_path, workdir)
    spec = JobSpec(list(command), workdir, config, project or config.project or default_project() or "default",
                   job_id, timeout, ctx.store_url, stdout_to_stderr=result_only(as_json),
                   progress=output.progress_bar,
                   **({} if lock_wait is None else {"lock_wait": lock_wait}))
    changed: list[str] = []
    vanished: list[str] = []
    record, code = run_job(ctx.repo(write=True), spec, changed, vanished)
    finish_run(record, code, as_json, changed, vanished)


def result_only(as_json: bool) -> bool:
    """Whether stdout is for run's result alone (--json's record, -q's job id), so that the
    command's stdout goes to stderr (it is still in the job's logs)."""
    return as_json or output.quiet


def finish_run(record, code: int, as_json: bool, changed: list[str],
               vanished: list[str]) -> None:
    """Say how a run ended (the record, or its id; with --json, the files that changed
    while read and those removed before read, as push says them) and exit with the job's code, also when stdout's reader
    left (`c3fs run ... | head`): not 141, which scripts take for a harmless SIGPIPE, for a
    job that failed."""
    from .main import drop_stdout

    try:
        if record is not None:
            status = record.status + (f" ({record.reason})" if record.reason else "")
            output.note(f"job {record.id}: {status}, {output.count(record.files, 'file')}, "
                        f"{output.human(record.logical_bytes)} logical, "
                        f"{output.human(record.stored_delta)} newly stored"
                        f"{changed_note(changed, vanished)}")
            if as_json:
                output.print_json(record_json(record, changed, vanished))
            else:
                output.out.print(record.id)
        elif as_json:
            output.print_json(None)  # the job could not be recorded (the errors say why)
        sys.stdout.flush()
    except BrokenPipeError:
        drop_stdout()
    sys.exit(code)


# pull ---------------------------------------------------------------------------------------
@app.command()
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@click.option("-d", "--dest", default=".", show_default=True, help="Directory to pull into.")
@click.option("--json", "as_json", is_flag=True, help="Print what was pulled as JSON.")
@click.option("--keep-setuid", is_flag=True,
              help="Keep setuid, setgid and sticky bits (dropped by default).")
@pass_ctx
def pull(ctx: Ctx, jobs: tuple[str, ...], dest: str, as_json: bool, keep_setuid: bool) -> None:
    """Download jobs' artifacts into DEST/<job id>/.

    With no JOBS, every completed (SUCCEEDED) job not pulled to this machine before (or
    re-created with other content since: files the old job had and the new one lacks are
    left in DEST/<job id>/ and named in a warning). Run again after an interruption: only
    missing or different files are fetched. A job with damaged data is pulled but for the damaged
    files (each named), stays pending, and the exit code is 6.
    Modes are restored without the setuid, setgid and sticky bits (a store is written by
    others) unless --keep-setuid.

    \b
    Examples:
      c3fs pull job_abc123
      c3fs pull /projects/vision/jobs/latest /projects/vision/tags/best
      c3fs pull --dest ./runs          # all new completed jobs
      c3fs pull job_abc123 --keep-setuid
    """
    from c3fs.jobs.pull import PullIncomplete, pull_total, to_pull
    from c3fs.jobs.pull import pull as run_pull
    from c3fs.jobs.tags import bare_id, resolve_job

    repo = ctx.repo()
    job_ids = [bare_id(j) or resolve_job(repo, j).id for j in jobs]
    started = time.monotonic()
    records = to_pull(repo, job_ids)
    try:
        with output.progress_bar("pull", pull_total(records),
                                 sum(r.files for r in records)) as advance:
            pulled = run_pull(repo, job_ids, dest, advance, keep_setuid, records,
                              files_done=lambda n: advance(0, n), fork=True)
    except PullIncomplete as exc:  # say what did arrive, then the error
        _print_pulled(exc.pulled, as_json)
        raise
    output.timing(f"pull: {output.count(len(pulled), 'job')}", started,
                  sum(p.stats.bytes for p in pulled))
    if not pulled and not as_json:
        output.note("nothing new to pull")
    _print_pulled(pulled, as_json)


def _print_pulled(pulled, as_json: bool) -> None:
    if as_json:
        output.print_json([{"job": p.record.id, "dest": p.dest, "files": p.stats.files,
                            "bytes": p.stats.bytes, "unchanged": p.stats.skipped} for p in pulled])
        return
    for p in pulled:
        output.result_line(f"{p.record.id} -> {p.dest} ({output.count(p.stats.files, 'file')}, "
                           f"{output.human(p.stats.bytes)}, {p.stats.skipped} unchanged)")


# balance ------------------------------------------------------------------------------------
@app.command()
@click.option("--by-project", is_flag=True, help="One row per project.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def balance(ctx: Ctx, by_project: bool, as_json: bool) -> None:
    """Show storage usage: stored bytes, logical bytes, savings and the (soft) quota.

    CHARGED (--by-project) is what each job or dataset added to the store when it was
    registered: bytes it shares with an earlier one are charged to that one, and bytes
    stored by a push that was interrupted are charged to none, also once a later push
    uses them. It is who brought the bytes in, not a split of what is stored now.

    \b
    Examples:
      c3fs balance
      c3fs balance --by-project --json
    """
    from c3fs.jobs.accounting import balance as compute_balance

    b = compute_balance(ctx.repo())
    if as_json:
        output.print_json({"stored_bytes": b.stored_bytes, "packs": b.packs,
                           "logical_bytes": b.total.logical_bytes, "saving": b.saving,
                           "charged_bytes": b.total.charged_bytes, "quota": b.quota,
                           "used_share": b.used_share, "over_quota": b.over_quota,
                           "jobs": b.total.jobs, "datasets": b.total.datasets,
                           "projects": b.projects})
        return
    quota = "none" if b.quota is None else f"{output.human(b.quota)} ({b.used_share:.1%} used)"
    lines = [("stored", output.human(b.stored_bytes) + f" in {output.count(b.packs, 'pack')}"),
             ("logical", output.human(b.total.logical_bytes) + f" in {output.count(b.total.files, 'file')}"),
             ("saved by dedup+compression", f"{b.saving:.1%}"),
             ("jobs / datasets", f"{b.total.jobs} / {b.total.datasets}"), ("quota (soft)", quota)]
    for label, value in lines:
        output.out.print(f"{label:<28} {value}", markup=False)
    if b.over_quota:
        output.note("c3fs: warning: usage exceeds the quota (soft: nothing is rejected)")
    if by_project:
        table = output.table("PROJECT", "JOBS", "DATASETS", "LOGICAL", "CHARGED")
        for name, u in sorted(b.projects.items()):
            output.row(table, name, str(u.jobs), str(u.datasets), output.human(u.logical_bytes),
                       output.human(u.charged_bytes))
        output.out.print(table)


# rm / gc / verify -----------------------------------------------------------------------------
@app.command()
@click.argument("jobs", nargs=-1, required=True, shell_complete=complete_job)
@click.option("--dataset", is_flag=True, help="The names are datasets, not jobs.")
@click.option("-f", "--force", is_flag=True,
              help="Remove them even while mounted (gc keeps what a live mount reads).")
@pass_ctx
def rm(ctx: Ctx, jobs: tuple[str, ...], dataset: bool, force: bool) -> None:
    """Remove jobs (their refs); `c3fs gc` then frees the bytes nothing else uses.

    A job or dataset mounted on any host sharing the store (`c3fs mount /jobs/<id>`, a .c3
    datasets: entry, an fstab line) is not removed: one line says where it is mounted, exit
    7. --force removes it anyway: the mount reads on, and gc keeps what it reads until it is
    unmounted. A mount killed -9 holds nothing (one of another host once its lease, 60 s,
    passes unrenewed: rm waits that out). Not known to rm: a mount of the whole namespace
    (a removed job leaves it), and one that cannot write to the store (it said so).

    \b
    Examples:
      c3fs rm job_abc123 job_def456 && c3fs gc
      c3fs rm /projects/vision/jobs/job_abc123
      c3fs rm --dataset imagenet-mini
      c3fs rm --force job_abc123       # even while mounted (c3fs unlock --list: where)
    """
    repo = ctx.repo()
    refs = checked_refs(jobs, dataset, repo.store.get_ref)  # unknown: NotFound, nothing removed
    from c3fs.reader import trace
    from c3fs.store import mounts

    with output.status("rm") as update:  # (a mount of another host is watched for a lease)
        held = mounts.held(repo.store, refs, watch=not force, say=update)
    if held and not force:
        places = "; ".join(mounts.mounted_at(ref, found) for ref, found in held.items())
        raise LockedError(f"{places}: unmount it first, or rm --force (gc keeps what a mount "
                          "reads); nothing was removed")
    for kind, name in refs:
        repo.store.delete_ref(kind, name)
        repo.index.remove_record(kind, name)
        trace.remove(repo.store, kind, name)  # its access traces (learned prefetch)
        output.note(f"removed {kind} {name}")
        if (kind, name) in held:
            log.warning("%s: gc keeps what the mount reads until it is unmounted",
                        mounts.mounted_at((kind, name), held[kind, name]))


def ref_names(names: tuple[str, ...], dataset: bool = False) -> list[tuple[str, str, str | None]]:
    """(kind, name, project) of each argument, once each: a job id (a dataset name with
    --dataset; project None), or the path `ls` shows: /jobs/<id>, /projects/<p>/jobs/<id>,
    /datasets/<name>, ... (project <p> for a /projects/<p>/ path; a trailing / is allowed)."""
    from c3fs.jobs.tags import bare_id
    from c3fs.objects.job import DATASET, JOB

    refs: dict[tuple[str, str, str | None], None] = {}
    for name in names:
        parts = [p for p in name.split("/") if p] if name.startswith("/") else []
        project = None
        if parts[:1] == ["projects"] and len(parts) == 4:
            project, parts = parts[1], parts[2:]
        if len(parts) == 2 and parts[0] in ("jobs", "datasets"):
            refs[(JOB if parts[0] == "jobs" else DATASET, parts[1], project)] = None
        else:
            refs[(DATASET if dataset else JOB, bare_id(name) or name, None)] = None
    return list(refs)


def checked_refs(names: tuple[str, ...], dataset: bool, lookup) -> list[tuple[str, str]]:
    """`ref_names`, each known (`lookup(kind, name)`: its record, or NotFound) and in the
    project its path names: NotFound (exit 3) before anything is done, as `ls` of that path
    says."""
    refs = []
    for kind, name, project in ref_names(names, dataset):
        record = lookup(kind, name)
        if project is not None and record.project != project:
            raise NotFound(f"/projects/{project}/{kind}s/{name}: no such {kind} (it is in "
                           f"project {record.project})")
        if (kind, name) not in refs:
            refs.append((kind, name))
    return refs


@app.command()
@click.option("-n", "--dry-run", is_flag=True, help="Say what would be freed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def gc(ctx: Ctx, dry_run: bool, as_json: bool) -> None:
    """Free every stored byte that no job, dataset or live mount reaches.

    Deletes dead packs and repacks partly-live ones. Holds the store's gc lock: it will not
    start while a push runs, and pushes wait for it (fail with a clear message). What a live
    mount of a job or dataset reads is kept, on whichever host, also once the job was
    removed (rm --force): it is freed by the first gc after the unmount. A mount of another
    host is alive if it renews its lease (every 15 s: gc waits for that), dead once it has
    not for 60 s (its lease is then removed). Not kept: what a mount of the whole namespace
    reads of a removed job, and what a mount that cannot write to the store reads.

    \b
    Examples:
      c3fs gc --dry-run
      c3fs gc
    """
    from c3fs.jobs.maintenance import gc as run_gc

    with output.status("gc") as update:
        report = run_gc(ctx.repo(), dry_run, progress=update)
    if as_json:
        output.print_json(report)
        return
    verb = "would free" if dry_run else "freed"
    kept = (f"; kept {output.count(report.mounted_kept, 'mounted tree')} of removed jobs "
            "(c3fs unlock --list)" if report.mounted_kept else "")
    output.out.print(f"{verb} {output.human(report.bytes_freed)}: {output.count(report.packs_deleted, 'pack')} "
                     f"deleted, {report.packs_repacked} repacked into {report.packs_written}{kept}",
                     markup=False)


@app.command()
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@click.option("--dataset", is_flag=True, help="The names are datasets, not jobs.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON (each problem's `paths`: the places it breaks, "
                   "exactly).")
@pass_ctx
def verify(ctx: Ctx, jobs: tuple[str, ...], dataset: bool, as_json: bool) -> None:
    """Read every blob the jobs reach (default: all) and check its hash.

    Names each damaged or missing blob with the jobs and paths it breaks; exits 6 if
    anything is wrong. In --json, a problem's `broken` names them as the text does (`job
    j1:/a/b`), and `paths` exactly: a {job (or dataset), path} each, a path that is not
    UTF-8 with its bytes in base64 in path_b64 besides (as ls --json), a paged directory's
    `page`; a damaged ref's has no path.

    \b
    Examples:
      c3fs verify
      c3fs verify job_abc123 --json
      c3fs verify /datasets/imagenet-mini
    """
    from c3fs.jobs.maintenance import verify as run_verify

    with output.progress_bar("verify", None) as advance:
        repo = ctx.repo()
        report = run_verify(repo, checked_refs(jobs, dataset, repo.record), progress=advance)
    if as_json:
        output.print_json(report.as_dict())
    else:
        for p in report.problems:
            output.out.print(f"DAMAGED {p.kind} {p.blob_id[:16]}: {output.escape(p.error)}",
                             markup=False)
            for where in p.broken[:20]:
                output.out.print(f"  breaks {where.text(output.escape)}", markup=False)
            if len(p.broken) > 20:
                output.out.print(f"  ... and {len(p.broken) - 20} more", markup=False)
        verdict = "OK" if report.ok else output.count(len(report.problems), "problem")
        output.note(f"verified {report.records} jobs/datasets, {output.count(report.blobs, 'blob')}, "
                         f"{output.human(report.bytes)}: {verdict}")
    if not report.ok:
        sys.exit(6)


# config -------------------------------------------------------------------------------------
@app.group()
def config() -> None:
    """Show c3fs's settings (and where each comes from), or change the store's (quota).

    \b
    Examples:
      c3fs config show
      c3fs config show --local --json    # this machine's settings, no request to the store
      c3fs config set quota 50GiB
    """


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@click.option("--local", is_flag=True,
              help="Only this machine's settings: do not open the store for its own.")
@pass_ctx
def config_show(ctx: Ctx, as_json: bool, local: bool) -> None:
    """Print each effective setting, its value and where it comes from.

    Sources, first found wins: a flag (--store, --profile, ...), the environment
    (C3FS_*, AWS_*), the config file, the default. Then, for an s3:// store, where the
    credentials come from (never the keys themselves), and the store's own settings
    (quota, chunk sizes), unless --local.

    \b
    The config file ($C3FS_CONFIG, else $XDG_CONFIG_HOME/c3fs/config.toml):
      store = "s3://bucket/c3"
      endpoint = "https://minio.example:9000"
      profile = "ml-team"
      region = "eu-west-1"
      disk_cache = "20GiB"
      cache_dir = "/scratch/c3fs-cache"
      project = "vision"
    \b
    Examples:
      c3fs config show
      c3fs --profile ml config show --json
      c3fs config show --local      # no request to the store
    """
    from c3fs import settings

    from .main import flags

    rows = []
    for name, setting in settings.effective().items():
        source = setting.source
        if name in flags and source == f"env {settings.KEYS[name].env[0]}":
            source = flags[name]
        rows.append({"key": name, "value": setting.value, "source": source})
    problems = []
    store = settings.get("store").value or ""
    if store.startswith("s3://"):
        rows.append(_credentials_row(problems, rows))
    if not local:
        rows.extend(_store_rows(ctx, problems))
    if as_json:
        output.print_json({"schema": 1, "config_file": settings.config_path(), "settings": rows})
    else:
        cells = [(r["key"], "-" if r["value"] is None else output.escape(str(r["value"])),
                  output.escape(r["source"])) for r in rows]
        output.write_lines(output.columns(("KEY", "VALUE", "SOURCE"), cells))
        output.note(f"config file: {settings.config_path()}")
    if problems:
        raise problems[0]


def _credentials_row(problems: list, rows: list[dict]) -> dict:
    """Where an s3:// store's credentials come from; never the keys. The endpoint and
    region `rows` leave unset are filled in as requests find them (an AWS profile's
    `endpoint_url` and `region`, else AWS's)."""
    from c3fs.errors import C3fsError
    from c3fs.store.aws import DEFAULT_REGION, resolve

    try:
        found = resolve()
    except C3fsError as exc:
        problems.append(exc)
        return {"key": "credentials", "value": None, "source": f"error: {exc}"}
    for row in rows:
        if row["value"] is not None or row["key"] not in ("endpoint", "region"):
            continue
        if row["key"] in found.found_in:
            row.update(value=getattr(found, row["key"]), source=found.found_in[row["key"]])
        elif row["key"] == "region":
            row.update(value=DEFAULT_REGION, source="default (AWS's)")
    key_id = (found.credentials or {}).get("access_key_id")
    shown = f"{key_id[:4]}...{key_id[-4:]}" if key_id and len(key_id) > 12 else None
    return {"key": "credentials", "value": shown, "source": found.source}


def _store_rows(ctx: Ctx, problems: list) -> list[dict]:
    """The store's own settings (its `config` object), with source `store`."""
    import msgspec

    from c3fs.errors import C3fsError

    try:
        stored = msgspec.to_builtins(ctx.repo().store.config)
    except C3fsError as exc:
        problems.append(exc)
        return [{"key": "store.*", "value": None, "source": f"error: {exc} (--local skips it)"}]
    return [{"key": f"store.{k}", "value": v, "source": "store"} for k, v in stored.items()]


@config.command("set")
@click.argument("key", type=click.Choice(["quota"]), metavar="KEY")
@click.argument("value")
@pass_ctx
def config_set(ctx: Ctx, key: str, value: str) -> None:
    """Set a store setting.

    \b
    Examples:
      c3fs config set quota 50GiB
      c3fs config set quota none
    """
    quota = None if value.lower() in ("none", "off", "") else output.parse_size(value)
    if quota is not None and quota <= 0:
        raise UsageError("quota must be positive (or 'none')")
    ctx.repo(write=True).store.save_config(quota=quota)
    output.note(f"quota set to {'none' if quota is None else output.human(quota)}")


# data aliases (the platform's `c3 data ls/cp`) ------------------------------------------------
@app.group()
def data() -> None:
    """Aliases for people used to the platform: `c3fs data ls`, `c3fs data cp`.

    \b
    Examples:
      c3fs data ls -l /jobs/
      c3fs data cp /jobs/job_abc123/metrics.json .
      c3fs data cp -r ./imagenet-mini /projects/vision/datasets/imagenet-mini
    """


data.add_command(ls, "ls")
data.add_command(cp, "cp")
