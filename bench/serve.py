"""`python -m bench.serve`: how fast `c3fs serve` answers, beside `c3fs cp`, in one run.

  - the job list of N jobs (default 10,000; the issue's target is ≤ 0.3 s): first page
    (newest first), sorted by size, filtered by status, and the last page; median of
    `--repeat` requests over one keep-alive connection after a warm-up request;
  - a download of one M MiB checkpoint (default 256, incompressible bytes) over HTTP,
    written to a file, against `c3fs cp` of the same file to a file on the same disk
    (target: HTTP ≥ 0.8 × cp). Both with the store in the page cache; cp's time includes
    starting its process, as a user sees it.

The store lives under bench/work/serve (removed afterwards unless --keep-work). Prints a
table and writes bench/results/serve-<time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.c3fs_tool import c3fs_binary

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    work = HERE / "work" / "serve"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = dict(os.environ, C3FS_STORE=str(work / "store"), C3FS_CACHE_DIR=str(work / "cache"))
    try:
        results = _measure(args, work, env)
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    out = HERE / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    _print(results)
    print(f"\nwritten: {out.relative_to(HERE.parent)}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--mib", type=int, default=256, help="size of the checkpoint")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep-work", action="store_true")
    return parser


def _measure(args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict:
    checkpoint = _make_store(work, env, args.jobs, args.mib)
    server, base = _serve(env)
    try:
        lists = {name: _list_latency(base, path, args.repeat) for name, path in (
            ("first page", "/jobs"), ("sorted by size", "/jobs?sort=size&order=desc"),
            ("status FAILED", "/jobs?status=FAILED"), ("last page", "/jobs?page=1000"))}
        http_s = [_http_download(base, checkpoint, work / "http.bin") for _ in range(args.repeat)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    cp_s = [_cp(env, checkpoint, work / "cp.bin") for _ in range(args.repeat)]
    size = args.mib * MiB
    http_rate, cp_rate = size / statistics.median(http_s) / MiB, size / statistics.median(cp_s) / MiB
    return {"jobs": args.jobs, "list_seconds": lists, "checkpoint_mib": args.mib,
            "http_seconds": http_s, "cp_seconds": cp_s, "http_mib_s": http_rate,
            "cp_mib_s": cp_rate, "ratio": http_rate / cp_rate, "cpus": os.cpu_count()}


def _make_store(work: Path, env: dict[str, str], jobs: int, mib: int) -> str:
    """One job with a `mib` MiB checkpoint, then `jobs` - 1 record-only jobs sharing its
    tree; returns the checkpoint's namespace path."""
    src = work / "src"
    src.mkdir()
    with open(src / "ckpt.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    subprocess.run([c3fs_binary(), "push", str(src), "-p", "bench", "-j", "job_ckpt"],
                   env=env, check=True, capture_output=True)
    code = ("import sys,time; from c3fs.repo import Repo; from c3fs.jobs.push import register\n"
            "from c3fs.objects.job import JobRecord, STATUSES\n"
            "repo = Repo.open(); like = repo.record('job', 'job_ckpt'); now = time.time()\n"
            "for i in range(int(sys.argv[1])):\n"
            "    s = STATUSES[i % 4]\n"
            "    register(repo, JobRecord(id=f'job_{i:06d}', project=f'p{i % 7}', status=s,"
            " reason='SCRIPT_ERROR' if s == 'FAILED' else '', created=now - i, ended=now - i,"
            " root=like.root, logical_bytes=i * 1000, files=i % 50, stored_delta=i))\n"
            "repo.close()\n")
    subprocess.run([sys.executable, "-c", code, str(jobs - 1)], env=env, check=True)
    return "/jobs/job_ckpt/ckpt.bin"


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([c3fs_binary(), "serve", "--bind", "127.0.0.1:0"], env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    line = proc.stderr.readline().decode()
    match = re.search(r"serving http://([\d.]+):(\d+)/", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"c3fs serve did not start: {line}")
    return proc, f"{match.group(1)}:{match.group(2)}"


def _list_latency(base: str, path: str, repeat: int) -> float:
    conn = http.client.HTTPConnection(base, timeout=60)
    times = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == 200, (path, response.status)
        if i:  # the first one warms up (index pages, code paths)
            times.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(times)


def _http_download(base: str, path: str, dest: Path) -> float:
    conn = http.client.HTTPConnection(base, timeout=120)
    start = time.perf_counter()
    conn.request("GET", "/raw" + path)
    response = conn.getresponse()
    with open(dest, "wb") as f:
        while block := response.read(MiB):
            f.write(block)
    elapsed = time.perf_counter() - start
    conn.close()
    dest.unlink()
    return elapsed


def _cp(env: dict[str, str], path: str, dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run([c3fs_binary(), "cp", path, str(dest)], env=env, check=True,
                   capture_output=True)
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def _print(r: dict) -> None:
    print(f"job list of {r['jobs']:,} jobs (median of the requests, seconds; target ≤ 0.3):")
    for name, seconds in r["list_seconds"].items():
        print(f"  {name:<16} {seconds:.3f}")
    print(f"{r['checkpoint_mib']} MiB checkpoint: HTTP {r['http_mib_s']:.0f} MiB/s, "
          f"c3fs cp {r['cp_mib_s']:.0f} MiB/s, ratio {r['ratio']:.2f} (target ≥ 0.8)")


if __name__ == "__main__":
    main()
