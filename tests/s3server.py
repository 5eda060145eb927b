"""A real S3-compatible server for tests: `moto_server` in a subprocess on a free port.

    server = MotoServer.launch()          # started, answering
    server.create_bucket("b")
    server.stop()                         # terminate (then kill) by PID; state is lost
    server.start()                        # again, same port, empty
    server.restart(keep_data=True)        # down and up again, buckets and objects restored
    server.pause() / server.resume()      # SIGSTOP / SIGCONT: a server that hangs, state kept
    server.require_auth()                 # reject unknown credentials (use a server of its own)

Readiness is polled (connect + HTTP answer), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class MotoServer:
    def __init__(self, port: int | None = None, log_dir: str | os.PathLike | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="moto-")) / f"moto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def launch(cls, port: int | None = None) -> MotoServer:
        server = cls(port)
        server.start()
        return server

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # lifecycle ----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start the server on `self.port` and return once it answers HTTP."""
        if self.running:
            return
        cmd = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited early; see {self.log_path}: {self._tail()}")
            if self._answers():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} in {timeout}s")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (OSError, urllib.error.URLError):
            return False

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the server by PID, then kill it if it does not exit in `timeout`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def restart(self, keep_data: bool = True) -> None:
        """Stop and start on the same port; with `keep_data`, restore buckets and objects."""
        snapshot = self.snapshot() if keep_data and self.running else {}
        self.stop()
        self.start()
        self.restore(snapshot)

    def require_auth(self) -> None:
        """From now on every request must be signed by a key moto's IAM knows (none yet)."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would hide the count
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    # data ---------------------------------------------------------------------------------
    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"max_attempts": 2}, connect_timeout=5, read_timeout=30),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def snapshot(self) -> dict[str, dict[str, bytes]]:
        """Every bucket's objects: {bucket: {key: bytes}} (test-sized data only)."""
        s3 = self.client()
        data: dict[str, dict[str, bytes]] = {}
        for bucket in s3.list_buckets().get("Buckets", []):
            name = bucket["Name"]
            data[name] = {}
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
                for obj in page.get("Contents", []):
                    body = s3.get_object(Bucket=name, Key=obj["Key"])["Body"].read()
                    data[name][obj["Key"]] = body
        return data

    def restore(self, snapshot: dict[str, dict[str, bytes]]) -> None:
        s3 = self.client()
        for name, objects in snapshot.items():
            s3.create_bucket(Bucket=name)
            for key, body in objects.items():
                s3.put_object(Bucket=name, Key=key, Body=body)

    def env(self) -> dict[str, str]:
        """The AWS environment variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }
