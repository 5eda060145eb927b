"""`python -m bench remote`: c3fs on shared object storage at network speed, beside its peers.

The rig: an S3 server process on loopback (`s3rver` 3.7.1 from bench/s3rver/, `make
bench-peers`; moto's server is only measured for its ranged GET cost) behind our
latency-injecting proxy (bench/proxy.py: `--delay-ms` added to every request, 20 by default,
optional `--mbps` cap). Every tool reads through the proxy, which counts the requests; data is
put in place directly (not timed). Each tool stores the bench job the way its users would:
c3fs pushes it into bucket `c3fs`; rclone, s3fs and boto3 get one object per file in buckets
of their own. Every repeat is a fresh machine: empty c3fs cache directory (index and block
cache, C3FS_CACHE_DIR), empty rclone cache, new mounts, page cache dropped.

Per tool and repeat: mount to first byte, `ls -lR`, the checkpoints cold then again (page
cache), the small files cold, requests per GiB read (at the proxy) and daemon peak RSS; then a
pull of the whole job (c3fs pull; boto3 download-first); for c3fs, learned prefetch: machine 1
reads the small files in a random order, machine 2 in the same order, replaying machine 1's
access trace. `c3fs-serial` is c3fs with fetching ahead off (C3FS_READ_WINDOW=0), the A side
of an A/B in the same run. The rig's limit is the checkpoints
fetched by obstore with parallel 8 MiB ranged GETs (8, 16 and 32 in flight; the best).
Results: bench/results/remote-<timestamp>.{json,md}.

    python -m bench remote                                   # quick scale, 20 ms, 3 repeats
    python -m bench remote --small-files 1000 --tools c3fs,rclone-off,boto3
    python -m bench remote --delay-ms 50 --mbps 100 --repeat 5
    python -m bench remote --small-files 1000 --tools c3fs,c3fs-serial,c3fs-local
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import dataset, measure
from bench.c3fs_tool import C3fs
from bench.measure import Command, StepFailed, drop_caches, fresh_dir, run, summarize
from bench.proxy import HOST, Proxy, free_port, stop_process

BENCH = Path(__file__).resolve().parent
S3RVER = BENCH / "s3rver" / "node_modules" / "s3rver" / "bin" / "s3rver.js"
KEY = "S3RVER"
MB, GiB = 1e6, float(1 << 30)
PART = 8 << 20
TOOLS = ("c3fs", "c3fs-local", "rclone-off", "rclone-full", "s3fs", "boto3")
# c3fs-serial: c3fs with fetching ahead in merged ranged GETs off (C3FS_READ_WINDOW=0), the
# A side of an A/B of that change in the same run (`--tools c3fs,c3fs-serial`)
VARIANTS = {"c3fs-serial": {"C3FS_READ_WINDOW": "0"}}


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": KEY, "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
            "AWS_ALLOW_HTTP": "true", "AWS_EC2_METADATA_DISABLED": "true"}


def client(endpoint: str, pool: int = 32):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY,
                        aws_secret_access_key=KEY, region_name="us-east-1",
                        config=Config(max_pool_connections=pool))


# the servers --------------------------------------------------------------------------------------
class S3rver:
    """`s3rver` (node) on a free loopback port, data under `work`; stopped by its PID."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.work = work
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        return None if S3RVER.exists() else f"{S3RVER} missing (make bench-peers)"

    def start(self, timeout: float = 30.0) -> S3rver:
        data = fresh_dir(self.work / "data")
        with open(self.work / "s3rver.log", "wb") as log:
            self.proc = subprocess.Popen(
                ["node", str(S3RVER), "-d", str(data), "-a", HOST, "-p", str(self.port),
                 "--silent", "--allow-mismatched-signatures", "--no-vhost-buckets"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # its continuation tokens use a cipher OpenSSL 3 keeps in the legacy
                # provider: without it every listing of over 1,000 keys answers 500
                env={**os.environ, "NODE_OPTIONS": "--openssl-legacy-provider"})
        deadline = time.monotonic() + timeout
        while not _answers(self.endpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise StepFailed(f"s3rver did not start; see {self.work / 's3rver.log'}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, 10)


def _answers(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=1).close()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def ranged_get_ms(endpoint: str, size: int = 64 << 20, tries: int = 7) -> dict:
    """Median [min-max] ms of a 1 MiB ranged GET from the middle of a `size` object (no proxy)."""
    s3 = client(endpoint)
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket="rangecost")
    s3.put_object(Bucket="rangecost", Key="big", Body=os.urandom(size))
    times = []
    for _ in range(tries):
        start = time.perf_counter()
        s3.get_object(Bucket="rangecost", Key="big",
                      Range=f"bytes={size // 2}-{size // 2 + (1 << 20) - 1}")["Body"].read()
        times.append((time.perf_counter() - start) * 1000)
    return summarize(times)


def moto_ranged_get_ms(work: Path) -> dict:
    from bench.s3 import MotoServer

    server = MotoServer(work / "moto.log")
    server.start()
    try:
        return ranged_get_ms(server.endpoint)
    finally:
        server.stop()


# putting the data in place ------------------------------------------------------------------------
def upload_files(endpoint: str, bucket: str, root: Path, names: list[str],
                 markers: bool = False) -> None:
    """One object per file; with `markers`, an empty `dir/` object for every directory too.

    The markers work around an s3rver 3.7.1 bug: a delimiter listing omits a common prefix
    that holds no object directly, only deeper ones (`metrics/` over `metrics/run_00/x`), so
    rclone sees no `metrics/` at all. Buckets made by s3fs or a console hold such markers."""
    s3 = client(endpoint)
    s3.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: s3.upload_file(str(root / n), bucket, n), names))
    if markers:
        dirs = {str(parent) + "/" for n in names for parent in Path(n).parents if parent != Path(".")}
        for key in sorted(dirs):
            s3.put_object(Bucket=bucket, Key=key, Body=b"")


