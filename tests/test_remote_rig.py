"""The remote bench's rig (bench/proxy.py): a latency-injecting proxy in front of a real S3
server process (moto here; `python -m bench remote` uses s3rver), started and stopped by PID.
It must add its delay to every request, count requests exactly, and carry c3fs's S3 traffic."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import MotoServer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.proxy import Proxy  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.s3]
DELAY_MS = 150


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MotoServer, Proxy]]:
    """moto, and the proxy in front of it adding DELAY_MS per request."""
    server = MotoServer.launch()
    proxy = Proxy(server.port, tmp_path_factory.mktemp("proxy"), delay_ms=DELAY_MS)
    try:
        proxy.start()
        yield server, proxy
    finally:
        proxy.stop()
        server.stop()


def _client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")


def test_proxy_counts_every_request_and_delays_each(rig) -> None:
    server, proxy = rig
    server.create_bucket("delayed")
    s3 = _client(proxy.endpoint)
    s3.put_object(Bucket="delayed", Key="k", Body=b"x" * 100_000)
    before = proxy.counts()
    start = time.perf_counter()
    for _ in range(5):
        assert s3.get_object(Bucket="delayed", Key="k", Range="bytes=0-9")["Body"].read() == b"x" * 10
    elapsed = time.perf_counter() - start
    after = proxy.counts()
    assert after["requests"] - before["requests"] == 5
    assert after.get("GET", 0) - before.get("GET", 0) == 5
    assert elapsed >= 5 * DELAY_MS / 1000  # a lower bound only: each request was held


def test_proxy_is_stopped_by_pid(tmp_path: Path, rig) -> None:
    server, _ = rig
    proxy = Proxy(server.port, tmp_path, delay_ms=0).start()
    pid = proxy.proc.pid
    proxy.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_c3fs_push_ls_cp_through_the_proxy(rig, tmp_path: Path) -> None:
    server, proxy = rig
    server.create_bucket("c3rig")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "C3FS_STORE": "s3://c3rig/p", "C3FS_CACHE_DIR": str(tmp_path / "cache")}
    c3fs = [str(Path(sys.executable).parent / "c3fs")]

    def run(*args: str) -> str:
        proc = subprocess.run([*c3fs, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    before = proxy.requests()
    run("push", str(src), "--project", "rig", "--job", "job_rig")
    assert proxy.requests() > before  # the push went through the proxy
    listing = run("ls", "/jobs/job_rig")
    assert "a.txt" in listing and "sub" in listing
    env["C3FS_CACHE_DIR"] = str(tmp_path / "cache2")  # a fresh machine: nothing cached
    before = proxy.requests()
    run("cp", "-r", "/jobs/job_rig", str(tmp_path / "out"))
    assert proxy.requests() > before
    assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"
    assert (tmp_path / "out" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()


def test_proxy_caps_bandwidth(rig, tmp_path: Path) -> None:
    server, _ = rig
    server.create_bucket("capped")
    _client(server.endpoint).put_object(Bucket="capped", Key="k", Body=os.urandom(2_000_000))
    proxy = Proxy(server.port, tmp_path, delay_ms=0, mbps=4).start()
    try:
        start = time.perf_counter()
        body = _client(proxy.endpoint).get_object(Bucket="capped", Key="k")["Body"].read()
        elapsed = time.perf_counter() - start
    finally:
        proxy.stop()
    assert len(body) == 2_000_000
    assert elapsed >= 0.45  # 2 MB at 4 MB/s: a lower bound only
