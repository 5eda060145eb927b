"""Listing ahead (issue 16, c3fs/fuse/listahead.py): when a reply holds the end of a
directory, a worker decodes the directory a depth-first walk opens next. It must guess the
walk's next directory, and a listing answered from what it decoded must be the listing
answered on request: the same entries, fields, inode rows and lookup counts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from fusehelp import fuse_works, run_c3fs
from test_readdir_runs import Reply, expected_entries, listed_both_ways

needs_runs = pytest.mark.skipif(
    not hasattr(__import__("pyfuse3"), "readdir_reply_many"),
    reason="a stock pyfuse3: no listing ahead (one reply call per entry)")


def make_nested(src: Path) -> None:
    """Directories three deep, some empty, some with only subdirectories, files and
    symlinks of many sizes, modes and mtimes; one directory longer than `AHEAD`."""
    for top in range(4):
        for sub in range(3):
            d = src / f"t{top}" / f"s{sub}"
            d.mkdir(parents=True)
            for i in range(150 * (sub + 1)):
                path = d / f"f{i:04d}"
                path.write_bytes(os.urandom((i * 53 + top) % 900))
                path.chmod((0o600, 0o644, 0o755)[i % 3])
                os.utime(path, ns=(0, (i * 7_919_000_003 + top) % 2**40 - 2**39))
            (d / "link").symlink_to("f" * (sub + top + 1))
            if sub == 1:
                (d / "deeper" / "deepest").mkdir(parents=True)
                (d / "deeper" / "deepest" / "x").write_bytes(b"x" * top)
        (src / f"t{top}" / "empty").mkdir()
    (src / "long").mkdir()
    for i in range(4500):
        (src / "long" / f"e{i:05d}").write_bytes(b"y" * (i % 7))
    (src / "zz-file").write_bytes(b"last")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("ahead")
    make_nested(root / "src")
    env = dict(os.environ, C3FS_STORE=str(root / "store"), C3FS_CACHE_DIR=str(root / "cache"))
    run_c3fs("push", str(root / "src"), "--project", "p", "--job", "j", env=env, timeout=300)
    return env, root / "src"


@needs_runs
def test_it_guesses_the_directory_a_depth_first_walk_opens_next(store) -> None:
    """In listing order, as `find` and `ls -R` go: a directory's first subdirectory, else
    the next subdirectory of the nearest directory above with one after it; after the last
    directory, nothing."""
    from c3fs.fuse.listahead import ListingAhead
    from c3fs.objects.tree import DIR
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    env, src = store
    repo = Repo.open(env["C3FS_STORE"])
    try:
        vfs = Vfs(repo, "/jobs/j")
        ahead = ListingAhead(vfs, None, {})
        order = []

        def walk(node) -> None:
            order.append(node)
            for _, child in vfs.children(node):
                if child.kind == DIR:
                    walk(child)

        walk(vfs.root)
        assert len(order) == 1 + 4 * (1 + 3 + 2 + 1) + 1  # (/, t*, s*, deeper*, empty; long)
        guesses = [ahead._next(node, repo.tree(node.tree_id, check=False)) for node in order]
        assert [g.path if g else None for g in guesses] == [n.path for n in order[1:]] + [None]
    finally:
        repo.close()


@needs_runs
def test_a_walk_listed_from_fields_decoded_ahead_gets_what_it_would_on_request(
        store, monkeypatch) -> None:
    """In-process, every directory listed depth first with READDIRPLUS (replies of at most
    3,000 entries), letting the worker finish between directories: each directory after the
    first is listed from what was decoded ahead (beyond `AHEAD` entries, on request), and
    the replies and rows are those of the same walk with listing ahead off."""
    import pyfuse3
    import trio

    from c3fs.fuse import listahead
    from c3fs.fuse import ops as ops_module
    from c3fs.fuse.ops import Operations
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    env, src = store

    def walk(enabled: bool) -> tuple[list, list, int]:
        monkeypatch.setattr(listahead, "ENABLED", enabled)
        reply = Reply(3000)
        monkeypatch.setattr(ops_module, "REPLY_MANY", reply)
        repo = Repo.open(env["C3FS_STORE"])
        ops = Operations(Vfs(repo, "/jobs/j"))
        listings: list = []

        async def listing(ino: int) -> None:
            reply.got = got = []
            fh = await ops.opendir(ino)
            while True:
                token = SimpleNamespace(plus=True, used=0)
                await ops.readdir(fh, len(got), token)
                if not token.used:
                    break
            await ops.releasedir(fh)
            while ops.listing_ahead._busy:  # the worker decodes the next directory
                await trio.sleep(0.001)
            listings.append(got)
            for _, ino, mode, *_ in got:
                if stat.S_ISDIR(mode):
                    await listing(ino)

        try:
            trio.run(listing, pyfuse3.ROOT_INODE)
            table = ops.inodes.table
            rows = sorted((k, c) for k, c in zip(table._keys, table._counts, strict=True) if k)
            return listings, rows, ops.listing_ahead.used
        finally:
            repo.close()

    on, rows_on, used = walk(True)
    off, rows_off, unused = walk(False)
    assert on == off
    assert rows_on == rows_off
    assert len(on) == 30 and sum(len(got) for got in on) == len(expected_entries(src))
    assert (used, unused) == (29, 0)


@pytest.mark.fuse
@pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")
@needs_runs
def test_find_then_stat_through_a_mount_with_listing_ahead(store, tmp_path: Path) -> None:
    """Through a real mount, `find`, then every entry's readdir fields and lstat, then
    `drop_caches`: with listing ahead (some directories answered from it) and without, the
    same entries and attributes as the source, the same rows and lookup counts, and no
    lookup left once the kernel has forgotten its inodes."""
    env, src = store
    results = listed_both_ways(env, src, tmp_path, {"ahead": {"C3FS_LIST_AHEAD": "1"},
                                                    "off": {"C3FS_LIST_AHEAD": "0"}})
    expected = expected_entries(src)
    for way in results.values():
        assert int(way[0]["out"]) == len(expected) + 1
        listed = json.loads(way[1]["out"])
        assert listed.keys() == expected.keys()
        for rel, fields in expected.items():  # (a directory's mtime: not checked here)
            assert listed[rel][:10] + (listed[rel][10:] if not fields[1] else fields[10:]) \
                == fields, rel
    ahead, off = results["ahead"], results["off"]
    for step in (0, 1):
        assert (ahead[step]["rows"], ahead[step]["lookups"]) == (
            off[step]["rows"], off[step]["lookups"])
    assert ahead[2]["lookups"] == off[2]["lookups"] == 0
    assert ahead[0]["ahead"] >= 1 and off[2]["ahead"] == 0
