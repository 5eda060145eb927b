"""`c3fs run`: run a command as a job and collect its artifacts, as the platform does.

Lifecycle: a job id the user gave is reserved in the store until the job is registered
(`reserve_job`: another live run of that id, on any host, is refused before anything runs),
and any id must be free in the store; earlier runs that were killed are cleaned up after
(`runstate`); each `.c3` dataset is mounted read-only; the working dir is locked (one run at
a time there) and its `artifacts/` made fresh and empty (what it holds is removed if the job
last run there stored all of it, else moved aside: `runstate`) and exported as
`$C3_ARTIFACTS_DIR`, with `C3_JOB_ID`, `C3_PROJECT` and the `.c3` `env:`; the command runs in
the working directory in its own process group; the datasets are unmounted (always); the
artifacts dir and the `output:` dirs are collected into one tree; the job is registered. The
artifacts dir stays in place afterwards (the next job removes it if this one stored all of
it, else moves it aside). Statuses follow the platform:

- exit 0, upload ok                  -> SUCCEEDED
- exit 0, upload failed              -> FAILED / UPLOAD_ERROR (not retried; exit code 74)
- exit != 0                          -> FAILED / SCRIPT_ERROR, exit code kept
- `--timeout` passed                 -> TIMEOUT (exit code 124)
- SIGINT / SIGTERM to `c3fs run`     -> CANCELED (exit code 130)

A SIGINT or SIGTERM cancels the job whenever it comes while the command runs, even while it
is being started (the command is stopped as soon as its process is known); more while the
job is being stopped change nothing. One before the command starts, or after it ended
(during the upload), interrupts the run: nothing is recorded.

When the script failed, timed out or was canceled, the upload is best effort: errors are
logged and whatever was collected stays browsable. Whenever the upload fails, whatever the
status, the local artifacts dir is kept (as always) and its path logged: nothing is lost.

The `output:` dirs live in the working directory and may already hold files when the job
starts (an earlier run's): they are collected with the job, as on the platform, but each
such dir is named in a warning at job start. A command that could not start wrote nothing:
its output dirs are not collected. A timeout must be a positive number of seconds. A
dataset mounted inside the artifacts dir or an `output:` dir, or over one, is refused
before anything runs: its files would be collected as the job's.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from c3fs.errors import C3fsError, UsageError
from c3fs.fsutil import count, tree_bytes, walk_files
from c3fs.jobs.collect import collect
from c3fs.jobs.config import ConfigError, JobConfig, check_mount_path, output_dirs
from c3fs.jobs.logs import Tee, keep_locally
from c3fs.jobs.pins import canonical_ref, resolve_pinned
from c3fs.jobs.push import ensure_free, ingest, record_for
from c3fs.jobs.runstate import (
    ARTIFACTS,
    RunState,
    clean_stale_runs,
    clear_dead_mount,
    fresh_artifacts,
    lock_workdir,
    remember_run,
)
from c3fs.objects.ids import check_name, check_new_job_id, new_job_id
from c3fs.objects.job import CANCELED, FAILED, JOB, SUCCEEDED, TIMEOUT, Input, JobRecord
from c3fs.repo import Repo
from c3fs.store.backend import BackendError, TemporaryBackendError
from c3fs.store.locks import RUN_LOCK_WAIT, Lease, reserve_job
from c3fs.vfs import Vfs

log = logging.getLogger(__name__)
UPLOAD_ERROR_EXIT = 74
TIMEOUT_EXIT = 124
CANCELED_EXIT = 130
KILL_GRACE = 10.0


@dataclass
class JobSpec:
    command: list[str]
    workdir: Path
    config: JobConfig
    project: str
    job_id: str | None = None
    timeout: float | None = None
    store_url: str | None = None
    stdout_to_stderr: bool = False  # the command's stdout to our stderr: stdout is the result's
    rerun_of: str | None = None  # the job whose recorded inputs are `config.datasets` (rerun)
    # (label, total bytes) -> a context giving `advance(n)`: progress of the upload
    progress: Callable[[str, int], AbstractContextManager[Callable[[int], None]]] | None = None
    lock_wait: float = RUN_LOCK_WAIT  # seconds the upload waits for a gc that holds the store


@dataclass
class Outcome:
    status: str = SUCCEEDED
    reason: str = ""
    exit_code: int | None = None
    started: float = 0.0
    inputs: list[Input] = field(default_factory=list)
    command_started: bool = False
    kept: Path | None = None  # the artifacts dir, kept because the upload failed
    changed: list[str] = field(default_factory=list)  # files stored as read (`ingest`)
    vanished: list[str] = field(default_factory=list)  # removed before read, not stored


def run_job(repo: Repo, spec: JobSpec,
            changed: list[str] | None = None,
            vanished: list[str] | None = None) -> tuple[JobRecord | None, int]:
    """Run the job; return its record (None if it could not be written) and the exit code.
    The files its upload stored as read, still changing (see `ingest`), are added to
    `changed`; those it found removed before it read them (not stored) to `vanished`."""
    _check_timeout(spec.timeout)
    check_name(spec.project, "project")
    job_id = new_job_id() if spec.job_id is None else check_new_job_id(spec.job_id)
    reservation = None if spec.job_id is None else _reserve(repo, job_id)
    try:
        ensure_free(repo, JOB, job_id)  # (after reserving: a run registers before it lets go)
        record, outcome = _run_reserved(repo, spec, job_id)
    finally:
        if reservation is not None:  # (one left behind is a dead run's: taken over)
            reservation.release_after_error()
    if changed is not None:
        changed.extend(outcome.changed)
    if vanished is not None:
        vanished.extend(outcome.vanished)
    return record, _exit_code(outcome)


def _reserve(repo: Repo, job_id: str) -> Lease | None:
    """Reserve a job id given by the user in the store while the job runs (`reserve_job`):
    another live run of it, here or on another host, is refused before anything runs. A
    fresh id is no one else's: it costs no request. A store that takes no write from this
    user cannot hold one: said once, and the run goes on (its upload fails, as before)."""
    try:
        return reserve_job(repo.store, job_id)
    except BackendError as exc:
        if isinstance(exc, TemporaryBackendError):
            raise
        log.warning("job %s: its id could not be reserved in the store (%s): another run of "
                    "the same id is not refused before it runs", job_id, exc)
        return None


def _run_reserved(repo: Repo, spec: JobSpec, job_id: str) -> tuple[JobRecord | None, Outcome]:
    outputs = _without_artifacts(output_dirs(spec.workdir, spec.config.output))
    _check_mount_places(spec, outputs)
    clean_stale_runs()
    state = RunState(job_id, spec.workdir)
    outcome = Outcome(started=time.time())
    mounted: list[Path] = []
    lock = -1
    try:
        outcome.inputs = _mount_datasets(repo, spec, mounted, state)
        lock = lock_workdir(spec.workdir)  # after the mounts: no daemon inherits it
        artifacts = fresh_artifacts(spec.workdir, job_id, repo)
    except BaseException:  # nothing ran: leave nothing behind
        _unmount_all(mounted)
        _release(lock, state)
        raise
    try:
        record = _run_and_upload(repo, spec, job_id, artifacts, outputs, outcome, mounted, state)
        if record is not None:  # (the next run here checks artifacts/ against it)
            remember_run(repo, spec.workdir, record.id)
    finally:
        _release(lock, state)
    return record, outcome


def _run_and_upload(repo: Repo, spec: JobSpec, job_id: str, artifacts: Path, outputs,
                    outcome: Outcome, mounted: list[Path], state: RunState) -> JobRecord | None:
    _warn_files_from_before(job_id, outputs)
    log.info("job %s: artifacts dir %s", job_id, artifacts)
    try:
        _execute(spec, job_id, artifacts, outcome, state)
    finally:
        _unmount_all(mounted)
    if not outcome.command_started and outputs:
        log.warning("job %s: the command did not start, so the output dirs (%s) are not "
                    "collected", job_id, ", ".join("/".join(parts) for parts, _ in outputs))
        outputs = []
    return _upload(repo, spec, job_id, artifacts, outputs, outcome, state)


def _release(lock: int, state: RunState) -> None:
    if lock >= 0:
        os.close(lock)
    state.remove()


def _without_artifacts(outputs: list[tuple[tuple[str, ...], Path]],
                       ) -> list[tuple[tuple[str, ...], Path]]:
    """The `output:` dirs but `artifacts/` and what is inside it: collected already."""
    kept = []
    for parts, path in outputs:
        if parts[0] == ARTIFACTS:
            log.warning("output dir %s is $C3_ARTIFACTS_DIR (or inside it), which is always "
                        "collected; not collected twice", "/".join(parts))
        else:
            kept.append((parts, path))
    return kept


def _check_timeout(timeout: float | None) -> None:
    """Refuse a timeout that would stop the job before it starts (0, negative, NaN)."""
    if timeout is not None and not timeout > 0:  # also refuses NaN
        raise UsageError(f"timeout must be a positive number of seconds, not {timeout:g}")


def _warn_files_from_before(job_id: str, outputs: list[tuple[tuple[str, ...], Path]]) -> None:
    """Name each output dir that already holds files: they will be stored with this job."""
    for parts, path in outputs:
        n = sum(1 for _ in walk_files(path))
        if n:
            log.warning("job %s: output dir %s already holds %s from before the job; %s stored "
                        "with this job", job_id, "/".join(parts), count(n, "file"),
                        "it will be" if n == 1 else "they will be")


def _exit_code(outcome: Outcome) -> int:
    if outcome.status == TIMEOUT:
        return TIMEOUT_EXIT
    if outcome.status == CANCELED:
        return CANCELED_EXIT
    if outcome.reason == "UPLOAD_ERROR":
        return UPLOAD_ERROR_EXIT
    return outcome.exit_code or 0


class _Canceled(Exception):
    pass


CANCEL_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _CancelOnSignal:
    """SIGINT and SIGTERM to `c3fs run` cancel its job, from just before its command starts
    until it has ended or been stopped (`install` ... `restore`), whenever they come: one
    that comes while the command is being started (before its process is known) is held
    until the run waits for it (`arm`), which then raises `_Canceled`, as the handler does
    from then on (the first time only). More while the job is being stopped (canceled or
    timed out) change nothing: it is stopped and recorded. One that comes after the command
    ended, or when it could not start, is given to the previous handler on `restore`
    (Ctrl-C then interrupts the upload, as it does later on)."""

    def __init__(self) -> None:
        self.armed = False
        self.held: int | None = None  # a signal that came while not armed
        self._previous: dict = {}

    def install(self) -> None:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in CANCEL_SIGNALS}

    def _on_signal(self, signum: int, frame) -> None:
        if self.armed:
            self.armed = False  # (one cancel: the next signal must not interrupt the stop)
            raise _Canceled()
        self.held = self.held or signum

    def arm(self) -> None:
        """Cancel at the next signal, or now if one came since `install`."""
        self.armed = True
        if self.held is not None:
            self._on_signal(self.held, None)

    def disarm(self) -> None:
        self.armed = False

    def restore(self, stopped: bool) -> None:
        """Put the previous handlers back and give them a signal held since the command
        ended (none when the job was `stopped`: canceled or timed out)."""
        self.armed = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.held is not None and not stopped:
            signal.raise_signal(self.held)


def _execute(spec: JobSpec, job_id: str, artifacts: Path, outcome: Outcome,
             state: RunState) -> None:
    env = dict(os.environ, **spec.config.env, C3_ARTIFACTS_DIR=str(artifacts),
               C3_JOB_ID=job_id, C3_PROJECT=spec.project)
    cancel = _CancelOnSignal()
    cancel.install()  # before the command starts: a signal once it runs is never lost
    try:
        try:
            proc = subprocess.Popen(spec.command, cwd=spec.workdir, env=env,
                                    start_new_session=True, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        except OSError as exc:
            log.error("cannot start %s: %s", spec.command[0], exc.strerror)
            outcome.status, outcome.reason, outcome.exit_code = FAILED, "SCRIPT_ERROR", 127
            return
        outcome.command_started = True
        state.command_started(proc.pid)
        tee = Tee(state.dir / "logs", stdout_fd=2 if spec.stdout_to_stderr else 1)  # kept too
        tee.start(proc)
        try:
            _wait(spec, job_id, proc, outcome, cancel)
        finally:
            tee.finish()
    finally:
        cancel.restore(stopped=outcome.status in (CANCELED, TIMEOUT))


def _wait(spec: JobSpec, job_id: str, proc: subprocess.Popen, outcome: Outcome,
          cancel: _CancelOnSignal) -> None:
    """Wait for the command; stop it when it times out or the run is canceled."""
    try:
        try:
            cancel.arm()
            code = proc.wait(timeout=spec.timeout)
        finally:
            cancel.disarm()
        outcome.exit_code = code if code >= 0 else 128 - code
        if code != 0:
            outcome.status, outcome.reason = FAILED, "SCRIPT_ERROR"
    except subprocess.TimeoutExpired:
        log.error("job %s timed out after %ss; stopping it (SIGTERM, then SIGKILL after %.0fs)",
                  job_id, spec.timeout, KILL_GRACE)
        outcome.status, outcome.exit_code = TIMEOUT, _stop(proc)
    except _Canceled:
        log.error("job %s canceled; stopping it (SIGTERM, then SIGKILL after %.0fs)", job_id,
                  KILL_GRACE)
        outcome.status, outcome.exit_code = CANCELED, _stop(proc)


def _stop(proc: subprocess.Popen) -> int:
    """SIGTERM the job's process group, SIGKILL it after a grace period; return its code."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            code = proc.wait(timeout=wait)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            log.warning("the job did not stop within %.0fs of SIGTERM: SIGKILL", wait)
            continue
    return proc.wait()


