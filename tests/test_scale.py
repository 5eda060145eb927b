"""Memory bounds at 200,000 files (issue 16): the mount daemon after `find`, and `c3fs cp -r`.

Slow tier: making and pushing the dataset takes ~30 s. RSS is read with psutil on the real
processes (the daemon by its mountpoint; `cp` polled every 20 ms).
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from tests.fusehelp import C3FS, daemon_pids, fuse_works, mount, run_c3fs

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")]
MiB = 1024 * 1024
DIRS, PER_DIR = 200, 1000


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, str]:
    """Two jobs of the same 200,000 small files (200 directories of 1,000)."""
    root = tmp_path_factory.mktemp("scale")
    src = root / "src"
    for d in range(DIRS):
        directory = src / f"d{d:03d}"
        directory.mkdir(parents=True)
        for i in range(PER_DIR):
            fd = os.open(directory / f"f{i:04d}", os.O_WRONLY | os.O_CREAT, 0o644)
            os.write(fd, b"%d/%d\n" % (d, i))
            os.close(fd)
    env = dict(os.environ, C3FS_STORE=str(root / "store"), C3FS_CACHE_DIR=str(root / "cache"),
               ROOT=str(root))
    for job in ("big", "big2"):
        run_c3fs("push", str(src), "--project", "scale", "--job", job, env=env, timeout=600)
    return env


def ls_lr(path: Path) -> int:
    """Entries `ls -lR` lists (READDIRPLUS, as it stats them: the kernel then holds each)."""
    out = subprocess.run(["ls", "-lR", str(path)], capture_output=True, check=True, timeout=600)
    return sum(1 for line in out.stdout.splitlines() if line[:1] in (b"-", b"d", b"l"))


def test_the_daemon_keeps_a_row_not_a_node_per_inode_the_kernel_holds(big) -> None:
    """After `ls -lR` the kernel holds every listed inode (readdirplus). A second job of the
    same trees (no new tree to decode) adds 200,000 more inodes: their rows cost 28 bytes a
    slot (+14 MiB as the table doubles); a node object each cost ~66 MiB. The whole daemon
    stays within 100 MiB + its chunk cache + the decoded-tree cache (262,144 entries)."""
    with mount(big, Path(big["ROOT"]) / "mnt", "/", "--cache-size", "16MiB") as mnt:
        (pid,) = daemon_pids(mnt)
        daemon = psutil.Process(pid)
        assert ls_lr(mnt / "jobs" / "big") == DIRS * PER_DIR + DIRS
        first = daemon.memory_info().rss
        assert ls_lr(mnt / "jobs" / "big2") == DIRS * PER_DIR + DIRS
        second = daemon.memory_info().rss
    # measured: +24 MiB (154 -> 178 MiB); with a node object per inode +66 (200 -> 266 MiB)
    assert second - first <= 36 * MiB, f"{(second - first) / MiB:.0f} MiB for 200,000 inodes"
    trees = 262_144 * 400  # the repo's tree cache, ~400 B a decoded entry
    assert second <= 100 * MiB + 16 * MiB + trees, f"daemon RSS {second / MiB:.0f} MiB"


def test_cp_of_200k_files_streams_its_walk(big, tmp_path: Path) -> None:
    """`c3fs cp -r` queues a bounded window of work, not a node per file of the tree."""
    dest = tmp_path / "copy"
    proc = subprocess.Popen([C3FS, "cp", "-r", "/jobs/big", str(dest)], env=big,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = 0, threading.Event()

    def poll() -> None:
        nonlocal peak
        process = psutil.Process(proc.pid)
        while not done.wait(0.02):
            try:
                peak = max(peak, process.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _, err = proc.communicate(timeout=900)
    finally:
        done.set()
        poller.join()
    assert proc.returncode == 0, err
    assert sum(len(files) for _, _, files in os.walk(dest)) == DIRS * PER_DIR
    assert (dest / "d199" / "f0999").read_bytes() == b"199/999\n"
    assert peak <= 160 * MiB, f"cp -r peak RSS {peak / MiB:.0f} MiB"
