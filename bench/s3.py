"""S3 figures against a local moto server: c3fs push/pull vs boto3, one object per file.

The server is our own `moto.server` subprocess on a free port, stopped by its PID. Requests are
counted from its access log (one line per HTTP request), objects by listing the prefix. The
boto3 baseline runs in a subprocess (`python -m bench.s3 upload|download ...`, 8 files at a
time, boto3's default multipart settings) so its RSS is measured like every other tool's.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.c3fs_tool import C3fs
from bench.dataset import Manifest
from bench.measure import Command, StepFailed, discard, drop_caches, fresh_dir, run_timed
from bench.peers import locate

HOST, BUCKET, WORKERS = "127.0.0.1", "bench", 8
MB, MiB, GiB = 1e6, float(1 << 20), float(1 << 30)
_REQUEST = re.compile(rb'"(GET|PUT|POST|HEAD|DELETE) ')


def aws_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true"}


def client(endpoint: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1",
                        config=Config(max_pool_connections=2 * WORKERS))


class MotoServer:
    def __init__(self, log_path: Path) -> None:
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", HOST, "-p",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise StepFailed(f"moto server did not start; see {self.log_path}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests(self) -> int:
        return len(_REQUEST.findall(self.log_path.read_bytes()))


def count_objects(s3, prefix: str) -> int:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sum(page.get("KeyCount", 0) for page in pages)


def delete_prefix(s3, prefix: str) -> None:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    for page in pages:
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})


# one repeat -----------------------------------------------------------------------------------------
def _boto3_repeat(server: MotoServer, manifest: Manifest, rep: int, work: Path) -> dict[str, float]:
    s3, prefix, src = client(server.endpoint), f"boto3-{rep}/", manifest.path("v1")
    listing = work / "files.txt"
    listing.write_text("\n".join(manifest.files()) + "\n")
    base = [sys.executable, "-m", "bench.s3"]
    common = ["--endpoint", server.endpoint, "--prefix", prefix, "--list", str(listing)]
    before = server.requests()
    drop_caches()
    push = run_timed(Command([*base, "upload", *common, "--dir", str(src)], cwd=_repo_root()))
    values = _push_values(push, server.requests() - before, count_objects(s3, prefix), manifest)
    dest = fresh_dir(work / "restore")
    pull = run_timed(Command([*base, "download", *common, "--dir", str(dest)], cwd=_repo_root()))
    _verify(dest, manifest)
    values["s3_pull"] = manifest.bytes_v1 / pull.seconds / MB
    discard(dest)
    delete_prefix(s3, prefix)
    return values


def _c3fs_repeat(server: MotoServer, manifest: Manifest, rep: int, work: Path) -> dict[str, float]:
    s3, prefix = client(server.endpoint), f"c3fs-{rep}"
    tool = C3fs(work / "c3fs", store=f"s3://{BUCKET}/{prefix}", extra_env=aws_env(server.endpoint))
    tool.setup()
    before = server.requests()
    drop_caches()
    push = run_timed(tool.ingest(manifest.path("v1"), "v1"))
    values = _push_values(push, server.requests() - before, count_objects(s3, prefix + "/"), manifest)
    dest = fresh_dir(work / "restore")
    drop_caches()
    pull = run_timed(tool.restore("v1", dest))
    _verify(dest, manifest)
    values["s3_pull"] = manifest.bytes_v1 / pull.seconds / MB
    discard(work)
    delete_prefix(s3, prefix + "/")
    return values


def _push_values(push, requests: int, objects: int, manifest: Manifest) -> dict[str, float]:
    gib = manifest.bytes_v1 / GiB
    return {"s3_push": manifest.bytes_v1 / push.seconds / MB, "s3_push_rss": push.peak_rss / MiB,
            "s3_requests_per_gib": requests / gib, "s3_objects_per_gib": objects / gib}


def _verify(dest: Path, manifest: Manifest) -> None:
    root = locate(dest, manifest.checkpoints[0])
    if root is None or (root / manifest.checkpoints[-1]).stat().st_size != (
            manifest.path("v1") / manifest.checkpoints[-1]).stat().st_size:
        raise StepFailed(f"download into {dest} is incomplete")


def _repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def measure(manifest: Manifest, repeats: int, work: Path, skip_c3fs: bool, log) -> dict:
    """{tool: {"values": {metric: [per repeat]}, "notes": [...]}} for boto3 and c3fs on S3."""
    fresh_dir(work)
    server = MotoServer(work / "moto.log")
    raw = {"boto3": {"values": {}, "notes": []}}
    if not skip_c3fs:
        raw["c3fs"] = {"values": {}, "notes": []}
    try:
        server.start()
        client(server.endpoint).create_bucket(Bucket=BUCKET)
        log(f"moto server pid {server.proc.pid} at {server.endpoint}")
        for rep in range(1, repeats + 1):
            for name, step in (("boto3", _boto3_repeat), ("c3fs", _c3fs_repeat)):
                if name in raw:
                    _one(raw[name], name, step, server, manifest, rep, work / name, log)
    except StepFailed as exc:
        raw["boto3"]["notes"].append(f"S3 measurements stopped: {exc}")
    finally:
        server.stop()
    return raw


def _one(entry: dict, name: str, step, server, manifest, rep, work, log) -> None:
    log(f"[S3 repeat {rep}] {name}")
    try:
        fresh_dir(work)
        values = step(server, manifest, rep, work)
    except (StepFailed, OSError, KeyError, ValueError) as exc:
        entry["notes"].append(f"S3 repeat {rep}: {exc}")
        log(f"    {name} on S3 FAILED: {exc}")
        return
    log("    " + ", ".join(f"{k}={v:.3g}" for k, v in values.items()))
    for key, value in values.items():
        entry["values"].setdefault(key, []).append(value)


# the boto3 baseline, run as a subprocess --------------------------------------------------------
def _transfer(args: argparse.Namespace) -> None:
    s3 = client(args.endpoint)
    names = [n for n in Path(args.list).read_text().splitlines() if n]
    root = Path(args.dir)

    def upload(name: str) -> None:
        s3.upload_file(str(root / name), BUCKET, args.prefix + name)

    def download(name: str) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, args.prefix + name, str(root / name))

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(upload if args.action == "upload" else download, names))


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3")
    parser.add_argument("action", choices=("upload", "download"))
    for flag in ("--endpoint", "--prefix", "--list", "--dir"):
        parser.add_argument(flag, required=True)
    _transfer(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    sys.exit(_main())
