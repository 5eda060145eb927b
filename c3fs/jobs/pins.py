"""Pins: a ref that must resolve to a given root (tree) id, checked before a command starts.

A `.c3` `datasets:` entry may carry `digest: <root id>` and `c3fs mount --expect ROOT` the
same. The root id of a job is its tree's id (`root` in `ls --json`, `user.c3fs.digest` of a
mount's root); of a folder in a job, that folder's tree id.
"""

from __future__ import annotations

import msgspec

from c3fs.errors import C3fsError, UsageError
from c3fs.jobs.config import DatasetMount, JobConfig
from c3fs.objects.ids import parse_hex_id
from c3fs.objects.job import JobRecord
from c3fs.vfs import Node, Vfs


class PinMismatch(C3fsError):
    """A ref resolved to another root than the one it is pinned to."""

    exit_code = 8


def check_root_id(text: str, what: str = "root id") -> str:
    """`text` if it is a root id (64 hex digits), lower-cased; else UsageError."""
    try:
        return parse_hex_id(text.strip()).hex()
    except C3fsError:
        raise UsageError(f"{what} {text!r} is not a root id (64 hex digits, as `root` "
                         "in `c3fs ls --json`)") from None


def resolve_pinned(vfs: Vfs, ref: str, expect: str | None) -> Node:
    """The tree node `ref` names, refused if `expect` is given and it is another root."""
    node = vfs.resolve(ref)
    if not node.is_dir or node.tree_id is None:
        raise C3fsError(f"{ref!r} is not a job, dataset or folder in one")
    if expect:
        want = check_root_id(expect)
        if node.tree_id.hex() != want:
            raise PinMismatch(f"{ref} resolves to root {node.tree_id.hex()} ({node.display}), "
                              f"not the pinned root {want}; nothing was started")
    return node


def canonical_ref(node: Node) -> str:
    """The path `node` has under /jobs/ or /datasets/ (exact bytes, for mounting it)."""
    return "/" + "/".join(p.decode("utf-8", "surrogateescape") for p in node.path)


def pinned_config(record: JobRecord, config: JobConfig) -> JobConfig:
    """`config` with the datasets of `record`'s run: each input at its mount point, by what
    it resolved to then, pinned to the root it had (`c3fs rerun`)."""
    datasets = []
    for item in record.inputs:
        if not item.mount:
            raise C3fsError(f"job {record.id}: input {item.ref} has no mount point recorded; "
                            "it cannot be mounted again")
        datasets.append(DatasetMount(ref=item.resolved or item.ref, mount=item.mount,
                                     digest=item.root))
    return msgspec.structs.replace(config, datasets=datasets)