def _upload(repo: Repo, spec: JobSpec, job_id: str, artifacts: Path, outputs, outcome: Outcome,
            state: RunState):
    started = outcome.started
    fields = dict(status=outcome.status, reason=outcome.reason, exit_code=outcome.exit_code,
                  command=list(spec.command), inputs=outcome.inputs)
    try:
        paths = [artifacts, *(path for _, path in outputs)]
        bar = (spec.progress("upload", sum(map(tree_bytes, paths))) if spec.progress
               else nullcontext(None))
        source = _artifacts_source(artifacts, state)
        logs: dict = {}

        def build(ing) -> bytes:
            root = collect(repo, ing, source, outputs)
            logs.update(files=ing.stats.files, logical_bytes=ing.stats.logical_bytes)
            if (state.dir / "logs").is_dir():  # (not when the command could not start)
                logs["logs"] = ing.ingest_dir(state.dir / "logs").hex()
            return root

        changed: list[str] = []  # (the job's only once it is registered)
        vanished: list[str] = []
        with bar as advance:  # files and bytes: the artifacts'; stored: logs included
            record = ingest(repo, build,
                            lambda root, stats: record_for(JOB, job_id, spec.project, root,
                                                           stats, started, **fields, **logs),
                            progress=advance, changed=changed, vanished=vanished,
                            lock_wait=spec.lock_wait)
        outcome.changed, outcome.vanished = changed, vanished
        return record
    except (C3fsError, OSError) as exc:
        kept_logs = keep_locally(state.dir / "logs", spec.workdir, job_id)
        if kept_logs:
            log.error("job %s: its stdout and stderr are kept in %s", job_id, kept_logs)
        return _upload_failed(repo, spec, job_id, artifacts, outcome, exc, fields)


