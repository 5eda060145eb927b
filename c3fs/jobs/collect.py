"""Collect a job's outputs into one tree.

The contents of `$C3_ARTIFACTS_DIR` form the root of the job's tree. Each `output:` dir is
placed at its path relative to the working directory (`results` -> `/jobs/<id>/results/`,
`out/ckpt` -> `/jobs/<id>/out/ckpt/`), merging into directories the artifacts dir already
has. On a clash (the artifacts dir already has that path, or a file stands where a
directory is needed) the output dir's name gets a `~output` suffix (`results~output`,
then `results~output2`, ...) and a warning is logged: nothing is dropped or overwritten.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import msgspec

from c3fs.ingest import Ingester
from c3fs.objects.tree import DIR, Entry
from c3fs.repo import Repo

log = logging.getLogger(__name__)


def collect(repo: Repo, ingester: Ingester, artifacts: Path,
            outputs: list[tuple[tuple[str, ...], Path]]) -> bytes:
    """Store the artifacts dir and every (parts, path) output dir; return the root tree id."""
    root = _artifacts_root(ingester, artifacts)
    for parts, path in outputs:
        if not path.is_dir():
            log.warning("output dir %s does not exist; nothing collected from it", path)
            continue
        sub_id = ingester.ingest_dir(path)
        st = path.stat()
        entry = Entry(b"", DIR, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, target=sub_id)
        names = [os.fsencode(p) for p in parts]
        root = graft(repo, ingester, root, names, entry, "/".join(parts))
    return root


def _artifacts_root(ingester: Ingester, artifacts: Path) -> bytes:
    if artifacts.is_dir() and not artifacts.is_symlink():
        return ingester.ingest_dir(artifacts)
    if artifacts.exists() or artifacts.is_symlink():
        log.warning("$C3_ARTIFACTS_DIR was replaced by a file; storing it as 'artifacts'")
        holder = artifacts.parent
        return ingester.ingest_dir(holder)  # holds just that file, named 'artifacts'
    log.warning("$C3_ARTIFACTS_DIR (%s) was deleted by the job; nothing collected from it",
                artifacts)
    return ingester.store_tree([])


def graft(repo: Repo, ingester: Ingester, tree_id: bytes, names: list[bytes], entry: Entry,
          label: str) -> bytes:
    """Return a new tree: `tree_id` with `entry` placed at path `names` (see module doc)."""
    ingester.sink.flush()  # the trees read below must be durable and indexed
    entries = {e.name: e for e in repo.tree(tree_id).entries}
    return _graft(repo, ingester, entries, names, entry, label)


def _graft(repo: Repo, ingester: Ingester, entries: dict[bytes, Entry], names: list[bytes],
           entry: Entry, label: str) -> bytes:
    head, rest = names[0], names[1:]
    existing = entries.get(head)
    if rest and existing is not None and existing.kind == DIR:
        sub = {e.name: e for e in repo.tree(existing.target).entries}
        entries[head] = _with(existing, target=_graft(repo, ingester, sub, rest, entry, label))
        return ingester.store_tree(list(entries.values()))
    if existing is not None:
        head = _free_name(entries, head)
        log.warning("output dir %s clashes with a path in $C3_ARTIFACTS_DIR; stored as %s",
                    label, os.fsdecode(head))
    if rest:
        sub_id = _graft(repo, ingester, {}, rest, entry, label)
        entries[head] = Entry(head, DIR, 0o755, 0, time.time_ns(), target=sub_id)
    else:
        entries[head] = _with(entry, name=head)
    return ingester.store_tree(list(entries.values()))


def _free_name(entries: dict[bytes, Entry], name: bytes) -> bytes:
    n = 1
    while True:
        candidate = name + (b"~output" if n == 1 else b"~output%d" % n)
        if candidate not in entries:
            return candidate
        n += 1


def _with(entry: Entry, **changes) -> Entry:
    return msgspec.structs.replace(entry, **changes)
