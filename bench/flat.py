"""One huge flat directory (issue 16, item 5: 10 M entries in one directory): push it,
read it back through `c3fs ls`, a mount and `verify`, and report each step's wall and CPU
seconds and peak RSS, so that the memory of each is seen to stay bounded (paged directories:
README "Limits").

    python -m bench.flat --files 2000000 --data /tmp/flat --work /tmp/flat-work [--keep]

The dataset: N files in one directory, `file-00000000.bin` ..., every tenth holding a few
bytes and the rest empty (inodes, not blocks: 2 M take seconds of disk, deleting them
minutes). Made once under --data and reused (--keep leaves it; it is deleted otherwise).

    python -m bench.flat --files 10000000 --crafted --work /tmp/flat-work

`--crafted`: no files and no push: the same directory's trees are written into the store by
the library's own tree writer (what push writes for it, the file bytes aside) and the job
registered, so the readers (ls, verify, the mount, gc) can be measured at 10 M entries
without creating 10 M files (~35 minutes here, and as long again to delete them).
Results: bench/results/flat-<timestamp>.json and printed. The page cache is not dropped
(the machine is shared): "cold" is a fresh mount's daemon, which has read nothing yet.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import measure
from bench.c3fs_tool import c3fs_binary
from bench.measure import Command, run_timed
from bench.scale import daemon_cpu

MiB = 1024 * 1024


def generate(flat: Path, files: int) -> None:
    if flat.is_dir() and sum(1 for _ in os.scandir(flat)) == files:
        return
    flat.mkdir(parents=True, exist_ok=True)
    fd = os.open(flat, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(files):
            f = os.open(b"file-%08d.bin" % i, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644,
                        dir_fd=fd)
            if i % 10 == 0:
                os.write(f, b"%d\n" % i)
            os.close(f)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flat", description=__doc__)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path("bench/data/flat"))
    parser.add_argument("--work", type=Path, default=Path("bench/data/flat-work"))
    parser.add_argument("--keep", action="store_true", help="keep the dataset")
    parser.add_argument("--crafted", action="store_true",
                        help="write the job's trees directly, no files and no push")
    parser.add_argument("--cold-stats", type=int, default=5, metavar="N",
                        help="fresh mounts whose first `stat` of the last entry is timed")
    args = parser.parse_args(argv)
    src = args.data / "src"
    flat = src / "flat"
    if not args.crafted:
        generate(flat, args.files)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    env = {"C3FS_STORE": str(args.work / "store"), "C3FS_CACHE_DIR": str(args.work / "cache")}
    c3fs = c3fs_binary()
    out: dict = {"files": args.files, "load_before": os.getloadavg()[0]}

    def step(name: str, *cmd: str) -> measure.Timed:
        timed = run_timed(Command([c3fs, *cmd], env=env))
        out[name] = {"s": round(timed.seconds, 2), "cpu_s": round(timed.cpu, 2),
                     "rss_mib": round(timed.peak_rss / MiB)}
        print(name, out[name], flush=True)
        return timed

    if args.crafted:
        out["crafted"] = craft(env, args.files)
        print("crafted", out["crafted"], flush=True)
    else:
        step("push", "push", str(src), "-p", "flat", "-j", "flat")
    listed = step("ls", "ls", "/jobs/flat/flat")
    out["ls"]["names"] = len(listed.stdout.splitlines())
    step("verify", "verify", "flat")
    out.update(cold_stats(c3fs, env, args.work / "mnt", args.files, args.cold_stats))
    out.update(through_mount(c3fs, env, args.work / "mnt", args.files))
    step("gc", "gc")
    out["load_after"] = os.getloadavg()[0]
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / f"flat-{stamp}.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    shutil.rmtree(args.work, ignore_errors=True)
    if not args.keep and not args.crafted:
        shutil.rmtree(src, ignore_errors=True)
    return 0


def craft(env: dict[str, str], files: int) -> dict:
    """Job `flat` of project `flat`: the directory `flat` of `files` entries, as `generate`
    makes it, its trees written by the ingester's tree writer (pages as they fill)."""
    from c3fs.ingest import Ingester
    from c3fs.jobs.push import ingest, record_for
    from c3fs.objects.job import JOB
    from c3fs.objects.tree import DIR, FILE, Entry
    from c3fs.repo import Repo

    mtime = 1_700_000_000 * 10**9
    start, cpu = time.perf_counter(), time.process_time()

    def build(ingester: Ingester) -> bytes:
        writer = ingester.tree_writer(b"flat")
        for i in range(files):
            data = b"%d\n" % i if i % 10 == 0 else b""
            chunk, size = ingester._store_chunk(data) if data else (b"", 0)
            writer.add(Entry(b"file-%08d.bin" % i, FILE, 0o644, size, mtime, chunks=chunk,
                             sizes=[size] if size else []))
            ingester.stats.add(files=1, logical_bytes=size)
        flat = writer.finish()
        return ingester.store_tree([Entry(b"flat", DIR, 0o755, 0, mtime, target=flat)])

    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        repo = Repo.open()
        try:
            ingest(repo, build, lambda root, stats: record_for(JOB, "flat", "flat", root,
                                                                stats, time.time()))
        finally:
            repo.close()
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.update({key: value})
    return {"s": round(time.perf_counter() - start, 2),
            "cpu_s": round(time.process_time() - cpu, 2)}