# the rig's limit ----------------------------------------------------------------------------------
def rig_limit(endpoint: str, bucket: str, names: list[str], sizes: dict[str, int],
              in_flight: int) -> float:
    """Seconds for obstore to fetch `names` in PART-sized ranged GETs, `in_flight` at a time."""
    import obstore
    from obstore.store import S3Store

    store = S3Store(bucket, endpoint=endpoint, access_key_id=KEY, secret_access_key=KEY,
                    region="us-east-1", client_options={"allow_http": True,
                                                        "pool_max_idle_per_host": "64"})
    ranges = [(n, start, min(start + PART, sizes[n])) for n in names
              for start in range(0, sizes[n], PART)]

    async def fetch() -> None:
        gate = asyncio.Semaphore(in_flight)

        async def one(name: str, start: int, end: int) -> None:
            async with gate:
                data = await obstore.get_range_async(store, name, start=start, end=end)
                assert len(data) == end - start

        await asyncio.gather(*(one(*r) for r in ranges))

    started = time.perf_counter()
    asyncio.run(fetch())
    return time.perf_counter() - started


# the mounts ---------------------------------------------------------------------------------------
class Rig:
    def __init__(self, work: Path, manifest: dataset.Manifest, server: S3rver, proxy: Proxy) -> None:
        self.work, self.manifest, self.server, self.proxy = work, manifest, server, proxy
        self.src = manifest.path("v1")
        self.files = manifest.files()
        self.checkpoints = list(manifest.checkpoints)
        self.small = [f for f in self.files if f.startswith(("metrics/", "logs/"))]
        self.ckpt_bytes = sum((self.src / c).stat().st_size for c in self.checkpoints)
        self.small_bytes = sum((self.src / f).stat().st_size for f in self.small)
        self.c3fs_job = ""

    def prepare(self, log: Callable[[str], None]) -> None:
        for bucket in ("rclone", "s3fs", "boto3"):
            log(f"uploading {len(self.files)} files to bucket {bucket}")
            upload_files(self.server.endpoint, bucket, self.src, self.files,
                         markers=bucket != "boto3")
        client(self.server.endpoint).create_bucket(Bucket="c3fs")
        tool = self.c3fs_tool(self.work / "c3fs-push", direct=True)
        log("c3fs push into bucket c3fs")
        run(tool.ingest(self.src, "v1"))
        self.c3fs_job = tool.job_id("v1")
        log("c3fs push into a local store (the c3fs-local baseline)")
        run(self.c3fs_tool(self.work / "c3fs-local-push", local=True).ingest(self.src, "v1"))

    def c3fs_tool(self, work: Path, direct: bool = False, local: bool = False,
                  variant: str = "c3fs") -> C3fs:
        """c3fs on a fresh machine (empty cache directory: index and block cache); `local`:
        on a store on this machine's disk instead of the bucket; `variant`: see VARIANTS."""
        endpoint = self.server.endpoint if direct else self.proxy.endpoint
        env = {**s3_env(endpoint), "C3FS_CACHE_DIR": str(fresh_dir(work / "cache")),
               **VARIANTS.get(variant, {})}
        store = str(self.work / "local-store") if local else "s3://c3fs/bench"
        tool = C3fs(work / "tool", store=store, extra_env=env)
        tool.setup()
        if self.c3fs_job:
            tool.jobs["v1"] = self.c3fs_job
        return tool

    @contextlib.contextmanager
    def mount(self, name: str, work: Path) -> Iterator[measure.Mount]:
        mnt = work / "mnt"
        mnt.mkdir(parents=True, exist_ok=True)
        if name.startswith("c3fs"):
            tool = self.c3fs_tool(work, local=name == "c3fs-local", variant=name)
            with tool.mount("v1", mnt) as mounted:
                daemon = mounted.pid()
                yield mounted
            # the daemon stores its access trace after the unmount: the next step (a
            # clear_traces, the next machine) must not race it
            measure.wait_exited(daemon)
            return
        if name.startswith("rclone"):
            mode = name.split("-")[1]
            env = {"RCLONE_CONFIG_RIG_TYPE": "s3", "RCLONE_CONFIG_RIG_PROVIDER": "Other",
                   "RCLONE_CONFIG_RIG_ENDPOINT": self.proxy.endpoint,
                   "RCLONE_CONFIG_RIG_ACCESS_KEY_ID": KEY,
                   "RCLONE_CONFIG_RIG_SECRET_ACCESS_KEY": KEY,
                   "RCLONE_CONFIG_RIG_FORCE_PATH_STYLE": "true",
                   "AWS_CA_BUNDLE": ""}  # a CA bundle in the caller's environment breaks it
            cmd = Command(["rclone", "mount", "rig:rclone", str(mnt), "--vfs-cache-mode", mode,
                           "--cache-dir", str(fresh_dir(work / "rclone-cache")),
                           "--config", "/dev/null", "--read-only"], env=env)
        else:
            passwd = work / "passwd-s3fs"
            passwd.write_text(f"{KEY}:{KEY}\n")
            passwd.chmod(0o600)
            cmd = Command(["s3fs", "s3fs", str(mnt), "-f", "-o", f"url={self.proxy.endpoint}",
                           "-o", "use_path_request_style", "-o", f"passwd_file={passwd}",
                           "-o", "ro"])
        with measure.foreground_mount(cmd, mnt) as mounted:
            yield mounted

    def clear_traces(self) -> None:
        """Remove c3fs's access traces of the job: the next mount is one of a job nobody read
        before (cold), not one that replays an earlier repeat's reads."""
        s3 = client(self.server.endpoint)
        listed = s3.list_objects_v2(Bucket="c3fs", Prefix="bench/traces/").get("Contents", [])
        for obj in listed:
            s3.delete_object(Bucket="c3fs", Key=obj["Key"])

    def trace_replay(self, name: str, rep: int) -> dict[str, float]:
        """Learned prefetch: machine 1 reads the small files in a random order (a mount of a
        job never read before: it records its trace); machine 2, fresh, mounts the job and
        reads them in the same order (its mount replays machine 1's trace)."""
        order = random.Random(rep).sample(self.small, len(self.small))
        out = {}
        self.clear_traces()
        for machine in ("first", "second"):
            work = fresh_dir(self.work / f"{name}-{rep}-trace-{machine}")
            drop_caches()
            with self.mount(name, work) as mounted:
                before = self.proxy.requests()
                out[f"random_{machine}_s"] = measure.cat_files(mounted.mountpoint, order)
                out[f"random_{machine}_requests"] = self.proxy.requests() - before
        out["random_speedup"] = out["random_first_s"] / out["random_second_s"]
        return out

    def one_repeat(self, name: str, rep: int, log: Callable[[str], None]) -> dict[str, float]:
        """Two fresh machines: one times mount to first byte (of the first small file), the
        other lists the job, reads the small files, then the checkpoints twice."""
        out: dict[str, float] = {}
        if name.startswith("c3fs"):
            self.clear_traces()
        work = fresh_dir(self.work / f"{name}-{rep}-first-byte")
        drop_caches()
        with self.mount(name, work) as mounted:
            out["first_byte_s"] = measure.wait_first_byte(mounted.mountpoint / self.small[0],
                                                          mounted.started)
        work = fresh_dir(self.work / f"{name}-{rep}")
        if name.startswith("c3fs"):
            self.clear_traces()
        drop_caches()
        before_mount = self.proxy.requests()
        with self.mount(name, work) as mounted:
            mnt = mounted.mountpoint
            out["mount_requests"] = self.proxy.requests() - before_mount
            with mounted.poller() as rss:
                before = self.proxy.requests()
                out["ls_lr_s"] = measure.ls_lr(mnt)
                drop_caches()
                small_from = self.proxy.requests()
                out["small_cold_s"] = measure.cat_files(mnt, self.small)
                read_from = self.proxy.requests()
                drop_caches()
                out["ckpt_cold_mb_s"] = self.ckpt_bytes / measure.cat_files(mnt, self.checkpoints) / MB
                ckpt_to = self.proxy.requests()
                out["ckpt_second_mb_s"] = (self.ckpt_bytes / measure.cat_files(mnt, self.checkpoints)
                                           / MB)
            out["ls_requests"] = small_from - before
            out["small_requests_per_file"] = (read_from - small_from) / len(self.small)
            out["ckpt_requests_per_gib"] = (ckpt_to - read_from) / (self.ckpt_bytes / GiB)
            out["requests_per_gib"] = (ckpt_to - small_from) / ((self.ckpt_bytes + self.small_bytes)
                                                                / GiB)
            out["daemon_rss_mib"] = rss.peak / (1 << 20) if hasattr(rss, "peak") else float("nan")
        if name.startswith("c3fs"):
            out.update(self.c3fs_pull(work, local=name == "c3fs-local", variant=name))
        if name in ("c3fs", "c3fs-serial"):
            out.update(self.trace_replay(name, rep))
        return out

    def timed_pull(self, cmd: Command) -> dict[str, float]:
        """Seconds, CPU seconds and peak RSS of a pull, the RSS polled: measure.run_timed's
        also takes the child's ru_maxrss, which on Linux includes the harness's own RSS,
        copied at fork. CPU: user + system of the children reaped meanwhile (the pull alone:
        the server and the proxy run on until the end)."""
        before = self.proxy.requests()
        drop_caches()
        rig_used = self.rig_cpu()
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd.argv, cwd=cmd.cwd, env={**os.environ, **(cmd.env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with measure.RssPoller(proc.pid) as rss:
            _, err = proc.communicate()
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - used.ru_utime - used.ru_stime
        rig_cpu = self.rig_cpu() - rig_used
        if proc.returncode != 0:
            raise StepFailed(f"{cmd.describe()} exited {proc.returncode}: {err.decode()[-300:]}")
        gib = self.manifest.bytes_v1 / GiB
        return {"pull_mb_s": self.manifest.bytes_v1 / seconds / MB,
                "pull_cpu_s_per_gb": cpu / (self.manifest.bytes_v1 / 1e9),
                "pull_rig_cpu_s_per_gb": rig_cpu / (self.manifest.bytes_v1 / 1e9),
                "pull_requests_per_gib": (self.proxy.requests() - before) / gib,
                "pull_rss_mib": rss.peak / (1 << 20)}

    def c3fs_pull(self, work: Path, local: bool, variant: str = "c3fs") -> dict[str, float]:
        tool = self.c3fs_tool(work / "pull", local=local, variant=variant)
        dest = fresh_dir(work / "pull-dest")
        return self.timed_pull(tool.restore("v1", dest))

    def boto3_pull(self, rep: int) -> dict[str, float]:
        work = fresh_dir(self.work / f"boto3-{rep}")
        listing = work / "files.txt"
        listing.write_text("\n".join(self.files) + "\n")
        return self.timed_pull(Command(
            [sys.executable, "-m", "bench.remote", "download", "--endpoint", self.proxy.endpoint,
             "--list", str(listing), "--dir", str(work / "dest")], cwd=BENCH.parent))

    def limit(self) -> dict[str, float]:
        """The rig's limit: 8, 16 and 32 GETs in flight, the page cache dropped before each,
        as before every c3fs read (a figure read from the server's page cache would be no
        limit for c3fs's cold reads; see bench/README.md)."""
        sizes = {c: (self.src / c).stat().st_size for c in self.checkpoints}
        out, cpu = {}, {}
        for in_flight in (8, 16, 32):
            drop_caches()
            rig_used, client_used = self.rig_cpu(), _self_cpu()
            seconds = rig_limit(self.proxy.endpoint, "boto3", self.checkpoints, sizes, in_flight)
            out[f"limit_{in_flight}_mb_s"] = self.ckpt_bytes / seconds / MB
            gb = self.ckpt_bytes / 1e9
            cpu[in_flight] = ((self.rig_cpu() - rig_used) / gb, (_self_cpu() - client_used) / gb)
        best = max((8, 16, 32), key=lambda n: out[f"limit_{n}_mb_s"])
        out["limit_mb_s"] = out[f"limit_{best}_mb_s"]
        # what the server and the proxy spend per GB, on the same 2 cores as every client
        out["limit_rig_cpu_s_per_gb"], out["limit_client_cpu_s_per_gb"] = cpu[best]
        return out

    def rig_cpu(self) -> float:
        """User + system CPU seconds the S3 server and the proxy have used so far."""
        import psutil

        total = 0.0
        for proc in (self.server.proc, self.proxy.proc):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(psutil.Error):
                    times = psutil.Process(proc.pid).cpu_times()
                    total += times.user + times.system
        return total


def _self_cpu() -> float:
    """User + system CPU seconds of this process (the harness fetching the rig's limit)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


# running it ---------------------------------------------------------------------------------------
def _available(name: str) -> str | None:
    binary = {"rclone-off": "rclone", "rclone-full": "rclone", "s3fs": "s3fs"}.get(name)
    if binary and not any((Path(p) / binary).exists() for p in os.environ["PATH"].split(":")):
        return f"{binary} not installed (make bench-peers)"
    return None


def measure_all(rig: Rig, tools: list[str], repeats: int, log) -> dict:
    raw: dict = {t: {"values": {}, "notes": []} for t in [*tools, "rig"]}

    def add(tool: str, values: dict[str, float]) -> None:
        log(f"    {tool}: " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()))
        for key, value in values.items():
            raw[tool]["values"].setdefault(key, []).append(value)

    for rep in range(1, repeats + 1):
        log(f"[repeat {rep}] rig limit")
        add("rig", rig.limit())
        for tool in tools:
            log(f"[repeat {rep}] {tool}")
            try:
                add(tool, rig.boto3_pull(rep) if tool == "boto3" else rig.one_repeat(tool, rep, log))
            except (StepFailed, OSError) as exc:
                raw[tool]["notes"].append(f"repeat {rep}: {exc}")
                log(f"    {tool} FAILED: {exc}")
    return raw


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench remote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.25, help="dataset scale (default 0.25)")
    parser.add_argument("--small-files", type=int, default=None,
                        help="number of small files (default 10,000 × scale)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added per request")
    parser.add_argument("--mbps", type=float, default=None, help="bandwidth cap, MB/s")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma list of {TOOLS + tuple(VARIANTS)}")
    parser.add_argument("--no-moto", action="store_true", help="skip moto's ranged GET cost")
    parser.add_argument("--keep-work", action="store_true", help="keep bench/work/remote/")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops what started
    if problem := S3rver.missing():
        print(problem, file=sys.stderr)
        return 2
    small = args.small_files if args.small_files is not None else max(10, round(10_000 * args.scale))
    manifest = dataset.generate(dataset.Params(scale=args.scale, small_files=small))
    work = BENCH / "work" / "remote"
    measure.set_trash(None)
    fresh_dir(work)
    started = time.strftime("%Y%m%d-%H%M%S")

    def log(text: str) -> None:
        print(text, flush=True)

    from bench.proxy import ceiling

    result: dict = {"params": vars(args), "files": len(manifest.files()),
                    "bytes": manifest.bytes_v1, "small_files": small}
    result["proxy_ceiling"] = ceiling(work=work)
    log(f"proxy ceiling at 0 ms: {result['proxy_ceiling']}")
    server = S3rver(fresh_dir(work / "s3rver")).start()
    proxy = Proxy(server.port, work, delay_ms=args.delay_ms, mbps=args.mbps).start()
    try:
        result["ranged_get_ms"] = {"s3rver": ranged_get_ms(server.endpoint)}
        if not args.no_moto:
            result["ranged_get_ms"]["moto"] = moto_ranged_get_ms(work)
        log(f"1 MiB ranged GET of a 64 MiB object: {json.dumps(result['ranged_get_ms'])[:300]}")
        rig = Rig(work, manifest, server, proxy)
        rig.prepare(log)
        tools = [t for t in args.tools.split(",") if t]
        for tool in list(tools):
            if reason := _available(tool):
                log(f"skipping {tool}: {reason}")
                tools.remove(tool)
        raw = measure_all(rig, tools, args.repeat, log)
    finally:
        proxy.stop()
        server.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    result["raw"] = raw
    result["summary"] = {t: {k: summarize(v) for k, v in e["values"].items()} for t, e in raw.items()}
    out = BENCH / "results" / f"remote-{started}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    table = report(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return 0


# the table ----------------------------------------------------------------------------------------
ROWS = (("first_byte_s", "mount to first byte (s)", False),
        ("ls_lr_s", "ls -lR of the job (s)", False),
        ("ckpt_cold_mb_s", "checkpoints cold (MB/s)", True),
        ("ckpt_second_mb_s", "checkpoints second read (MB/s)", True),
        ("small_cold_s", "small files cold (s)", False),
        ("pull_mb_s", "pull / download-first (MB/s)", True),
        ("pull_cpu_s_per_gb", "pull / download-first, CPU-s per GB", False),
        ("pull_rig_cpu_s_per_gb", "the rig (server + proxy) during the pull, CPU-s per GB", False),
        ("small_requests_per_file", "requests per small file", False),
        ("ckpt_requests_per_gib", "requests per GiB, checkpoints", False),
        ("requests_per_gib", "requests per GiB read (mount)", False),
        ("mount_requests", "requests to mount", False),
        ("ls_requests", "requests for ls -lR", False),
        ("pull_requests_per_gib", "requests per GiB pulled", False),
        ("random_first_s", "small files, random order, 1st machine (s)", False),
        ("random_second_s", "same order, 2nd machine, trace replayed (s)", False),
        ("random_speedup", "learned prefetch: 1st / 2nd machine (×)", True),
        ("random_first_requests", "requests, random order, 1st machine", False),
        ("random_second_requests", "requests, same order, 2nd machine", False),
        ("daemon_rss_mib", "daemon peak RSS (MiB)", False),
        ("pull_rss_mib", "pull peak RSS (MiB)", False))


def _cell(summary: dict | None) -> str:
    if not summary:
        return "–"
    return f"{summary['median']:.3g} [{summary['min']:.3g}–{summary['max']:.3g}]"


def report(result: dict) -> str:
    summary = result["summary"]
    tools = [t for t in summary if t != "rig"]
    lines = ["| figure | " + " | ".join(tools) + " |", "|---" * (len(tools) + 1) + "|"]
    for key, label, _higher in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(summary[t].get(key)) for t in tools) + " |")
    limit = summary.get("rig", {}).get("limit_mb_s")
    lines += ["", f"Rig limit (obstore, {PART >> 20} MiB ranged GETs; best of 8/16/32 in flight): "
              f"{_cell(limit)} MB/s; " + ", ".join(
                  f"{n} in flight {_cell(summary['rig'].get(f'limit_{n}_mb_s'))}"
                  for n in (8, 16, 32))]
    rig_cpu = summary.get("rig", {}).get("limit_rig_cpu_s_per_gb")
    client_cpu = summary.get("rig", {}).get("limit_client_cpu_s_per_gb")
    if rig_cpu and client_cpu:  # (the rig shares the 2 cores with whatever reads through it)
        lines += ["", f"CPU per GB at the limit: the rig (s3rver + proxy) {_cell(rig_cpu)} CPU-s, "
                  f"obstore's client {_cell(client_cpu)} CPU-s"]
    lines += _ratios(summary, tools, limit)
    return "\n".join(lines) + "\n"


def _ratios(summary: dict, tools: list[str], limit: dict | None) -> list[str]:
    out = [""]
    c3fs = summary.get("c3fs", {})
    for key, label, higher in ROWS[:6]:
        mine = c3fs.get(key)
        if not mine:
            continue
        peers = [summary[t][key]["median"] for t in tools
                 if not t.startswith("c3fs") and key in summary[t]]
        parts = []
        if limit and key in ("ckpt_cold_mb_s", "pull_mb_s"):
            parts.append(f"{mine['median'] / limit['median']:.2f}× the rig's limit")
        if peers:
            best = max(peers) if higher else min(peers)
            ratio = mine["median"] / best if higher else best / mine["median"]
            parts.append(f"{ratio:.2f}× the best peer (>1: c3fs faster)")
        serial = summary.get("c3fs-serial", {}).get(key)
        if serial:
            ratio = mine["median"] / serial["median"] if higher else serial["median"] / mine["median"]
            parts.append(f"{ratio:.2f}× c3fs-serial (fetching ahead off, same run)")
        local = summary.get("c3fs-local", {}).get(key)
        if local:
            ratio = mine["median"] / local["median"] if higher else local["median"] / mine["median"]
            parts.append(f"{ratio:.2f}× c3fs on a local store")
        if parts:
            out.append(f"- c3fs {label}: " + "; ".join(parts))
    return out


# boto3 download-first, as a subprocess ----------------------------------------------------------
def _download(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote download")
    for flag in ("--endpoint", "--list", "--dir"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    s3, root = client(args.endpoint), Path(args.dir)
    names = [n for n in Path(args.list).read_text().splitlines() if n]

    def one(name: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file("boto3", name, str(root / name))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, names))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["download"]:
        sys.exit(_download(sys.argv[2:]))
    sys.exit(main())
