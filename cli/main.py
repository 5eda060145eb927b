"""The `c3fs` command line: parse, call the library, print. No logic of its own.

Start-up time matters (`c3fs mount` is timed to the first byte): the command modules import
the library (and rich, trio, obstore, lmdb, ...) inside the commands that use it, so
`c3fs --help` loads only click, and `c3fs mount` only what the mount needs
(tests/test_cli_core.py checks).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from c3fs import preload
from c3fs.errors import C3fsError, UsageError, one_line

from . import output

if TYPE_CHECKING:
    from c3fs.repo import Repo

log = logging.getLogger("c3fs")
_command: str | None = None  # the subcommand being run, for `preload.record`
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Ctx:
    def __init__(self) -> None:
        self._repo: Repo | None = None

    @property
    def store_url(self) -> str | None:
        """The store named by --store, C3FS_STORE or the config file; None: the default."""
        from c3fs import settings

        store = settings.get("store")
        return None if store.source == "default" else store.value

    def repo(self, write: bool = False) -> Repo:
        """The store, opened once. Only a command that writes (`write`) creates a store that
        does not exist yet, or any command when it is the default one: a mistyped --store
        is an error, not a new, empty store."""
        if self._repo is None:
            from c3fs.repo import Repo

            url = self.store_url
            self._repo = Repo.open(url, create=write or not url)
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


# Global options: accepted before the subcommand (`c3fs --store X ls`) and after it (`c3fs ls
# --store X`), as git and kubectl accept theirs. Each is applied by its callback when parsed:
# a setting is exported as its C3FS_* variable (the library, mount daemons and nested
# commands read it there), -v/-q set the log level.
flags: dict[str, str] = {}  # setting -> the flag that set it (for `config show`)
_verbosity = {"verbose": 0, "quiet": 0}


def _set_setting(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    from c3fs import settings

    if param.name == "disk_cache":
        output.parse_size(value)  # a bad size is refused here, naming the flag's value
    os.environ[settings.KEYS[param.name].env[0]] = value
    flags[param.name] = param.opts[0]


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int | bool) -> None:
    if value:
        _verbosity[param.name] += int(value)
        _apply_verbosity()


def _apply_verbosity() -> None:
    verbose, quiet = _verbosity["verbose"], _verbosity["quiet"]
    if verbose and quiet:
        raise UsageError("-q and -v contradict each other: give one")
    output.quiet = bool(quiet)
    level = logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.getLogger().setLevel(level)
    # botocore logs responses (credentials among them) at DEBUG: never below INFO
    logging.getLogger("botocore").setLevel(max(level, logging.INFO))


def _global_options(group: bool) -> list[click.Option]:
    """The global options, as parameters of the group (`group`) or of a subcommand."""
    hidden = not group  # shown once, in `c3fs --help`
    disk_cache = ["--disk-cache", "--cache-size"] if group else ["--disk-cache"]  # (mount has its own --cache-size)
    setting = dict(expose_value=False, callback=_set_setting, hidden=hidden)
    return [
        click.Option(["--store"], metavar="PATH|s3://BUCKET/PREFIX", **setting,
                     help="The store (default: $XDG_DATA_HOME/c3fs/store; env C3FS_STORE)."),
        click.Option(disk_cache, metavar="SIZE", **setting,
                     help="For an s3:// store: the local disk cache of fetched data, LRU "
                          "(default 1GiB; env C3FS_DISK_CACHE). Not `mount --cache-size`, which "
                          "sizes the mount's in-memory cache of decoded chunks."),
        click.Option(["--profile"], metavar="NAME", **setting,
                     help="AWS profile of ~/.aws/config and ~/.aws/credentials (as `aws "
                          "--profile`: AWS_ACCESS_KEY_ID in the environment is then ignored)."),
        click.Option(["--endpoint"], metavar="URL", **setting,
                     help="S3 endpoint (MinIO, Ceph, R2...; env AWS_ENDPOINT_URL)."),
        click.Option(["--region"], metavar="NAME", **setting, help="S3 region (env AWS_REGION)."),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, hidden=hidden,
                     callback=_set_verbosity,
                     help="More detail: per-file lines and timings (-vv: debug log)."),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, hidden=hidden,
                     callback=_set_verbosity,
                     help="Errors only: no progress, summaries or warnings."),
    ]


GLOBAL_NOTE = ("Global options work here too: --store, --profile, --endpoint, --region, "
               "--disk-cache, -v, -q (see c3fs --help).")


class C3fsGroup(click.Group):
    """A group whose commands (and their subcommands) accept the global options too."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        super().add_command(cmd, name)
        _add_global_options(cmd)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # past click, which would end the command with exit 1
            raise ReaderGone from None


