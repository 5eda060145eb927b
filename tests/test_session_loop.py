"""pyfuse3's request loop as patched (patches/pyfuse3-3.5.0-requests-without-task-switches.patch),
through a real mount of a minimal file system: a request answered at once is taken and
answered by the task that reads the FUSE fd (no hand-over to a second task per request), and a
handler that waits (an event, a thread) does not hold up the requests behind it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fusehelp import force_unmount, fuse_works

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")]

# Mounts a file system of files f0..f999 (and `slow`, `go`, `gone`: see the tests) at argv[1], runs each
# shell command of argv[2:] through it, and prints per command the tasks that answered its
# LOOKUPs and READs (how many distinct ones) and how many requests each kind had.
DAEMON = r"""
import collections, errno, json, stat, sys
import pyfuse3, trio

FILES = 1000
tasks, counts = collections.Counter(), collections.Counter()
go = trio.Event()

def attributes(ino, size):
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = ino
    attr.st_mode = (stat.S_IFDIR | 0o755) if ino == pyfuse3.ROOT_INODE else (stat.S_IFREG | 0o644)
    attr.st_size = size
    attr.entry_timeout = attr.attr_timeout = 300
    return attr

def content(ino):
    return b"file %d\n" % ino

class Ops(pyfuse3.Operations):
    async def getattr(self, inode, ctx=None):
        return attributes(inode, 0 if inode == pyfuse3.ROOT_INODE else len(content(inode)))

    async def lookup(self, parent, name, ctx=None):
        counts["lookup"] += 1
        tasks[id(trio.lowlevel.current_task())] += 1
        if name in (b"slow", b"go"):
            ino = 5000 if name == b"slow" else 5001
            return attributes(ino, len(content(ino)))
        if name == b"gone":  # a worker thread, then an error: the reply is the error
            await trio.to_thread.run_sync(lambda: None)
            raise pyfuse3.FUSEError(errno.ENOENT)
        if name.startswith(b"f") and name[1:].isdigit() and int(name[1:]) < FILES:
            ino = 10 + int(name[1:])
            return attributes(ino, len(content(ino)))
        raise pyfuse3.FUSEError(errno.ENOENT)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh, off, size):
        counts["read"] += 1
        tasks[id(trio.lowlevel.current_task())] += 1
        if fh == 5000:  # `slow` waits until `go` is read (a later request)
            await go.wait()
        elif fh == 5001:
            go.set()
        return content(fh)[off : off + size]

pyfuse3.init(Ops(), sys.argv[1], {"ro", "fsname=looptest"})
results = []
async def commands():
    for command in sys.argv[2:]:
        tasks.clear()
        counts.clear()
        done = await trio.run_process(["sh", "-c", command], cwd=sys.argv[1], capture_stdout=True,
                                       check=True)
        results.append({"out": done.stdout.decode(), "tasks": len(tasks), "counts": dict(counts)})
    pyfuse3.terminate()
async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(commands)
        await pyfuse3.main(min_tasks=1, max_tasks=64)
try:
    trio.run(main)
finally:
    pyfuse3.close(unmount=True)
print(json.dumps(results))
"""


def through_mount(mnt: Path, *commands: str) -> list[dict]:
    mnt.mkdir()
    try:
        proc = subprocess.run([sys.executable, "-c", DAEMON, str(mnt), *commands],
                              capture_output=True, text=True, timeout=60)
    finally:
        force_unmount(mnt)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_requests_answered_at_once_stay_with_the_reading_task(tmp_path: Path) -> None:
    """`cat` of 300 files, one after another: 300 LOOKUPs and 300 READs, every one answered
    by the one task that reads the FUSE fd (pyfuse3 as released alternated two)."""
    names = " ".join(f"f{i}" for i in range(300))
    (one,) = through_mount(tmp_path / "m", f"for f in {names}; do cat $f; done")
    assert one["out"] == "".join(f"file {10 + i}\n" for i in range(300))
    assert one["counts"] == {"lookup": 300, "read": 300}
    assert one["tasks"] == 1


def test_a_waiting_handler_does_not_hold_up_the_next_requests(tmp_path: Path) -> None:
    """The READ of `slow` waits for the READ of `go`, sent after it: the loop must take and
    answer `go` (and the requests around it) while `slow` waits; a handler that waits for a
    thread and then fails is answered with its error."""
    slow, errors, after = through_mount(
        tmp_path / "m",
        "cat slow & sleep 0.3; cat go f1; wait",
        "cat gone 2>&1 || true",
        "cat f2 f3")
    assert sorted(slow["out"].splitlines()) == ["file 11", "file 5000", "file 5001"]
    assert "No such file or directory" in errors["out"]
    assert after["out"] == "file 12\nfile 13\n"