def _artifacts_source(artifacts: Path, state: RunState) -> Path:
    """What `collect` stores as the artifacts: the dir itself; when the job replaced it by a
    file or symlink, a copy of that alone in a holder dir (never the whole working dir)."""
    if (artifacts.is_dir() and not artifacts.is_symlink()) or not (
            artifacts.exists() or artifacts.is_symlink()):
        return artifacts  # a dir, or gone: `collect` says so
    holder = state.dir / "holder"
    holder.mkdir()
    shutil.copy2(artifacts, holder / ARTIFACTS, follow_symlinks=False)
    return holder / ARTIFACTS


def _upload_failed(repo, spec, job_id, artifacts, outcome, exc, fields):
    outcome.kept = artifacts if artifacts.exists() or artifacts.is_symlink() else None
    kept = (f"the artifacts are kept in {artifacts}" if outcome.kept else
            "the job deleted its artifacts dir, so there is nothing to keep")
    if outcome.status == SUCCEEDED:
        log.error("job %s: uploading artifacts failed: %s; status FAILED (UPLOAD_ERROR); %s",
                  job_id, exc, kept)
        outcome.status, outcome.reason = FAILED, "UPLOAD_ERROR"
        fields.update(status=FAILED, reason="UPLOAD_ERROR")
    else:
        log.error("job %s: best-effort upload failed: %s; %s", job_id, exc, kept)
        outcome.reason = outcome.reason or "UPLOAD_ERROR"
    try:  # record the failure itself, with an empty tree, if the store still takes writes
        from c3fs.ingest import IngestStats

        return ingest(repo, lambda ing: ing.store_tree([]),
                      lambda root, _: record_for(JOB, job_id, spec.project, root, IngestStats(),
                                                 outcome.started, **fields),
                      lock_wait=0)  # (the upload waited already)
    except (C3fsError, OSError) as exc2:
        log.error("job %s: could not record the failed job either: %s", job_id, exc2)
        return None