class ReaderGone(Exception):
    """stdout's reader went away (`c3fs cat FILE | head`): the command ends quietly."""


def _add_global_options(cmd: click.Command) -> None:
    if getattr(cmd, "_c3fs_globals", False):
        return
    cmd._c3fs_globals = True  # type: ignore[attr-defined]
    cmd.params.extend(_global_options(group=False))
    cmd.epilog = ((cmd.epilog + "\n\n") if cmd.epilog else "") + GLOBAL_NOTE
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _add_global_options(sub)
        original = cmd.add_command

        def add_command(sub: click.Command, name: str | None = None) -> None:
            original(sub, name)
            _add_global_options(sub)

        cmd.add_command = add_command  # type: ignore[method-assign]


EXIT_CODES = (
    (0, "success"),
    (1, "other error"),
    (2, "usage: bad option, argument, id or config file"),
    (3, "not found: no such job, path or source file"),
    (4, "exists or refused: a taken id, a source or destination that refused the read or write"),
    (5, "store: unreachable (also mid-copy: run it again), denied, wrong format version"),
    (6, "damaged or missing data (verify, cp -r, pull finish the rest first)"),
    (7, "locked: gc or a push holds the store (push waits for gc first: --lock-wait); "
        "rm: a mount reads the job; run -j: a run in progress holds the id"),
    (8, "mount: FUSE failed, or a pin (--expect, digest:) did not match"),
    (130, "interrupted (Ctrl-C)"),
    (141, "stdout closed by its reader (a pipe to head): the rest unwritten, no message"),
)
READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for cat(1) writing to a closed pipe
EPILOG = "\b\nExit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES) + \
    "\n  (c3fs run exits with its job's code: see c3fs run --help)"


@click.group(cls=C3fsGroup, context_settings=CONTEXT, epilog=EPILOG, params=_global_options(group=True))
@click.version_option(package_name="c3fs")
@click.pass_context
def app(ctx: click.Context) -> None:
    """c3fs: a content-addressed filesystem for the outputs of compute jobs.

    Global options (--store, --profile, -v, -q, ...) go before or after the subcommand.
    Settings come from flags, then the environment, then ~/.config/c3fs/config.toml
    (`c3fs config show` says which).

    \b
    Examples:
      c3fs push ./outputs --project vision          # store a directory as a job
      c3fs run --project vision -- python train.py  # run a job, collect its artifacts
      c3fs ls -l /jobs/                             # jobs with status, size, age
      c3fs ls --store s3://bucket/c3 /jobs/         # options after the subcommand too
      c3fs cat /jobs/job_abc123/metrics.json        # a file's bytes to stdout
      c3fs cp -r /jobs/job_abc123/ ./local-output/  # download a job's artifacts
      c3fs mount /jobs/job_abc123 /data/prev        # mount a job read-only
    """
    global _command
    _command = ctx.invoked_subcommand
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(handlers=[handler], force=True)
    _apply_verbosity()
    from c3fs import settings

    settings.read_file()  # a bad config file is an error for every command, naming its line
    state = Ctx()
    ctx.obj = state
    ctx.call_on_close(state.close)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # one line, no escape sequences: messages name files and refs from the store
        return f"c3fs: {record.levelname.lower()}: {one_line(record.getMessage())}"


pass_ctx = click.make_pass_decorator(Ctx)


def main(argv: list[str] | None = None) -> None:
    """Entry point; `argv` lets tests call the CLI in-process."""
    args = sys.argv[1:] if argv is None else list(argv)
    if argv is None:  # a command of its own: the mount daemon's collector thresholds (a
        # listing of 100,000 jobs makes ~10 objects each; at the default gen0 threshold
        # of 700 the collector ran thousands of times, traversing all of them)
        from c3fs.memo import tune_collector

        tune_collector()
    if args and args[0].startswith("/") and "-o" in args:  # mount.fuse3: `c3fs SPEC DIR -o ...`
        from .mount_helper import run as run_mount_helper

        sys.exit(run_mount_helper(args, "c3fs"))
    from c3fs.settings import KEYS

    exported = {key.env[0]: os.environ.get(key.env[0]) for key in KEYS.values()}
    flags.clear()
    _verbosity.update(verbose=0, quiet=0)
    output.quiet = False
    try:
        _run(argv)
    except SystemExit as exc:
        if argv is None:
            _exit_now(exc.code)  # returns only when a thread is still working
        raise
    finally:  # the flags' exports end with the command (tests run many in one process)
        for var, value in exported.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _exit_now(code: object) -> None:
    """End the command's own process at once, skipping the interpreter's teardown: its
    final collection and freeing of every object took 0.05-0.15 s after a push of 10,000
    files (a tenth of it), with nothing left to do. What an ordinary exit does first is
    done first: the `atexit` functions run (logging's flush among them) and the standard
    streams are flushed. Returns (for an ordinary exit) if a thread other than a daemon one
    is still running: the interpreter would wait for it."""
    import threading

    if not (code is None or isinstance(code, int)):  # a message: sys.exit prints it
        return
    current = threading.current_thread()
    if any(not t.daemon for t in threading.enumerate() if t is not current):
        return
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # a reader gone: as `_run` ends the command
        code = code or READER_GONE
    except ValueError:  # a stream closed: as at exit
        code = code or 1
    os._exit(code or 0)


def drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a reader that went away is
    dropped at exit, not reported as another BrokenPipeError."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (tests capture stdout in memory)
        pass


def _stdout_gone() -> bool:
    """Whether stdout is a pipe or socket whose reader has left (poll says POLLERR), or
    cannot be told (no file descriptor: tests capture stdout in memory)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return True


def _run(argv: list[str] | None) -> None:
    try:
        app.main(args=argv, prog_name="c3fs", standalone_mode=False)
    except C3fsError as exc:
        output.err.print(f"c3fs: error: {one_line(str(exc))}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        output.err.print("c3fs: aborted", markup=False)
        sys.exit(130)
    except click.UsageError as exc:  # one line, as c3fs's own errors, not click's three
        message = one_line(exc.format_message()).rstrip(".")
        message = message[:1].lower() + message[1:]  # (click's are sentences: "No such ...")
        hint = f" ({exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        output.err.print(f"c3fs: error: {message}{hint}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        output.err.print("c3fs: interrupted", markup=False)
        sys.exit(130)
    except (BrokenPipeError, ReaderGone):
        if not _stdout_gone():  # another pipe or socket: an error like any other
            output.err.print("c3fs: error: broken pipe (a reader other than stdout's left)",
                             markup=False, highlight=False)
            sys.exit(1)
        drop_stdout()  # stdout's reader is gone: end quietly, as cat(1)
        sys.exit(READER_GONE)
    if _command:
        preload.record(_command)  # the files this command loaded, read ahead next time
    sys.exit(0)


from . import commands, lifecycle, lineage, locks, mount, serve, tags  # noqa: E402,F401  (register commands on `app`)
