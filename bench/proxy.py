"""A latency-injecting TCP proxy: a round trip added to every HTTP request, optional bandwidth cap.

This kernel has no `sch_netem`, so the network is made here: `python -m bench.proxy` listens
on loopback and forwards each connection to an upstream S3 server. When a client starts a new
HTTP request on a connection (a chunk that begins with a method, after the previous response
began), the proxy counts it and holds it for `--delay-ms` before forwarding, so every request
costs one added round trip, whatever the client's concurrency (each connection waits on its
own). `--mbps` caps the bytes sent back to the clients, all connections together (a shared
link). `--spike-ms S --spike-rate R`: a fraction R of requests is held S ms longer (latency
spikes, as netem's jitter would make). Counters (requests by method, bytes each way, connections) are written as JSON to
`--stats` after every request and when a connection closes.

    python -m bench.proxy --upstream 127.0.0.1:9000 --port 9100 --delay-ms 20 --stats s.json
    python -m bench.proxy --ceiling          # the proxy's own MB/s at 0 ms, vs direct

`Proxy` runs it as a subprocess, stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
CHUNK = 1 << 18
_METHOD = re.compile(rb"^(GET|PUT|POST|HEAD|DELETE|OPTIONS|PATCH) \S+ HTTP/1\.[01]\r\n")


class Link:
    """The shared state: the added delay, the bandwidth cap and the counters."""

    def __init__(self, delay: float, mbps: float | None, stats: Path | None,
                 spike: float = 0.0, spike_rate: float = 0.0, seed: int = 1) -> None:
        self.delay, self.stats = delay, stats
        self.spike, self.spike_rate = spike, spike_rate  # latency spikes: this often, this long
        self.random = random.Random(seed)
        self.bytes_per_s = mbps * 1e6 if mbps else None
        self.next_free = 0.0
        self.counts: dict[str, int] = {"requests": 0, "bytes_up": 0, "bytes_down": 0,
                                       "connections": 0}

    async def throttle(self, size: int) -> None:
        if not self.bytes_per_s:
            return
        now = time.monotonic()
        start = max(now, self.next_free)
        self.next_free = start + size / self.bytes_per_s
        await asyncio.sleep(self.next_free - now)

    def hold(self) -> float:
        """Seconds to hold the next request: the delay, plus a spike now and then."""
        spiking = self.spike_rate and self.random.random() < self.spike_rate
        if spiking:
            self.counts["spikes"] = self.counts.get("spikes", 0) + 1
        return self.delay + (self.spike if spiking else 0.0)

    def count_request(self, method: str) -> None:
        self.counts["requests"] += 1
        self.counts[method] = self.counts.get(method, 0) + 1
        self.write_stats()

    def write_stats(self) -> None:
        if self.stats is None:
            return
        tmp = self.stats.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.counts))
        os.replace(tmp, self.stats)


class Connection:
    def __init__(self, link: Link, reader, writer, up_reader, up_writer) -> None:
        self.link = link
        self.client = (reader, writer)
        self.upstream = (up_reader, up_writer)
        self.awaiting_request = True

    async def client_to_server(self) -> None:
        reader, (_, writer) = self.client[0], self.upstream
        while data := await reader.read(CHUNK):
            if self.awaiting_request and (match := _METHOD.match(data)):
                self.awaiting_request = False
                self.link.count_request(match.group(1).decode())
                if hold := self.link.hold():
                    await asyncio.sleep(hold)
            self.link.counts["bytes_up"] += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def server_to_client(self) -> None:
        reader, (_, writer) = self.upstream[0], self.client
        while data := await reader.read(CHUNK):
            self.awaiting_request = True
            await self.link.throttle(len(data))
            self.link.counts["bytes_down"] += len(data)
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


def _handler(link: Link, upstream: tuple[str, int]):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link.counts["connections"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        conn = Connection(link, reader, writer, up_reader, up_writer)
        try:
            await asyncio.gather(conn.client_to_server(), conn.server_to_client())
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                w.close()
            link.write_stats()
    return handle


async def serve(port: int, upstream: tuple[str, int], link: Link, ready: Path | None) -> None:
    server = await asyncio.start_server(_handler(link, upstream), HOST, port, backlog=512)
    if ready is not None:
        ready.write_text(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


# run as a subprocess ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class Proxy:
    """`python -m bench.proxy` in a subprocess; `requests()` / `counts()` read its stats file."""

    def __init__(self, upstream_port: int, work: Path, delay_ms: float = 20.0,
                 mbps: float | None = None, spike_ms: float = 0.0, spike_rate: float = 0.0) -> None:
        self.upstream_port, self.delay_ms, self.mbps = upstream_port, delay_ms, mbps
        self.spike_ms, self.spike_rate = spike_ms, spike_rate
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        work.mkdir(parents=True, exist_ok=True)
        self.stats = work / f"proxy-{self.port}.json"
        self.log = work / f"proxy-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> Proxy:
        argv = [sys.executable, "-m", "bench.proxy", "--port", str(self.port), "--upstream",
                f"{HOST}:{self.upstream_port}", "--delay-ms", str(self.delay_ms),
                "--stats", str(self.stats)]
        if self.mbps:
            argv += ["--mbps", str(self.mbps)]
        if self.spike_rate:
            argv += ["--spike-ms", str(self.spike_ms), "--spike-rate", str(self.spike_rate)]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=Path(__file__).parent.parent)
        deadline = time.monotonic() + timeout
        while not self.stats.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"proxy did not start; see {self.log}")
            time.sleep(0.02)
        return self

    def counts(self) -> dict[str, int]:
        for _ in range(20):  # os.replace makes it whole; a read can still race a first write
            with contextlib.suppress(OSError, ValueError):
                return json.loads(self.stats.read_text())
            time.sleep(0.01)
        return {}

    def requests(self) -> int:
        return self.counts().get("requests", 0)

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc, timeout)


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Terminate a child by its PID, kill it if it has not exited after `timeout`; reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# the proxy's own ceiling --------------------------------------------------------------------------
def _source(total: int) -> tuple[int, threading.Thread, socket.socket]:
    """A TCP server that sends `total` zero bytes to each of two connections, then closes."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(4)
    block = bytes(CHUNK)

    def run() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                sent = 0
                while sent < total:
                    sent += conn.send(block[: min(CHUNK, total - sent)])
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, listener


