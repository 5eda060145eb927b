"""`python -m bench scale`: how c3fs's costs grow with the number of files and of jobs.

For each size N it generates (deterministically, seed 42) a dataset of N small files, 50-400
random bytes each, in shards of 1,000 plus one flat directory holding N/10 of them, and
measures, beside native tools in the same run:

    push (time, peak RSS)                  native `cp -r` of the source (time, peak RSS)
    `find` through the mount, cold         native `find` of the source, cold
    `ls -lR` through the mount (dentries warm after find)   native `ls -lR`
    `stat` of the flat dir's last entry, cold (ms)          native, cold
    daemon RSS after find, and after `cat` of every file (and that cat's time)
    `c3fs cp -r` (time, peak RSS)          native `cp -r` (above)
    `c3fs ls` of the flat dir              native `ls` of it

`--jobs J` also builds a store of J job refs (one tiny tree, refs written by the store API)
and times `c3fs ls -l /jobs/` on a new machine (empty index: the first command syncs every
ref, and stores a ref snapshot), warm with filters, and on another new machine (from the
snapshot). Results go to bench/results/scale-<timestamp>.{json,md}; the
datasets live under bench/data/scale-N (gitignored; `--delete` removes them afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from bench import measure
from bench.c3fs_tool import c3fs_binary
from bench.measure import Command, drop_caches, run_timed

BENCH = Path(__file__).resolve().parent
SHARD = 1000


def generate(root: Path, files: int, seed: int = 42) -> Path:
    """`root/src`: `files` files of 50-400 random bytes; made once, reused after."""
    src, done = root / "src", root / "complete"
    if done.exists():
        return src
    measure.discard(root)
    rng = random.Random(seed)
    flat = files // 10
    (src / "flat").mkdir(parents=True)
    for i in range(flat):
        (src / "flat" / f"f{i:07d}.txt").write_bytes(rng.randbytes(rng.randint(50, 400)))
    for shard in range(-(-(files - flat) // SHARD)):
        directory = src / f"shard{shard:05d}"
        directory.mkdir()
        for i in range(min(SHARD, files - flat - shard * SHARD)):
            (directory / f"f{i:04d}.txt").write_bytes(rng.randbytes(rng.randint(50, 400)))
    done.touch()
    return src


class Scale:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {"C3FS_STORE": str(work / "store"), "C3FS_CACHE_DIR": str(work / "cache")}
        self.c3fs = c3fs_binary()

    def cmd(self, *args: str) -> Command:
        return Command([self.c3fs, *args], env=self.env)

    def measure(self, src: Path, files: int) -> dict:
        out: dict = {"files": files}
        dst = self.work / "native-cp"
        drop_caches()
        native = run_timed(Command(["cp", "-r", str(src), str(dst)]))
        measure.discard(dst)
        out["native_cp_s"], out["native_cp_rss"] = native.seconds, native.peak_rss
        drop_caches()
        push = run_timed(self.cmd("push", str(src), "-p", "scale", "-j", "scale"))
        out["push_s"], out["push_rss"] = push.seconds, push.peak_rss
        out.update(self.through_mount(src, files))
        drop_caches()
        copy = run_timed(self.cmd("cp", "-r", "/jobs/scale", str(self.work / "c3fs-cp")))
        measure.discard(self.work / "c3fs-cp")
        out["cp_s"], out["cp_rss"] = copy.seconds, copy.peak_rss
        out["ls_flat_s"] = run_timed(self.cmd("ls", "/jobs/scale/flat")).seconds
        out["native_ls_flat_s"] = run_timed(Command(["ls", str(src / "flat")])).seconds
        return out

    def through_mount(self, src: Path, files: int) -> dict:
        mnt = self.work / "mnt"
        mnt.mkdir(exist_ok=True)
        measure.run(self.cmd("mount", "/jobs/scale", str(mnt)))
        out: dict = {}
        try:
            daemon = measure.find_daemon(mnt)
            cpu = daemon_cpu(daemon)
            for name, root in (("find", mnt), ("native_find", src)):
                drop_caches()
                out[f"{name}_s"] = timed(["find", str(root)])
                if name == "find":  # CPU seconds: what load does not change much
                    out["find_daemon_cpu_s"] = daemon_cpu(daemon) - cpu
            out["daemon_rss_find"] = measure.tree_rss(daemon) if daemon else None
            cpu = daemon_cpu(daemon)
            out["ls_lr_s"] = measure.ls_lr(mnt)
            out["ls_lr_daemon_cpu_s"] = daemon_cpu(daemon) - cpu
            out["native_ls_lr_s"] = measure.ls_lr(src)
            last = f"flat/f{files // 10 - 1:07d}.txt"
            for name, root in (("stat_last_ms", mnt), ("native_stat_last_ms", src)):
                drop_caches()
                start = time.perf_counter()
                os.stat(root / last)
                out[name] = (time.perf_counter() - start) * 1000
            drop_caches()
            out["cat_all_s"] = timed(["sh", "-c", "find . -type f -print0 | xargs -0 cat"],
                                     cwd=mnt)
            out["daemon_rss_cat"] = measure.tree_rss(daemon) if daemon else None
        finally:
            subprocess.run([self.c3fs, "umount", str(mnt)], env={**os.environ, **self.env},
                           capture_output=True)
            measure.unmount(mnt)
        return out

    def many_jobs(self, jobs: int) -> dict:
        """A store of `jobs` refs; `ls -l /jobs/` from an empty index, then warm."""
        empty = self.work / "empty"
        empty.mkdir(exist_ok=True)
        measure.run(self.cmd("push", str(empty), "-p", "scale", "-j", "seed"))
        start = time.perf_counter()
        measure.run(Command([sys.executable, "-m", "bench.scale", "--write-refs", str(jobs)],
                            env=self.env, cwd=BENCH.parent))
        out = {"jobs": jobs, "write_refs_s": time.perf_counter() - start}
        measure.discard(self.work / "cache")
        cold = run_timed(self.cmd("ls", "-l", "/jobs/"))  # lists every ref: stores a snapshot
        warm = run_timed(self.cmd("ls", "-l", "/jobs/"))
        out.update(ls_jobs_new_machine_s=cold.seconds, ls_jobs_new_machine_rss=cold.peak_rss,
                   ls_jobs_warm_s=warm.seconds, ls_jobs_warm_rss=warm.peak_rss)
        out["ls_jobs_limit_s"] = run_timed(self.cmd("ls", "-l", "/jobs/", "--limit", "20")).seconds
        out["ls_jobs_project_s"] = run_timed(self.cmd("ls", "-l", "/projects/p3/jobs/",
                                                      "--since", "1d")).seconds
        measure.discard(self.work / "cache")  # another new machine: the ref snapshot
        snap = run_timed(self.cmd("ls", "-l", "/jobs/", "--limit", "20"))
        out.update(ls_jobs_snapshot_s=snap.seconds, ls_jobs_snapshot_rss=snap.peak_rss)
        return out


def daemon_cpu(pid: int | None) -> float:
    """User + system CPU seconds the daemon has used so far (0 if unknown)."""
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def timed(argv: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def write_refs(jobs: int) -> None:
    """Job records 0..jobs-1 naming the seed job's root, written through the store API."""
    from c3fs.objects.job import JobRecord
    from c3fs.repo import Repo

    repo = Repo.open()
    seed = repo.record("job", "seed")
    for n in range(jobs):
        record = JobRecord(id=f"job{n:07d}", project=f"p{n % 10}", created=seed.created + n,
                           root=seed.root)
        repo.store.create_ref(record)
    repo.close()