# datasets (job chaining) ----------------------------------------------------------------------
def _mount_datasets(repo: Repo, spec: JobSpec, mounted: list[Path],
                    state: RunState) -> list[Input]:
    if not spec.config.datasets:
        return []
    vfs = Vfs(repo)
    inputs, sources = [], []
    for ds in spec.config.datasets:  # check every ref before mounting any
        with _entry(ds, spec.rerun_of):
            node = resolve_pinned(vfs, ds.ref, ds.digest)
            check_mount_path(ds.mount, spec.workdir)
        inputs.append(Input(ref=ds.ref, root=node.tree_id.hex(), mount=ds.mount,
                            resolved=node.display))
        sources.append(canonical_ref(node))  # latest or a tag cannot move under the mount
    from c3fs.fuse import mount  # the FUSE layer is only needed by jobs that mount inputs

    for ds, source in zip(inputs, sources, strict=True):
        with _entry(ds, spec.rerun_of):
            path = check_mount_path(ds.mount, spec.workdir)
            clear_dead_mount(path)
            _make_mountpoint(path)
            state.add_mount(path)  # before mounting: a killed run's mount is found again
            mount(spec.store_url or repo.store.url, source, str(path))
        mounted.append(path)
        log.info("mounted %s at %s", ds.ref, path)
    return inputs


