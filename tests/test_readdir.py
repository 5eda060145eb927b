"""Listings through a real mount (issue 16): past a directory's first reply (READDIRPLUS)
`find` gets plain READDIR replies (names, inode numbers, types) and leaves no inode rows
behind; `ls -l` gets READDIRPLUS and the right attributes. The daemon runs in a child process that mounts in-process, so that it can report
its own request counts and inode table (c3fs/fuse/ops.py, `readdir`)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fusehelp import force_unmount, fuse_works, run_c3fs

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")]
DIRS, PER_DIR = 3, 1500

# Mounts /jobs/j at argv[2] in this process, runs each shell command of argv[3:] through it
# (a fresh mount: the kernel knows no entry yet), and prints per command its output, the
# READDIR requests by kind, LOOKUP and READ requests, the files read ahead, the run replies
# the kernel's buffer cut short (some entries taken, not all), and the rows of the inode table
# afterwards with the sum of their lookup counts, and the directories listed so far from
# fields decoded ahead (c3fs/fuse/listahead.py). $C3FS_TEST_REPLY=entries: one reply call
# per entry, as with a stock pyfuse3 (tests/test_readdir_runs.py).
DAEMON = """
import collections, json, os, subprocess, sys
import pyfuse3, trio
from c3fs.fuse.daemon import fuse_options
import c3fs.fuse.ops as ops_module
from c3fs.fuse.ops import Operations
from c3fs.repo import Repo
from c3fs.vfs import Vfs

repo = Repo.open(sys.argv[1])
ops = Operations(Vfs(repo, "/jobs/j"))
kinds = collections.Counter()
readdir = ops.readdir
async def counted(fh, start_id, token):
    kinds["plus" if getattr(token, "plus", True) else "plain"] += 1
    await readdir(fh, start_id, token)
ops.readdir = counted
for name in ("lookup", "read"):
    def count(fn, name=name):
        async def wrapper(*args):
            kinds[name] += 1
            return await fn(*args)
        return wrapper
    setattr(ops, name, count(getattr(ops, name)))
read_ahead = ops.directory_readahead._read_ahead
def read_ahead_counted(*args):
    kinds["read ahead"] += 1  # (worker threads: the GIL keeps the count)
    read_ahead(*args)
ops.directory_readahead._read_ahead = read_ahead_counted
if os.environ.get("C3FS_TEST_REPLY") == "entries":
    ops_module.REPLY_MANY = None
elif ops_module.REPLY_MANY is not None:
    many = ops_module.REPLY_MANY
    def cut_counted(token, names, *args, **kwargs):
        taken = many(token, names, *args, **kwargs)
        kinds["cut runs"] += 0 < taken < len(names)
        return taken
    ops_module.REPLY_MANY = cut_counted
pyfuse3.init(ops, sys.argv[2], fuse_options(False))
results = []
async def commands():
    for command in sys.argv[3:]:
        kinds.clear()
        done = await trio.run_process(["sh", "-c", command], capture_stdout=True, check=True)
        table = ops.inodes.table
        results.append({"out": done.stdout.decode(), "requests": dict(kinds),
                        "rows": len(ops.inodes),
                        "ahead": ops.listing_ahead.used if ops.listing_ahead else 0,
                        "lookups": sum(c for k, c in zip(table._keys, table._counts) if k)})
    pyfuse3.terminate()
async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands)
        await pyfuse3.main()
try:
    trio.run(main)
finally:
    pyfuse3.close(unmount=True)
    repo.close()
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[dict[str, str], Path]:
    root = tmp_path_factory.mktemp("listing")
    src = root / "src"
    for d in range(DIRS):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(PER_DIR):
            path = src / f"d{d}" / f"file-{i:05d}"
            path.write_bytes(b"x" * (i % 300))
            path.chmod(0o600 if i % 7 == 0 else 0o644)
    (src / "d0" / "link").symlink_to("file-00001")
    env = dict(os.environ, C3FS_STORE=str(root / "store"), C3FS_CACHE_DIR=str(root / "cache"))
    run_c3fs("push", str(src), "--project", "p", "--job", "j", env=env)
    return env, src


def through_mount(env: dict[str, str], mnt: Path, *commands: str, first: int = 0) -> list[dict]:
    """`first`: C3FS_READDIRPLUS_FIRST, entries in a directory's first READDIRPLUS reply.

    The kernel's inode cache is the machine's: one test's `drop_caches` makes the kernel
    FORGET inodes another test's mount is counting (the suite runs on several workers). These
    mounts take turns (a lock file)."""
    mnt.mkdir()
    env = dict(env, C3FS_READDIRPLUS_FIRST=str(first))
    with open(Path(tempfile.gettempdir()) / "c3fs-tests-inode-counts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            proc = subprocess.run([sys.executable, "-c", DAEMON, env["C3FS_STORE"], str(mnt),
                                   *commands], env=env, capture_output=True, text=True,
                                  timeout=300)
        finally:
            force_unmount(mnt)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_find_of_directories_that_fit_one_reply_gets_readdirplus(store, tmp_path: Path) -> None:
    """By default a directory's first reply holds as many entries as fit (1,500 do): `du`,
    `tar` and `cp -r` then need no LOOKUP per file."""
    env, src = store
    mnt = tmp_path / "mnt"
    (find,) = through_mount(env, mnt, f"cd {mnt} && find . | wc -l")
    assert int(find["out"]) == DIRS * PER_DIR + DIRS + 2
    assert find["rows"] >= DIRS * PER_DIR


def test_find_lists_every_entry_without_an_inode_row_each(store, tmp_path: Path) -> None:
    import pyfuse3

    FIRST_PLUS = 16  # noqa: N806
    env, src = store
    mnt = tmp_path / "mnt"
    find, again = through_mount(env, mnt, f"cd {mnt} && find . -type f",
                                f"cd {mnt} && find . -type l", first=FIRST_PLUS)
    files = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()
                   and not p.is_symlink())
    assert sorted(line[2:] for line in find["out"].splitlines()) == files  # d_type suffices
    assert again["out"].splitlines() == ["./d0/link"]
    if not getattr(pyfuse3, "READDIRPLUS_AUTO", False):
        pytest.skip("a stock pyfuse3: every READDIR is a READDIRPLUS")
    # a directory's first reply is READDIRPLUS (the kernel's choice), kept to FIRST_PLUS
    # entries here; the rest comes as plain READDIR, which makes no row
    assert find["requests"]["plain"] >= 1
    assert find["rows"] <= (DIRS + 1) * (FIRST_PLUS + 1)
    assert again["rows"] <= (DIRS + 1) * (FIRST_PLUS + 1)


def test_ls_l_after_find_gets_every_attribute(store, tmp_path: Path) -> None:
    """The stat of the first entries tells the kernel to use READDIRPLUS for the rest:
    no LOOKUP per entry, and a row per entry the kernel now holds."""
    env, src = store
    mnt = tmp_path / "mnt"
    listing = "ls -ln --time-style=+%s d1 d0"
    _, ls = through_mount(env, mnt, f"cd {mnt} && find . >/dev/null", f"cd {mnt} && {listing}",
                          first=16)
    native = subprocess.run(["sh", "-c", listing], cwd=src, capture_output=True, text=True,
                            check=True).stdout
    uid, gid = os.getuid(), os.getgid()
    mine = [line.split() for line in native.replace(f" {uid} {gid} ", " U G ").splitlines()]
    theirs = [line.split() for line in ls["out"].replace(f" {uid} {gid} ", " U G ").splitlines()]
    # "total" counts blocks, which differ from the source file system's
    assert [line for line in theirs if line[:1] != ["total"]] == [
        line for line in mine if line[:1] != ["total"]]
    assert ls["rows"] >= 2 * PER_DIR  # READDIRPLUS: the kernel took every entry
    assert ls["requests"].get("plain", 0) == 0


# Prints, for every entry under the current directory, its inode number as readdir gives it
# (DirEntry.inode(): d_ino, no stat) and as lstat gives it, in two passes.
INODES = ("import json, os; d = {}\n"
          "for top, dirs, files in os.walk('.'):\n"
          "    for e in os.scandir(top): d[os.path.join(top, e.name)[2:]] = [e.inode()]\n"
          "for p in d: d[p].append(os.lstat(p).st_ino)\n"
          "print(json.dumps(d))")


@pytest.mark.parametrize("first", [0, 16])
def test_inode_numbers_are_the_paths_whatever_the_reply(store, tmp_path: Path, first: int) -> None:
    """Every entry's inode number, from a plain READDIR, a READDIRPLUS or a LOOKUP, is the
    hash of its canonical path (`vfs.ino_of`): the same as before readdir decoded entries
    without their chunk lists, and the same on a second listing (rows known already)."""
    from c3fs.vfs import ino_of

    env, src = store
    mnt = tmp_path / "mnt"
    script = tmp_path / "inodes.py"
    script.write_text(INODES)
    command = f"cd {mnt} && {sys.executable} {script}"
    one, two = through_mount(env, mnt, command, command, first=first)
    found, again = json.loads(one["out"]), json.loads(two["out"])
    expected = {str(p.relative_to(src)) for p in src.rglob("*")}
    assert set(found) == expected
    for rel, inodes in found.items():
        ino = ino_of((b"jobs", b"j", *(part.encode() for part in rel.split("/"))))
        assert inodes == [ino, ino], rel
    assert again == found
    if first and getattr(__import__("pyfuse3"), "READDIRPLUS_AUTO", False):
        assert one["requests"]["plain"] >= 1  # some came by plain READDIR


def test_a_lookup_does_not_read_ahead_only_a_read_does(store, tmp_path: Path) -> None:
    """`du` of directories listed by names (a 16-entry first reply) looks every file up and
    reads none: no file is read ahead. A READ of a small file starts the directory's
    readahead (files after it decoded ahead; without it, at 1,000 files of a directory, `du`
    cost ~100 µs of daemon CPU a LOOKUP, half of it reading ahead)."""
    import pyfuse3

    if not getattr(pyfuse3, "READDIRPLUS_AUTO", False):
        pytest.skip("a stock pyfuse3: every READDIR is a READDIRPLUS (no LOOKUP in du)")
    env, src = store
    mnt = tmp_path / "mnt"
    du, cat = through_mount(env, mnt, f"cd {mnt} && du -s d1 d2",
                            f"cd {mnt} && cat d0/file-00100 && sleep 2", first=16)
    assert du["requests"]["lookup"] >= 2 * (PER_DIR - 16)
    assert du["requests"].get("read ahead", 0) == 0
    assert du["requests"].get("read", 0) == 0
    assert cat["out"] == (src / "d0" / "file-00100").read_text()
    assert cat["requests"]["read"] >= 1
    assert cat["requests"]["read ahead"] >= 1  # (in a worker thread: the next small files)
