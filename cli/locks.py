"""`c3fs unlock`: list the store's locks (push, gc, mount, run), break one whose holder is gone."""

from __future__ import annotations

import click

from . import output
from .main import Ctx, app, pass_ctx


@app.command(context_settings={"max_content_width": 100})
@click.argument("name", required=False)
@click.option("-l", "--list", "list_", is_flag=True, help="List the locks and their holders.")
@click.option("-f", "--force", is_flag=True,
              help="Break the lock at once, without watching whether its holder renews it.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print the locks as JSON.")
@pass_ctx
def unlock(ctx: Ctx, name: str | None, list_: bool, force: bool, as_json: bool) -> None:
    """Break the store lock NAME (gc, push-<token>, mount-<...>, run-<job id>) left by a
    process that is gone.

    Push and gc hold locks in the store and renew them while they run (a lease,
    C3FS_LOCK_LEASE seconds, default 60); so does a mount of a job or dataset while it
    serves (rm refuses that job, gc keeps what it reads; a live mount writes its lease again
    if it is broken), and `run -j ID` while its job runs (another run of ID is refused). A
    lock held on this host is judged by its pid (and start time); one held on another host
    is watched for up to its lease, and broken only if nobody renewed it meanwhile (the
    clocks of the two hosts are never compared). gc, push and run do the same on their own
    when they meet a lock, so unlock is for not waiting: use --force when you know the
    holder is gone. The holder is named either way.

    \b
    Examples:
      c3fs unlock --list                 # NAME, KIND, HOLDER, STARTED (holder's clock)
      c3fs unlock --list --json
      c3fs unlock gc                     # after a gc was killed on another machine
      c3fs unlock push-3f2a9c0d41b7e655 --force
    """
    from c3fs.store import locks
    from c3fs.store.store import Store, open_backend

    if bool(name) == list_:
        raise click.UsageError("give a lock NAME, or --list")
    store = Store.open(open_backend(ctx.store_url, create=False), create=False)
    if list_:
        _print_locks(locks.list_locks(store), as_json)
        return
    lock = locks.unlock(store, name, force=force)
    output.note(f"removed lock {lock.name}, held by {lock.holder()}")


def _print_locks(found, as_json: bool) -> None:
    if as_json:
        output.print_json([lock.as_dict() for lock in found])
        return
    if not found:
        output.note("no locks")
        return
    table = output.table("NAME", "KIND", "HOLDER", "STARTED", "LEASE")
    for lock in found:
        table.add_row(lock.name, lock.kind, lock.holder(), output.age(lock.started),
                      f"{lock.lease:.0f} s")
    output.out.print(table)