def _make_mountpoint(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise C3fsError(f"cannot create the mountpoint {path}: {exc.strerror}") from None


@contextmanager
def _entry(ds, rerun_of: str | None) -> Iterator[None]:
    """Errors name the `.c3` datasets entry they are about, or for a rerun the input the job
    recorded (rerun does not read `.c3`'s datasets): same error class and exit code."""
    what = (f".c3 datasets entry {ds.ref} -> {ds.mount}" if rerun_of is None else
            f"rerun of {rerun_of}: its recorded input {ds.ref} -> {ds.mount}")
    try:
        yield
    except C3fsError as exc:
        exc.args = (f"{what}: {exc}", *exc.args[1:])
        raise


def _check_mount_places(spec: JobSpec, outputs: list[tuple[tuple[str, ...], Path]]) -> None:
    """Refuse a dataset mounted inside what is collected as the job's outputs (the artifacts
    dir, an `output:` dir) or over it: the input's files would be taken for the job's, and
    an artifacts dir moved aside would carry the live mount along."""
    collected = [(f"$C3_ARTIFACTS_DIR ({ARTIFACTS}/)", spec.workdir / ARTIFACTS),
                 *((f"output dir {'/'.join(parts)}", path) for parts, path in outputs)]
    for ds in spec.config.datasets:
        point = check_mount_path(ds.mount, spec.workdir)
        for what, path in collected:
            with _entry(ds, spec.rerun_of):
                if _within(point, path):
                    raise ConfigError(f"the mount point is inside {what}, whose files are "
                                      "collected as the job's: mount it outside")
                if _within(path, point):
                    raise ConfigError(f"{what} would be inside the read-only mount: mount "
                                      "it elsewhere")


def _within(path: Path, outer: Path) -> bool:
    """`path` is `outer` or below it, as written or once symlinks are followed."""
    written = Path(os.path.normpath(path)), Path(os.path.normpath(outer))
    return written[0].is_relative_to(written[1]) or path.resolve().is_relative_to(
        outer.resolve())


def _unmount_all(mounted: list[Path]) -> None:
    if not mounted:
        return
    from c3fs.fuse import unmount

    for path in reversed(mounted):
        try:
            unmount(str(path))
        except C3fsError as exc:
            log.error("could not unmount %s: %s; trying a lazy unmount", path, exc)
            try:
                unmount(str(path), lazy=True)
            except C3fsError:
                log.error("could not unmount %s", path)