def thread_cpu(pid: int) -> float:
    """CPU seconds of every thread of `pid` (/proc schedstat: nanoseconds, where psutil's
    figure counts clock ticks, 10 ms: too coarse for one lookup)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # (a thread that just ended)
            pass
    return total / 1e9


def cold_stats(c3fs: str, env: dict[str, str], mnt: Path, files: int, repeats: int) -> dict:
    """`stat` of the last entry in a fresh mount's daemon, `repeats` mounts: its wall time
    and the daemon's CPU for it (the directory's own LOOKUP first, apart)."""
    mnt.mkdir(exist_ok=True)
    walls, cpus = [], []
    for _ in range(repeats):
        measure.run(Command([c3fs, "mount", "/jobs/flat", str(mnt)], env=env))
        try:
            daemon = measure.find_daemon(mnt)
            os.stat(mnt / "flat")
            cpu = thread_cpu(daemon) if daemon else 0.0
            start = time.perf_counter()
            os.stat(mnt / "flat" / f"file-{files - 1:08d}.bin")
            walls.append((time.perf_counter() - start) * 1000)
            if daemon:
                cpus.append((thread_cpu(daemon) - cpu) * 1000)
        finally:
            subprocess.run([c3fs, "umount", str(mnt)], env={**os.environ, **env},
                           capture_output=True)
            measure.unmount(mnt)
    out = {"mount_stat_last_cold_ms_each": [round(w, 2) for w in walls],
           "mount_stat_last_cold_ms": round(sorted(walls)[len(walls) // 2], 2),
           "mount_stat_last_cold_daemon_cpu_ms_each": [round(c, 2) for c in cpus]}
    print(out, flush=True)
    return out


def through_mount(c3fs: str, env: dict[str, str], mnt: Path, files: int) -> dict:
    """Lookups of a few names, then a whole listing (`ls -f`), with the daemon's RSS and CPU
    seconds after each."""
    mnt.mkdir(exist_ok=True)
    measure.run(Command([c3fs, "mount", "/jobs/flat", str(mnt)], env=env))
    out: dict = {}
    try:
        daemon = measure.find_daemon(mnt)
        start = time.perf_counter()
        for i in range(0, files, max(1, files // 1000)):  # 1,000 lookups across the pages
            os.stat(mnt / "flat" / f"file-{i:08d}.bin")
        out["mount_1000_stats_s"] = round(time.perf_counter() - start, 2)
        out["daemon_rss_after_lookups_mib"] = round(measure.tree_rss(daemon) / MiB) if daemon else None
        cpu = daemon_cpu(daemon)
        start = time.perf_counter()
        names = subprocess.run(["ls", "-f", str(mnt / "flat")], capture_output=True,
                               check=True).stdout.splitlines()
        out["mount_ls_f_s"] = round(time.perf_counter() - start, 2)
        out["mount_ls_f_names"] = sum(name not in (b".", b"..") for name in names)
        out["mount_ls_f_daemon_cpu_s"] = round(daemon_cpu(daemon) - cpu, 2)
        out["daemon_rss_after_readdir_mib"] = round(measure.tree_rss(daemon) / MiB) if daemon else None
    finally:
        subprocess.run([c3fs, "umount", str(mnt)], env={**os.environ, **env},
                       capture_output=True)
        measure.unmount(mnt)
    print(out, flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
