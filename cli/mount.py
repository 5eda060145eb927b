"""The mount commands: mount and umount (FUSE)."""

from __future__ import annotations

import click

from . import output
from .complete import complete_path_or_file
from .main import Ctx, app, pass_ctx


@app.command(context_settings={"max_content_width": 100})
@click.argument("paths", nargs=-1, required=True, metavar="[REF] MOUNTPOINT",
                shell_complete=complete_path_or_file)
@click.option("-f", "--foreground", is_flag=True,
              help="Serve in this process until unmounted (logs go to stderr).")
@click.option("--allow-other", is_flag=True,
              help="Let other users see the mount (needs user_allow_other in /etc/fuse.conf).")
@click.option("--cache-size", default="256MiB", show_default=True, metavar="SIZE",
              help="Memory for decoded chunks and trees (the daemon uses this plus under "
                   "100 MiB, a million files mounted).")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=str),
              help="Where the background daemon logs (default: under the cache directory).")
@click.option("--expect", metavar="ROOT",
              help="Refuse to mount unless REF resolves to this root id (a pin; exit 8).")
@click.option("--source", hidden=True,  # mount.c3fs: the fstab spec, for the mount table
              help="The mount's source in the mount table (default: c3fs).")
@pass_ctx
def mount(ctx: Ctx, paths: tuple[str, ...], foreground: bool, allow_other: bool,
          cache_size: str, log_file: str | None, expect: str | None,
          source: str | None) -> None:
    """Mount REF read-only at MOUNTPOINT (an existing, empty directory).

    REF is the whole namespace when omitted (jobs/, projects/<p>/jobs/, datasets/), or one
    tree: /jobs/<id>, /projects/<p>/jobs/<id>, /datasets/<name>, or a folder inside any of
    them; /projects/<p>/jobs/latest and /projects/<p>/tags/<tag> are followed once, when
    mounting (the mount then stays on that job). --expect ROOT refuses a REF that resolves
    to another root id (`root` in `c3fs ls --json`), naming both, before mounting. The command returns once the mount is ready; the daemon stays in the background
    (unless --foreground) and logs to a file. Jobs pushed later appear without a remount.
    Unmount with `c3fs umount MOUNTPOINT`. A mount of one REF holds a lease in the store while
    it serves: `c3fs rm` refuses its job (unless --force), and gc keeps what it reads.

    \b
    Examples:
      c3fs mount /mnt/c3                              # every job and dataset
      c3fs mount /jobs/job_abc123 /data/prev_weights  # one job's artifacts
      c3fs mount /projects/vision/jobs/job_abc123/checkpoints /data/ckpt
      c3fs mount /datasets/imagenet-mini /data/imagenet --cache-size 1GiB
      c3fs mount /projects/vision/tags/best /data/model --expect 3f2a...e655
    """
    if len(paths) > 2:
        raise click.UsageError("expected [REF] MOUNTPOINT")
    ref, mountpoint = paths if len(paths) == 2 else ("/", paths[0])
    if expect or _moves(ref):  # pinned, or latest/a tag: mount the job it names now
        from c3fs.jobs.pins import canonical_ref, resolve_pinned
        from c3fs.vfs import Vfs

        ref = canonical_ref(resolve_pinned(Vfs(ctx.repo()), ref, expect))
        ctx.close()  # (the daemon opens its own)
    from c3fs import fuse  # here: the daemon forks from this process, with what it imported

    fuse.mount(ctx.store_url, ref, mountpoint, foreground=foreground, allow_other=allow_other,
               cache_bytes=output.parse_size(cache_size), log_file=log_file, source=source)


@app.command(context_settings={"max_content_width": 100})
@click.argument("mountpoint", type=click.Path(path_type=str))
@click.option("-z", "--lazy", is_flag=True,
              help="Detach now, finish when the mount is no longer busy.")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount a c3fs mount (also one whose daemon died: "Transport endpoint is not connected").

    \b
    Examples:
      c3fs umount /data/prev_weights
      c3fs umount --lazy /mnt/c3       # a shell still has its working directory there
    """
    from c3fs import fuse

    fuse.unmount(mountpoint, lazy=lazy)


def _moves(ref: str) -> bool:
    """Whether `ref` goes through a name that may point elsewhere later (latest, a tag)."""
    parts = [p for p in ref.split("/") if p]
    return len(parts) >= 4 and parts[0] == "projects" and (
        parts[2] == "tags" or parts[2:4] == ["jobs", "latest"])
