"""Faults on the remote read path (slow tier): a real S3 server process (moto) behind the
bench's latency proxy, a real mount. Latency spikes, a server that stops answering mid-read
(SIGSTOP) and one that restarts: each read fails alone and in bounded time (EIO), the same
mount recovers, nothing wrong is served, and what is fetched ahead stays bounded."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusehelp import force_unmount, wait_until
from s3server import MotoServer
from trees import write_random_file

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.proxy import Proxy  # noqa: E402
from c3fs.reader import BlobSource, FileReader  # noqa: E402
from c3fs.reader.ahead import BUDGET, QUEUED, SPAN  # noqa: E402
from c3fs.repo import Repo  # noqa: E402
from c3fs.store.backend import Deadline  # noqa: E402
from c3fs.vfs import Vfs  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.s3]
MiB = 1024 * 1024
C3FS = Path(sys.executable).parent / "c3fs"
SIZE = 24 * MiB


@pytest.fixture
def job(tmp_path: Path) -> Iterator[tuple[MotoServer, dict[str, str], Path]]:
    """A server of its own (it is stopped and paused) holding job j1 (a 24 MiB file and 50
    small ones); the environment of a fresh machine reading it directly."""
    server = MotoServer.launch()
    try:
        server.create_bucket("faults")
        src = tmp_path / "src"
        (src / "small").mkdir(parents=True)
        write_random_file(src / "big.bin", SIZE, seed=9)
        for i in range(50):
            (src / "small" / f"f{i:02d}.txt").write_text(f"file {i}\n" * (i + 1))
        env = {**os.environ, "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true", "C3FS_STORE": "s3://faults/p",
               "C3FS_CACHE_DIR": str(tmp_path / "pusher"), "C3FS_STORE_DEADLINE": "4"}
        subprocess.run([str(C3FS), "push", str(src), "-p", "p", "-j", "j1"], env=env, check=True,
                       capture_output=True)
        env["C3FS_CACHE_DIR"] = str(tmp_path / "reader")
        yield server, env, src
    finally:
        server.stop()


def mount(env: dict[str, str], mnt: Path) -> None:
    mnt.mkdir(exist_ok=True)
    subprocess.run([str(C3FS), "mount", "/jobs/j1", str(mnt)], env=env, check=True,
                   capture_output=True, timeout=120)


def test_latency_spikes_cost_time_never_bytes(job, tmp_path: Path) -> None:
    server, env, src = job
    proxy = Proxy(server.port, tmp_path / "proxy", delay_ms=5, spike_ms=1500,
                  spike_rate=0.2).start()
    mnt = tmp_path / "mnt"
    try:
        mount({**env, "AWS_ENDPOINT_URL": proxy.endpoint}, mnt)
        assert (mnt / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
        for path in sorted((src / "small").iterdir()):
            assert (mnt / "small" / path.name).read_bytes() == path.read_bytes()
        assert proxy.counts().get("spikes", 0) >= 1
    finally:
        force_unmount(mnt)
        proxy.stop()


@pytest.mark.fuse
def test_a_hung_server_fails_that_read_alone_and_the_mount_recovers(job, tmp_path: Path) -> None:
    server, env, src = job
    expected = (src / "big.bin").read_bytes()
    mnt = tmp_path / "mnt"
    try:
        mount(env, mnt)
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, MiB, 0) == expected[:MiB]  # a sequential reader: window open
            server.pause()  # SIGSTOP mid-read: connections accepted, nothing answers
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                os.pread(fd, MiB, SIZE - 2 * MiB)
            assert failure.value.errno == errno.EIO
            assert time.monotonic() - started < 60, "a read of a hung store hung"
            assert os.pread(fd, 4096, 0) == expected[:4096]  # what was read still reads
            server.resume()
            wait_until(lambda: _reads(fd, expected), "the same mount reading again", 60)
            assert os.pread(fd, SIZE + 1, 0) == expected  # nothing wrong was served
        finally:
            os.close(fd)
    finally:
        server.resume()
        force_unmount(mnt)


@pytest.mark.fuse
def test_a_restarted_server_is_read_again_without_a_remount(job, tmp_path: Path) -> None:
    server, env, src = job
    expected = (src / "big.bin").read_bytes()
    mnt = tmp_path / "mnt"
    try:
        mount(env, mnt)
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, MiB, 0) == expected[:MiB]
            server.restart(keep_data=True)  # a new process on the same port, same objects
            wait_until(lambda: _reads(fd, expected), "the mount reading after a restart", 60)
            assert os.pread(fd, SIZE + 1, 0) == expected
            names = sorted(os.listdir(mnt / "small"))
            assert [(mnt / "small" / n).read_bytes() for n in names] == [
                (src / "small" / n).read_bytes() for n in names]
        finally:
            os.close(fd)
    finally:
        force_unmount(mnt)


def _reads(fd: int, expected: bytes) -> bool:
    try:
        return os.pread(fd, MiB, SIZE - 2 * MiB) == expected[SIZE - 2 * MiB : SIZE - MiB]
    except OSError:
        return False


def test_fetching_ahead_from_a_hung_server_stays_bounded(job, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    server, env, src = job
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION",
                 "AWS_ALLOW_HTTP", "C3FS_CACHE_DIR"):
        monkeypatch.setenv(name, env[name])
    repo = Repo.open("s3://faults/p", create=False, deadline=Deadline(3, rearm=True))
    try:
        vfs = Vfs(repo, "/jobs/j1")
        entry = vfs.lookup(vfs.root, b"big.bin").entry
        server.pause()
        for _ in range(200):  # asked again and again while nothing answers
            repo.blobs.prefetch(entry.chunk_ids())
        ahead = repo.blobs.ahead
        assert len(ahead._queue) <= QUEUED
        assert ahead._in_flight <= BUDGET + SPAN * 4  # a span is started only when it fits
        with pytest.raises(Exception):  # noqa: B017 -- the read's own error: the store's
            FileReader(repo.blobs, entry, readahead=8).read(SIZE // 2, MiB)
        server.resume()
        wait_until(lambda: _reader_ok(repo.blobs, entry, src), "reads after the store answers", 60)
    finally:
        server.resume()
        repo.close()


def _reader_ok(blobs: BlobSource, entry, src: Path) -> bool:
    try:
        data = FileReader(blobs, entry, readahead=8).read(SIZE // 2, MiB)
    except Exception:
        return False
    with open(src / "big.bin", "rb") as f:
        f.seek(SIZE // 2)
        return data == f.read(MiB)


def test_a_run_uploads_through_a_server_restart(tmp_path: Path) -> None:
    """The S3 endpoint refuses connections for 5 s from the moment a job ends (its command
    stops the proxy in front of the server, which comes back 5 s later): run's upload waits
    it out within the deadline (60 s) and the job succeeds with its bytes whole, where it
    used to give up after 4 retries (~3 s) and end FAILED (UPLOAD_ERROR), exit 74."""
    server = MotoServer.launch()
    proxy = Proxy(server.port, tmp_path / "proxy", delay_ms=0)
    try:
        server.create_bucket("outage")
        proxy.start()
        work = tmp_path / "work"
        work.mkdir()
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true", "C3FS_STORE": "s3://outage/p",
               "C3FS_CACHE_DIR": str(tmp_path / "cache")}
        env.pop("C3FS_STORE_DEADLINE", None)
        script = (f"head -c {8 * MiB} /dev/urandom > $C3_ARTIFACTS_DIR/r.bin && "
                  f"echo x > $C3_ARTIFACTS_DIR/r.txt && kill {proxy.proc.pid}")
        run = subprocess.Popen([str(C3FS), "-v", "run", "-p", "pipe", "-j", "job_x", "--",
                                "sh", "-c", script], cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proxy.proc.wait(timeout=120)  # the job is over: the endpoint refuses from now on
        time.sleep(5)  # the outage
        proxy.stats.unlink()
        proxy.start()  # the same port again
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
        assert b"connection refused" in err  # (-v: each retry is logged)
        copy = tmp_path / "copy"
        subprocess.run([str(C3FS), "cp", "-r", "/jobs/job_x", str(copy)], env=env, check=True,
                       capture_output=True)
        for name in ("r.bin", "r.txt"):
            assert (copy / name).read_bytes() == (work / "artifacts" / name).read_bytes()
        subprocess.run([str(C3FS), "verify"], env=env, check=True, capture_output=True)
    finally:
        proxy.stop()
        server.stop()
