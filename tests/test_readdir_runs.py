"""readdir answered a run of entries at a time (issue 16): with the patched pyfuse3's
`readdir_reply_many` the daemon hands a run's names and fields to one C call, which fills the
reply and says how many fit. Through a real mount, both ways (the per-entry path of a stock
pyfuse3, `REPLY_MANY = None`) must give the same entries, inode numbers and attributes, the
same inode rows, and lookup counts the kernel's FORGETs bring back to nothing; in-process,
with replies that fill mid-run, every row must count exactly the entries a reply took."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fusehelp import fuse_works, run_c3fs
from test_readdir import through_mount

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")]
needs_runs = pytest.mark.skipif(
    not hasattr(__import__("pyfuse3"), "readdir_reply_many"),
    reason="a stock pyfuse3: one reply call per entry (nothing to compare)")

# Prints every entry under the current directory: what readdir gives (d_ino, d_type) and
# what lstat gives (the kernel's inode, filled by READDIRPLUS or a LOOKUP).
ENTRIES = ("import json, os\n"
           "out = {}\n"
           "for top, dirs, files in os.walk('.'):\n"
           "    for e in os.scandir(top):\n"
           "        s = e.stat(follow_symlinks=False)\n"
           "        out[os.path.join(top, e.name)[2:]] = [\n"
           "            e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink(), s.st_ino,\n"
           "            s.st_mode, s.st_size, s.st_blocks, s.st_nlink, s.st_uid, s.st_gid,\n"
           "            s.st_mtime_ns, s.st_atime_ns, s.st_ctime_ns, s.st_blksize]\n"
           "print(json.dumps(out))")


SPARSE_HOLE = 3 << 20  # a/sparse: this many bytes of hole (3 hole chunks), then its data


def make_tree(src: Path, files: int, paged: int) -> None:
    """Files of many sizes, modes and mtimes (some before 1970, some with nanoseconds),
    a sparse one, symlinks, empty and full directories; `paged` entries in one more
    directory."""
    for d in ("a", "a/sub", "a/empty", "big"):
        (src / d).mkdir(parents=True)
    with open(src / "a" / "sparse", "wb") as f:
        f.truncate(SPARSE_HOLE)
        f.seek(SPARSE_HOLE)
        f.write(os.urandom(1000))
    for i in range(files):
        path = src / "a" / f"f{i:05d}"
        path.write_bytes(os.urandom(i * 37 % 3000))
        path.chmod((0o600, 0o644, 0o755, 0o400, 0o4755)[i % 5])
        os.utime(path, ns=(0, (i * 7_919_000_003 + 123_456_789) % 2**40 - 2**39))
    for i in range(200):
        (src / "a" / f"l{i:04d}").symlink_to("t" * (1 + i))
    (src / "a" / "sub" / "x").write_bytes(b"x")
    for i in range(paged):
        (src / "big" / f"e{i:06d}").write_bytes(b"y" * (i % 5))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[dict[str, str], Path]:
    """A job with a directory of 7,000 entries (more than a 1 MiB reply holds: glibc's
    buffer, st_blksize) and one of 9,000 stored paged (pages of ~500 entries, $C3FS_TREE_PAGE:
    a readdir takes one page at a time)."""
    root = tmp_path_factory.mktemp("runs")
    make_tree(root / "src", files=6800, paged=9000)
    env = dict(os.environ, C3FS_STORE=str(root / "store"), C3FS_CACHE_DIR=str(root / "cache"),
               C3FS_TREE_PAGE="8000")
    run_c3fs("push", str(root / "src"), "--project", "p", "--job", "j", env=env, timeout=300)
    return env, root / "src"


def listed_both_ways(env: dict[str, str], src: Path, tmp_path: Path,
                     ways: dict[str, dict[str, str]] | None = None) -> dict[str, list[dict]]:
    """`find`, then every entry's readdir fields and lstat (as `ls -l`), then the rows left
    once the kernel has dropped its unused inodes (drop_caches 2: it FORGETs each); through a
    mount each way, with its environment (by default: one reply per entry, and runs)."""
    script = tmp_path / "entries.py"
    script.write_text(ENTRIES)
    results = {}
    for way, switches in (ways or {w: {"C3FS_TEST_REPLY": w} for w in ("entries", "runs")}).items():
        mnt = tmp_path / f"mnt-{way}"
        results[way] = through_mount(
            dict(env, **switches), mnt, f"cd {mnt} && find . | wc -l",
            f"cd {mnt} && {sys.executable} {script}",
            "sync && echo 2 > /proc/sys/vm/drop_caches && sleep 1 && "
            "echo 2 > /proc/sys/vm/drop_caches && sleep 1")
    return results


def expected_entries(src: Path) -> dict[str, list]:
    """What the mount must show of each entry of `src`, as ENTRIES prints it."""
    from c3fs.vfs import ino_of

    uid, gid, found = os.getuid(), os.getgid(), {}
    for path in src.rglob("*"):
        rel = str(path.relative_to(src))
        s = path.lstat()
        kind = stat.S_IFMT(s.st_mode)
        size = s.st_size if kind != stat.S_IFDIR else 0
        data = size - SPARSE_HOLE if rel == "a/sparse" else size  # (not its hole's chunks)
        ino = ino_of((b"jobs", b"j", *(part.encode() for part in rel.split("/"))))
        found[rel] = [ino, kind == stat.S_IFDIR, kind == stat.S_IFLNK, ino,
                      kind | stat.S_IMODE(s.st_mode), size, (data + 511) // 512, 1, uid, gid,
                      s.st_mtime_ns, s.st_mtime_ns, s.st_mtime_ns, 1 << 20]
    return found


def compare(results: dict[str, list[dict]], src: Path) -> None:
    entries, runs = results["entries"], results["runs"]
    expected = expected_entries(src)
    for way in (entries, runs):
        assert int(way[0]["out"]) == len(expected) + 1
        listed = json.loads(way[1]["out"])
        assert listed.keys() == expected.keys()
        for rel, fields in expected.items():
            # (a directory's mtime is the source's as pushed, not checked here)
            got = listed[rel][:10] + (listed[rel][10:] if not fields[1] else fields[10:])
            assert got == fields, rel
    assert json.loads(runs[1]["out"]) == json.loads(entries[1]["out"])
    # the same rows and lookups after `find` and after the stats; none once forgotten
    for step in (0, 1):
        assert (runs[step]["rows"], runs[step]["lookups"]) == (
            entries[step]["rows"], entries[step]["lookups"])
    assert runs[1]["rows"] >= len(expected)  # every entry came in a READDIRPLUS (no LOOKUP)
    # (a row left may be a node kept whole, with no lookup)
    assert entries[2]["lookups"] == runs[2]["lookups"] == 0
    assert entries[2]["rows"] == runs[2]["rows"] <= 1


@needs_runs
def test_runs_give_what_one_reply_per_entry_gave(store, tmp_path: Path) -> None:
    env, src = store
    results = listed_both_ways(env, src, tmp_path)
    compare(results, src)
    # the kernel's reply buffer filled in the middle of a run, and the rest came next time
    assert sum(step["requests"].get("cut runs", 0) for step in results["runs"]) >= 1


@needs_runs
@pytest.mark.slow
def test_runs_of_a_directory_of_more_than_65536_entries(tmp_path: Path) -> None:
    """The default page size: a directory of 70,000 entries is stored paged."""
    make_tree(tmp_path / "src", files=300, paged=70_000)
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("C3FS_TREE_PAGE", None)
    run_c3fs("push", str(tmp_path / "src"), "--project", "p", "--job", "j", env=env,
             timeout=600)
    compare(listed_both_ways(env, tmp_path / "src", tmp_path), tmp_path / "src")


class Reply:
    """`readdir_reply_many` without a kernel: takes up to `room` entries per request (the
    first `cut` requests), recording what each entry would carry."""

    def __init__(self, room: int) -> None:
        self.room, self.got = room, []

    def __call__(self, token, names, inos, modes, sizes=None, mtimes_ns=None,
                 generations=None, attr=None, first_id=0, blocks=None) -> int:
        taken = min(len(names), self.room - token.used)
        for k in range(taken):
            fields = [names[k], inos[k], modes[k], first_id + k + 1]
            if token.plus:
                fields += [sizes[k], (sizes[k] + 511) // 512 if blocks is None else blocks[k],
                           mtimes_ns[k], generations[k] & (2**64 - 1),
                           attr.entry_timeout, attr.attr_timeout, attr.st_nlink]
            self.got.append(fields)
        token.used += taken
        return taken


@pytest.mark.parametrize("room", [1, 100, 255, 257, 4000])
def test_rows_count_exactly_the_entries_a_reply_took(room: int, tmp_path: Path,
                                                     monkeypatch) -> None:
    """Replies of `room` entries, cut inside runs of 256 (or at their ends): the entries
    come in order, once each, with `entry_attributes`'s fields, and each entry of a
    READDIRPLUS has one lookup (two after a second listing); FORGET of each brings every row
    back to none."""
    import pyfuse3
    import trio

    from c3fs.fuse import ops as ops_module
    from c3fs.fuse.ops import Operations
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    src = tmp_path / "src"
    src.mkdir()
    for i in range(1000):
        (src / f"f{i:04d}").write_bytes(b"z" * (i % 700))
    with open(src / "f0600", "r+b") as f:  # a sparse file amid the runs: its st_blocks
        f.truncate(2 << 20)
        if i % 100 == 0:
            (src / f"l{i:04d}").symlink_to("x" * (i // 100 + 1))
            (src / f"d{i:04d}").mkdir()
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"))
    run_c3fs("push", str(src), "--project", "p", "--job", "j", env=env)
    reply = Reply(room)
    monkeypatch.setattr(ops_module, "REPLY_MANY", reply)

    repo = Repo.open(str(tmp_path / "store"))
    ops = Operations(Vfs(repo, "/jobs/j"))

    async def listing(plus: bool) -> list:
        reply.got = []
        fh = await ops.opendir(pyfuse3.ROOT_INODE)
        while True:
            token = SimpleNamespace(plus=plus, used=0)
            await ops.readdir(fh, len(reply.got), token)
            if not token.used:
                break
        await ops.releasedir(fh)
        return reply.got

    async def main() -> None:
        base = len(ops.inodes)  # (the root's)
        plain = await listing(False)
        assert len(ops.inodes) == base  # a plain READDIR takes no lookup
        plus = await listing(True)
        names = sorted(p.name.encode() for p in src.iterdir())
        assert [entry[0] for entry in plus] == [entry[0] for entry in plain] == names
        assert [entry[3] for entry in plus] == list(range(1, len(names) + 1))
        for entry in plus:  # what the per-entry path put in its EntryAttributes
            attr = ops.entry_attributes(ops.tree_attributes(), entry[1],
                                        ops.vfs.repo.tree(ops.vfs.root.tree_id)[
                                            entry[3] - 1])
            assert entry[1:3] + entry[4:] == [
                attr.st_ino, attr.st_mode, attr.st_size, attr.st_blocks, attr.st_mtime_ns,
                attr.generation, attr.entry_timeout, attr.attr_timeout, attr.st_nlink]
        table = ops.inodes.table
        assert len(ops.inodes) == base + len(names)
        assert {table.lookups(entry[1]) for entry in plus} == {1}
        await listing(True)
        assert {table.lookups(entry[1]) for entry in plus} == {2}
        await ops.forget([(entry[1], 1) for entry in plus])
        assert {table.lookups(entry[1]) for entry in plus} == {1}
        await ops.forget([(entry[1], 1) for entry in plus])
        assert len(ops.inodes) == base

    try:
        trio.run(main)
    finally:
        repo.close()
