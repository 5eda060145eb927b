"""Shell completion of c3fs paths and job ids, from this machine's index only.

Completing never asks the store: the index is found by the store's id, read from a local
store's `config` or remembered from the last time this machine opened an s3:// store
(`c3fs.index.remember_store`). The namespace levels (/jobs/<id>, /projects/<p>/jobs/<id>,
/datasets/<name>) come from the index's records; below a job's root, files are completed
only for a local store (its trees are on this disk). Any failure completes nothing: a
shell's Tab must never print an error or wait.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem, get_completion_class

from .main import app

if TYPE_CHECKING:
    from c3fs.index import Index

log = logging.getLogger(__name__)
LIMIT = 1000  # candidates offered at most


def complete_path(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Completion of a namespace path (`/jobs/...`, `/projects/...`, `/datasets/...`)."""
    try:
        return _items(_paths(incomplete))
    except Exception:  # noqa: BLE001  (Tab never fails loudly)
        log.debug("completion of %r failed", incomplete, exc_info=True)
        return []


def complete_path_or_file(ctx: click.Context, param: click.Parameter,
                          incomplete: str) -> list[CompletionItem]:
    """A namespace path when `incomplete` can be one (`/`, `/jo`, `/jobs/...`), else the
    shell's own file completion (`./out`, `/tmp/x`, nothing typed yet)."""
    tops = ("/jobs", "/projects", "/datasets")
    if incomplete and any(t.startswith(incomplete) or incomplete.startswith(t) for t in tops):
        return complete_path(ctx, param, incomplete)
    return [CompletionItem(incomplete, type="file")]


def complete_dir(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(incomplete, type="dir")]


def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Completion of a job id, or of a path when it starts with `/`."""
    if incomplete.startswith("/"):
        return complete_path(ctx, param, incomplete)
    try:
        with _index() as index:
            if index is None:
                return []
            return _items(sorted(n for n in index.record_names("job") if n.startswith(incomplete)))
    except Exception:  # noqa: BLE001
        log.debug("completion of %r failed", incomplete, exc_info=True)
        return []


def _items(words: list[str]) -> list[CompletionItem]:
    # a directory's name ends in `/`: the shell then goes on completing inside it
    return [CompletionItem(w) for w in words[:LIMIT]]


def _paths(incomplete: str) -> list[str]:
    if not incomplete.startswith("/"):
        return [p for p in ("/jobs/", "/projects/", "/datasets/") if p.startswith(incomplete)]
    parent, _, stem = incomplete.rpartition("/")
    parts = [p for p in parent.split("/") if p]
    names = _names(parts)
    base = "/" + "".join(p + "/" for p in parts)
    return [base + name for name in sorted(names) if name.startswith(stem)]


def _names(parts: list[str]) -> list[str]:
    """The names (a directory's with a trailing `/`) inside the namespace dir `parts`."""
    if not parts:
        return ["jobs/", "projects/", "datasets/"]
    with _index() as index:
        if index is None:
            return []
        jobs, datasets = index.records("job"), index.records("dataset")
        top = parts[0]
        if top in ("jobs", "datasets") and len(parts) == 1:
            return [r.id + "/" for r in (jobs if top == "jobs" else datasets)]
        if top == "projects" and len(parts) == 1:
            return sorted({r.project + "/" for r in jobs + datasets})
        if top == "projects" and len(parts) == 2:
            return ["jobs/", "datasets/", "tags/"]
        if top == "projects" and len(parts) == 3 and parts[2] in ("jobs", "datasets"):
            chosen = jobs if parts[2] == "jobs" else datasets
            extra = ["latest"] if parts[2] == "jobs" else []
            return [r.id + "/" for r in chosen if r.project == parts[1]] + extra
    return _tree_names(parts)


def _tree_names(parts: list[str]) -> list[str]:
    """Names inside a job's or dataset's tree: for a local store only (no network)."""
    from c3fs import settings

    store = settings.value("store") or ""
    if store.startswith("s3://"):
        return []
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    repo = Repo.open(store, create=False)
    try:
        vfs = Vfs(repo)
        node = vfs.resolve("/" + "/".join(parts))
        return [n.decode("utf-8", "replace") + ("/" if child.is_dir else "")
                for n, child in vfs.children(node)] if node.is_dir else []
    finally:
        repo.close()


class _index:
    """The index of the current store, opened for reading; None if this machine has none."""

    def __enter__(self) -> Index | None:
        from c3fs import settings
        from c3fs.index import Index, index_path, known_store_id

        store_id = known_store_id(settings.value("store") or "")
        path = index_path(store_id) if store_id else None
        self.index = Index(path, store_id) if path is not None and path.exists() else None
        return self.index

    def __exit__(self, *exc) -> None:
        if self.index is not None:
            self.index.close()


SHELLS = ("bash", "zsh", "fish")


@app.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script of c3fs for SHELL.

    Completes commands, options, paths of the namespace (/jobs/<id>/..., /projects/<p>/...,
    /datasets/<name>) and job ids, from this machine's index: Tab never asks the store (on
    an s3:// store, files inside a job are not completed; on a local one they are).

    \b
    Install:
      bash:  echo 'eval "$(c3fs completion bash)"' >> ~/.bashrc
      zsh:   echo 'eval "$(c3fs completion zsh)"' >> ~/.zshrc
      fish:  c3fs completion fish > ~/.config/fish/completions/c3fs.fish
    \b
    Examples:
      eval "$(c3fs completion bash)"     # this bash only, at once
      c3fs completion zsh | head -n 3    # see what would be installed
    """
    cls = get_completion_class(shell)
    assert cls is not None  # (click ships all three)
    source = cls(app, {}, "c3fs", "_C3FS_COMPLETE").source()
    for old, new in _NO_SPACE_AFTER_DIRS.get(shell, ()):
        source = source.replace(old, new)
    click.echo(source)


# click's scripts end every candidate with a space; a directory's (`/jobs/`) must not, so that
# Tab goes on inside it (fish does that by itself). An edit that no longer applies to a newer
# click changes nothing.
_NO_SPACE_AFTER_DIRS = {
    "bash": [("COMPREPLY+=($value)",
              "COMPREPLY+=($value)\n            [[ $value == */ ]] && compopt -o nospace")],
    "zsh": [('completions+=("$key")',
             'if [[ "$key" == */ ]]; then dirs+=("$key"); else completions+=("$key"); fi'),
            ("    local -a response\n", "    local -a response\n    local -a dirs\n"),
            ('    if [ -n "$completions" ]; then',
             '    if [ -n "$dirs" ]; then\n        compadd -U -V unsorted -S "" -a dirs\n    fi\n\n'
             '    if [ -n "$completions" ]; then')],
}