def _drain(port: int) -> float:
    """Seconds to read everything a connection to `port` sends after one request line."""
    start = time.perf_counter()
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        while sock.recv(1 << 20):
            pass
    return time.perf_counter() - start


def ceiling(total: int = 512 << 20, work: Path | None = None) -> dict[str, float]:
    """MB/s of one stream read directly and through the proxy at 0 ms delay, no cap."""
    import tempfile

    port, thread, listener = _source(total)
    proxy = Proxy(port, work or Path(tempfile.mkdtemp(prefix="proxy-")), delay_ms=0).start()
    try:
        direct = _drain(port)
        proxied = _drain(proxy.port)
    finally:
        proxy.stop()
        thread.join(10)
        listener.close()
    return {"direct_mb_s": total / direct / 1e6, "proxy_mb_s": total / proxied / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="HOST:PORT of the server")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="added per request")
    parser.add_argument("--mbps", type=float, default=None, help="cap on bytes to clients, MB/s")
    parser.add_argument("--stats", type=Path, default=None, help="JSON counters written here")
    parser.add_argument("--spike-ms", type=float, default=0.0,
                        help="latency spike: a request held this much longer (netem jitter)")
    parser.add_argument("--spike-rate", type=float, default=0.0,
                        help="fraction of requests that spike (0.05: one in 20)")
    parser.add_argument("--ceiling", action="store_true", help="measure the proxy's own MB/s")
    args = parser.parse_args(argv)
    if args.ceiling:
        print(json.dumps(ceiling()))
        return 0
    if not args.upstream:
        parser.error("--upstream is required")
    host, _, port = args.upstream.rpartition(":")
    link = Link(args.delay_ms / 1000, args.mbps, args.stats, args.spike_ms / 1000,
                args.spike_rate)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    link.write_stats()
    asyncio.run(serve(args.port, (host, int(port)), link, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
