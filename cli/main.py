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
from c3fs.errors import C3fsError, one_line

from . import output

if TYPE_CHECKING:
    from c3fs.repo import Repo

log = logging.getLogger("c3fs")
_command: str | None = None  # the subcommand being run, for `preload.record`
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Ctx:
    def __init__(self, store: str | None) -> None:
        self.store_url = store
        self._repo: Repo | None = None

    def repo(self, write: bool = False) -> Repo:
        """The store, opened once. Only a command that writes (`write`) creates a store that
        does not exist yet, or any command when it is the default one: a mistyped --store
        is an error, not a new, empty store."""
        if self._repo is None:
            from c3fs.repo import Repo

            self._repo = Repo.open(self.store_url, create=write or not self.store_url)
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


@click.group(context_settings=CONTEXT)
@click.option("--store", envvar="C3FS_STORE", metavar="PATH|s3://BUCKET/PREFIX",
              help="The store (default: $XDG_DATA_HOME/c3fs/store; env C3FS_STORE).")
@click.option("--disk-cache", "--cache-size", "disk_cache", metavar="SIZE", envvar="C3FS_DISK_CACHE",
              help="For an s3:// store: the local disk cache of fetched data, LRU "
                   "(default 1GiB; env C3FS_DISK_CACHE). Not `mount --cache-size`, which "
                   "sizes the mount's in-memory cache of decoded chunks.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="c3fs")
@click.pass_context
def app(ctx: click.Context, store: str | None, disk_cache: str | None, verbose: int) -> None:
    """c3fs: a content-addressed filesystem for the outputs of compute jobs.

    \b
    Examples:
      c3fs push ./outputs --project vision          # store a directory as a job
      c3fs run --project vision -- python train.py  # run a job, collect its artifacts
      c3fs ls -l /jobs/                             # jobs with status, size, age
      c3fs cp -r /jobs/job_abc123/ ./local-output/  # download a job's artifacts
      c3fs mount /jobs/job_abc123 /data/prev        # mount a job read-only
    """
    global _command
    _command = ctx.invoked_subcommand
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if disk_cache:  # read where the store is opened, also by a mount daemon or a job's mounts
        output.parse_size(disk_cache)
        os.environ["C3FS_DISK_CACHE"] = disk_cache
    state = Ctx(store)
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
    if args and args[0].startswith("/") and "-o" in args:  # mount.fuse3: `c3fs SPEC DIR -o ...`
        from .mount_helper import run as run_mount_helper

        sys.exit(run_mount_helper(args, "c3fs"))
    try:
        app.main(args=argv, prog_name="c3fs", standalone_mode=False)
    except C3fsError as exc:
        output.err.print(f"c3fs: error: {one_line(str(exc))}", markup=False, highlight=False)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        output.err.print("c3fs: aborted", markup=False)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        output.err.print("c3fs: interrupted", markup=False)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    if _command:
        preload.record(_command)  # the files this command loaded, read ahead next time
    sys.exit(0)


from . import commands, lifecycle, lineage, locks, mount, serve, tags  # noqa: E402,F401  (register commands on `app`)