def table(rows: list[dict], jobs: dict | None) -> str:
    mib = 1024 * 1024
    lines = ["| files | push s (RSS MiB) | native cp -r s | find cold s (native) | ls -lR s "
             "(native) | stat last ms (native) | daemon MiB after find / cat | cat all s | "
             "c3fs cp -r s (RSS MiB) | c3fs ls flat s (native) | daemon CPU s in find / ls -lR |",
             "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['files']:,} | {r['push_s']:.1f} ({r['push_rss'] / mib:.0f}) | "
            f"{r['native_cp_s']:.1f} | {r['find_s']:.2f} ({r['native_find_s']:.2f}) | "
            f"{r['ls_lr_s']:.2f} ({r['native_ls_lr_s']:.2f}) | "
            f"{r['stat_last_ms']:.2f} ({r['native_stat_last_ms']:.2f}) | "
            f"{(r['daemon_rss_find'] or 0) / mib:.0f} / {(r['daemon_rss_cat'] or 0) / mib:.0f} | "
            f"{r['cat_all_s']:.1f} | {r['cp_s']:.1f} ({r['cp_rss'] / mib:.0f}) | "
            f"{r['ls_flat_s']:.2f} ({r['native_ls_flat_s']:.3f}) | "
            f"{r.get('find_daemon_cpu_s', 0):.2f} / {r.get('ls_lr_daemon_cpu_s', 0):.2f} |")
    if jobs:
        lines += ["", f"{jobs['jobs']:,} job refs: `c3fs ls -l /jobs/` on a new machine "
                  f"{jobs['ls_jobs_new_machine_s']:.1f} s ({jobs['ls_jobs_new_machine_rss'] / mib:.0f} "
                  f"MiB), warm {jobs['ls_jobs_warm_s']:.2f} s ({jobs['ls_jobs_warm_rss'] / mib:.0f} MiB); "
                  f"warm with `--limit 20` {jobs.get('ls_jobs_limit_s', 0):.2f} s, "
                  f"`/projects/p3/jobs/ --since 1d` {jobs.get('ls_jobs_project_s', 0):.2f} s; "
                  f"a new machine from the ref snapshot (`--limit 20`) "
                  f"{jobs.get('ls_jobs_snapshot_s', 0):.2f} s "
                  f"({jobs.get('ls_jobs_snapshot_rss', 0) / mib:.0f} MiB)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", default="10000,100000",
                        help="comma list of dataset sizes (default 10000,100000; the issue's "
                             "full run: 10000,100000,1000000)")
    parser.add_argument("--jobs", type=int, default=0, help="also measure a store of J job refs")
    parser.add_argument("--delete", action="store_true", help="delete the datasets afterwards")
    parser.add_argument("--data", type=Path, default=BENCH / "data",
                        help="where datasets are made and kept (default bench/data)")
    parser.add_argument("--work", type=Path, default=BENCH / "work",
                        help="where stores and copies go during the run (default bench/work)")
    parser.add_argument("--generate-only", action="store_true",
                        help="only make the datasets (then measure later)")
    parser.add_argument("--write-refs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_refs is not None:
        write_refs(args.write_refs)
        return 0
    rows: list[dict] = []
    for files in (int(n) for n in args.files.split(",")):
        data = args.data / f"scale-{files}"
        src = generate(data, files)
        if args.generate_only:
            continue
        work = measure.fresh_dir(args.work / f"scale-{files}")
        rows.append(Scale(work).measure(src, files))
        print(table(rows[-1:], None), flush=True)
        measure.discard(work)
        if args.delete:
            measure.discard(data)
    if args.generate_only:
        return 0
    jobs = None
    if args.jobs:
        jobs = Scale(measure.fresh_dir(args.work / "scale-jobs")).many_jobs(args.jobs)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = BENCH / "results"
    (results / f"scale-{stamp}.json").write_text(json.dumps({"rows": rows, "jobs": jobs}, indent=1))
    (results / f"scale-{stamp}.md").write_text(table(rows, jobs))
    print(table(rows, jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
