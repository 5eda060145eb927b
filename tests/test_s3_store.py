"""The store on S3 (a real moto server process), shared by machines; the local block cache.

A "machine" is a home of its own (C3FS_CACHE_DIR: its LMDB index and block cache) running
the real CLI in subprocesses against one bucket. Fault injection is used only where the real
server cannot produce the fault (a remote that sends wrong bytes once).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import test_backend_conformance as conformance
from fusehelp import force_unmount, wait_until
from s3server import MotoServer
from trees import diff, snapshot, write_random_file

from c3fs.errors import BlobCorrupt
from c3fs.index import open_index
from c3fs.reader import BlobSource
from c3fs.store.backend import Backend
from c3fs.store.cache import BlockCache, parse_size
from c3fs.store.s3 import parse_s3_url
from c3fs.store.store import Store, open_backend

pytestmark = pytest.mark.s3

KiB, MiB = 1024, 1024 * 1024
C3FS = Path(sys.executable).parent / "c3fs"
PACK = "ab" + "7" * 62
KEY = Store.pack_key(PACK)


# machines -----------------------------------------------------------------------------------
@dataclass
class Machine:
    """One home (index + block cache) running the real CLI against the shared bucket."""

    home: Path
    url: str
    deadline: str = ""  # C3FS_STORE_DEADLINE (default: not set, 60 s)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("C3FS_STORE", "C3FS_DISK_CACHE", "C3FS_STORE_DEADLINE")}
        deadline = {"C3FS_STORE_DEADLINE": self.deadline} if self.deadline else {}
        return {**env, "C3FS_CACHE_DIR": str(self.home), "COLUMNS": "100", **deadline}

    def argv(self, *args: str) -> list[str]:
        return [str(C3FS), "--store", self.url, *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), capture_output=True, text=True,
                              timeout=timeout, env=self.env())

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, f"c3fs {' '.join(args)} failed ({proc.returncode}): {proc.stderr} {proc.stdout}"
        return proc.stdout

    def push(self, src: Path, job: str) -> dict:
        return json.loads(self.ok("push", str(src), "-p", "proj", "-j", job, "--json"))

    def jobs(self) -> list[str]:
        return [name.rstrip("/") for name in self.ok("ls", "/jobs/").split()]


@pytest.fixture
def machines(tmp_path: Path, s3_url: str) -> tuple[Machine, Machine]:
    return Machine(tmp_path / "home-a", s3_url), Machine(tmp_path / "home-b", s3_url)


def bucket_objects(server: MotoServer, url: str) -> dict[str, int]:
    """{key below the store prefix: size}, listed with boto3 (not through c3fs)."""
    bucket, prefix = parse_s3_url(url)
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                       Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: o["Size"] for p in pages for o in p.get("Contents", [])}


def bucket_snapshot(server: MotoServer, url: str) -> dict[str, dict[str, bytes]]:
    """This test's bucket, to restore after a stop (MotoServer.restore's format)."""
    bucket, _ = parse_s3_url(url)
    s3 = server.client()
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [o["Key"] for p in pages for o in p.get("Contents", [])]
    return {bucket: {k: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}}


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The failure's one `c3fs: error:` line (retry warnings may precede it); no traceback."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("c3fs: error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    return errors[0]


# trees --------------------------------------------------------------------------------------
def mixed_tree(root: Path, seed: int, big: int = 8 * MiB, small: int = 300) -> int:
    """A checkpoint-like big file, mid-sized 'plots', many small text files; returns bytes."""
    rng = random.Random(seed)
    (root / "ckpt").mkdir(parents=True)
    write_random_file(root / "ckpt" / "model.bin", big, seed)
    (root / "plots").mkdir()
    for i in range(6):
        (root / "plots" / f"p{i}.png").write_bytes(rng.randbytes(rng.randint(50, 300) * KiB))
    for i in range(small):
        folder = root / "metrics" / f"run{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        text = "".join(f"step={j} loss={rng.random():.6f}\n" for j in range(rng.randint(5, 300)))
        (folder / f"m{i:04d}.txt").write_text(text)
    os.symlink("ckpt/model.bin", root / "latest")
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def next_step(src: Path, dst: Path, seed: int) -> int:
    """Copy `src` with ~10% of its bytes rewritten; returns the bytes rewritten."""
    shutil.copytree(src, dst, symlinks=True)
    rng = random.Random(seed)
    model = dst / "ckpt" / "model.bin"
    size = model.stat().st_size
    region = size // 10
    with open(model, "r+b") as f:
        f.seek(size // 3)
        f.write(rng.randbytes(region))
    changed = region
    for path in sorted((dst / "metrics").rglob("*.txt"))[::10]:
        body = path.read_bytes() + b"step=final loss=0.0\n"
        path.write_bytes(body)
        changed += len(body)
    return changed


def same_tree(expected: Path, actual: Path) -> None:
    differences = diff(snapshot(expected), snapshot(actual))
    assert not differences, "\n".join(differences)


# the block cache ------------------------------------------------------------------------------
def cached(url: str, root: Path, max_bytes: int = 64 * MiB, block: int = 64 * KiB) -> BlockCache:
    return BlockCache(open_backend(url, cache=False), root, max_bytes, block_size=block, memory_bytes=0)


def disk_bytes(cache: BlockCache) -> int:
    """Bytes of cached blocks (temp files being written are not the cache's yet)."""
    total = 0
    for path in cache.disk.root.glob("*/*"):
        if not path.name.startswith("."):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
    return total


@pytest.mark.parametrize("case", [
    conformance.test_get_full_and_ranged, conformance.test_size, conformance.test_put_replaces,
    conformance.test_create_refuses_to_overwrite, conformance.test_delete,
    conformance.test_list_by_prefix, conformance.test_empty_object,
], ids=lambda case: case.__name__.removeprefix("test_"))
def test_cache_passes_the_backend_conformance_suite(case: Callable, s3_url: str, tmp_path) -> None:
    case(cached(s3_url, tmp_path))


def test_cached_ranges_are_exact_and_fetched_once(s3_url: str, tmp_path: Path) -> None:
    data = os.urandom(300 * KiB + 17)
    cache = cached(s3_url, tmp_path)
    cache.put(KEY, data)
    ranges = [(0, 1), (5, 100), (64 * KiB - 3, 10), (60 * KiB, 130 * KiB), (200 * KiB, 9),
              (300 * KiB, 17), (300 * KiB, 5000), (250 * KiB, 50 * KiB + 17)]
    for offset, length in ranges:
        assert cache.get(KEY, offset, length) == data[offset : offset + length], (offset, length)
    assert cache.stats.misses == 5 and cache.stats.fetched_bytes == len(data)  # 5 blocks, once
    again = cached(s3_url, tmp_path)  # another process: the same files on disk
    for offset, length in ranges:
        assert again.get(KEY, offset, length) == data[offset : offset + length]
    assert again.stats.misses == 0
    assert again.get(KEY, 290 * KiB, 64 * KiB) == data[290 * KiB :]  # cut short at the end
    assert again.get(KEY, 400 * KiB, 10) == b""
    assert cache.get(KEY) == data and cache.get(KEY, 7, 0) == b""


def test_refs_and_config_are_never_cached(s3_url: str, tmp_path: Path) -> None:
    cache = cached(s3_url, tmp_path)
    for key in ("config", "refs/jobs/job_1", "locks/gc", "packs/ab/not-a-pack-id"):
        cache.put(key, b"version one")
        assert cache.get(key, 0, 7) == b"version"
        cache.inner.put(key, b"VERSION TWO")  # changed by another machine
        assert cache.get(key, 0, 7) == b"VERSION"
    assert cache.stats.misses == 0 and disk_bytes(cache) == 0


def test_cache_stays_within_its_limit_and_keeps_recent_blocks(s3_url, tmp_path) -> None:
    block = 64 * KiB
    data = os.urandom(40 * block)
    cache = cached(s3_url, tmp_path, max_bytes=10 * block, block=block)
    cache.put(KEY, data)
    for n in range(40):
        assert cache.get(KEY, n * block + 1, 100) == data[n * block + 1 : n * block + 101]
        os.utime(cache.disk.path(f"{PACK}.0"))  # block 0 is in constant use
        assert disk_bytes(cache) <= 10 * block
    assert cache.disk.path(f"{PACK}.0").exists(), "the most recently used block was evicted"
    assert not cache.disk.path(f"{PACK}.1").exists()
    assert disk_bytes(cache) > 5 * block  # evicted down to the low-water mark, not to nothing


def test_cache_files_are_private(s3_url: str, tmp_path: Path) -> None:
    cache = cached(s3_url, tmp_path / "c")
    cache.put(KEY, b"x" * 1000)
    cache.get(KEY, 0, 10)
    for path in (tmp_path / "c").rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


@pytest.mark.logs("is damaged; fetching it again")
@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_damaged_cache_file_is_refetched_not_served(s3_url, tmp_path, damage) -> None:
    data = os.urandom(100 * KiB)
    cache = cached(s3_url, tmp_path)
    cache.put(KEY, data)
    assert cache.get(KEY, 10, 1000) == data[10:1010]
    path = cache.disk.path(f"{PACK}.0")
    original = path.read_bytes()
    raw = bytearray(original)
    if damage == "flip":
        raw[-100] ^= 0x01
    fresh = cached(s3_url, tmp_path)  # memory empty: the next read comes from disk
    path.write_bytes({"flip": bytes(raw), "truncate": bytes(raw[:-1]), "empty": b"",
                      "garbage": os.urandom(len(raw))}[damage])
    assert fresh.get(KEY, 10, 64 * KiB) == data[10 : 10 + 64 * KiB]
    assert fresh.stats.misses == 2  # the damaged block again, and block 1
    assert path.read_bytes() == original  # cached again, intact


def test_an_unusable_cache_directory_does_not_fail_reads(s3_url, tmp_path, caplog) -> None:
    data = os.urandom(200 * KiB)
    root = tmp_path / "c"
    root.mkdir()
    (root / "blocks-64k").write_bytes(b"a file where the cache's directory should be")
    cache = cached(s3_url, root)
    cache.put(KEY, data)
    for offset in range(0, len(data), 20 * KiB):
        assert cache.get(KEY, offset, 30 * KiB) == data[offset : offset + 30 * KiB]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "disk cache: cannot create" in warnings[0].getMessage()


class CorruptOnce:
    """Fault injection (moto cannot do this): the first ranged read of a pack comes back with
    one byte flipped, as a bad NIC or proxy might deliver it."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.url = inner.url
        self.spoiled = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self.inner.get(key, offset, length)
        if key.startswith("packs/") and length and length > 48 and not self.spoiled:
            self.spoiled += 1
            data = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
        return data

    def __getattr__(self, verb: str):
        return getattr(self.inner, verb)


@pytest.mark.logs("cached copy was damaged")
def test_reader_drops_a_bad_cached_copy_and_reads_again(s3_url, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("C3FS_CACHE_DIR", str(tmp_path / "home"))
    source = tmp_path / "src"
    source.mkdir()
    content = os.urandom(50 * KiB)  # one chunk
    (source / "f.bin").write_bytes(content)
    subprocess.run([str(C3FS), "--store", s3_url, "push", str(source), "-p", "p", "-j", "j1"],
                   check=True, capture_output=True)
    store = Store.open(open_backend(s3_url, cache=False))
    index = open_index(store)
    spoiling = CorruptOnce(store.backend)
    remote = Store(BlockCache(spoiling, tmp_path / "cache", 64 * MiB, memory_bytes=0), store.config)
    blob_id = next(i for i, loc in index.iter_blobs() if loc.plain_len == len(content))
    assert BlobSource(remote, index).get(blob_id) == content  # first copy bad, refetched
    assert spoiling.spoiled == 1
    uncached = CorruptOnce(store.backend)  # without a cache there is nothing to drop: an error
    with pytest.raises(BlobCorrupt):
        BlobSource(Store(uncached, store.config), index).get(blob_id)
    index.close()


SHARER = textwrap.dedent("""
    import os, random, sys
    from c3fs.store.cache import BlockCache
    from c3fs.store.store import open_backend
    url, root, key, seed = sys.argv[1:5]
    data = open(sys.argv[5], "rb").read()
    cache = BlockCache(open_backend(url, cache=False), root, 12 * 65536, block_size=65536, memory_bytes=0)
    rng = random.Random(int(seed))
    for _ in range(300):
        offset = rng.randrange(len(data)); length = rng.randint(1, 100_000)
        assert cache.get(key, offset, length) == data[offset:offset + length], (offset, length)
    print(cache.stats.misses)
""")


def test_two_processes_share_a_cache_within_its_limit(s3_url: str, tmp_path: Path) -> None:
    data = os.urandom(48 * 64 * KiB)
    expected = tmp_path / "expected"
    expected.write_bytes(data)
    open_backend(s3_url).put(KEY, data)
    root = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-c", SHARER, s3_url, str(root), KEY, str(seed),
                               str(expected)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    watcher = cached(s3_url, root, max_bytes=12 * 64 * KiB)
    peak = 0
    while any(p.poll() is None for p in procs):
        peak = max(peak, disk_bytes(watcher))
        time.sleep(0.005)
    for proc in procs:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert int(out) > 0
    peak = max(peak, disk_bytes(watcher))
    assert 0 < peak <= 12 * 64 * KiB, "the processes together went over the limit"
    assert watcher.disk.used() == disk_bytes(watcher), "the shared byte count drifted"


def test_deleting_a_pack_drops_its_blocks(s3_url: str, tmp_path: Path) -> None:
    cache = cached(s3_url, tmp_path)
    cache.put(KEY, os.urandom(200 * KiB))
    cache.get(KEY, 0, 200 * KiB)  # one GET: the 3 whole blocks it holds are cached
    assert disk_bytes(cache) > 3 * 64 * KiB
    cache.delete(KEY)
    assert disk_bytes(cache) == 0


def test_sizes() -> None:
    assert parse_size("1GiB") == 1 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size("2G") == 2_000_000_000 and parse_size("4096") == 4096


# two machines, one bucket -------------------------------------------------------------------
def test_two_machines_share_jobs_and_dedup(machines, s3_server: MotoServer, tmp_path) -> None:
    a, b = machines
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    size = mixed_tree(v1, seed=1)
    first = a.push(v1, "job_a1")
    assert first["logical_bytes"] == size

    assert b.jobs() == ["job_a1"]  # an empty home sees A's job
    b.ok("cp", "-r", "/jobs/job_a1/", str(tmp_path / "copy"))
    same_tree(v1, tmp_path / "copy")
    b.ok("pull", "job_a1", "--dest", str(tmp_path / "pulled"))
    same_tree(v1, tmp_path / "pulled" / "job_a1")
    blocks = list((b.home).glob("*/blocks-*/*/*"))
    assert blocks and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in blocks)

    changed = next_step(v1, v2, seed=2)
    before = bucket_objects(s3_server, b.url)
    log_start = s3_server.log_path.stat().st_size
    second = b.push(v2, "job_b1")
    after = bucket_objects(s3_server, b.url)
    new = {key: n for key, n in after.items() if before.get(key) != n}
    new_packs = {key: n for key, n in new.items() if key.startswith("packs/")}
    logged = {key for key in new if key.startswith("changes/")}
    assert len(logged) == 1 and next(iter(logged)).endswith("-add-job-job_b1")
    assert set(new) - set(new_packs) - logged == {"refs/jobs/job_b1"}
    assert sum(new_packs.values()) == second["stored_delta"], "stored_delta is not what went up"
    assert changed <= second["stored_delta"] < 0.25 * second["logical_bytes"], (changed, second)
    with open(s3_server.log_path, "rb") as log:
        log.seek(log_start)
        pack_puts = [line for line in log if b"PUT /" in line and b"/packs/" in line]
    assert len(pack_puts) == len(new_packs), "a pack was uploaded more than once"

    assert sorted(a.jobs()) == ["job_a1", "job_b1"]  # and A sees B's
    a.ok("cp", "-r", "/jobs/job_b1/", str(tmp_path / "copy2"))
    same_tree(v2, tmp_path / "copy2")


def test_disk_cache_size_from_the_cli(machines, tmp_path: Path) -> None:
    a, b = machines
    mixed_tree(tmp_path / "src", seed=13, big=6 * MiB, small=30)
    a.push(tmp_path / "src", "job_c")
    b.ok("--disk-cache", "2MiB", "cp", "-r", "/jobs/job_c/", str(tmp_path / "copy"))
    same_tree(tmp_path / "src", tmp_path / "copy")
    blocks = [p for p in b.home.glob("*/blocks-*/*/*") if not p.name.startswith(".")]
    assert 0 < sum(p.stat().st_size for p in blocks) <= 2 * MiB
    bad = b.run("--disk-cache", "lots", "ls", "/")
    assert error_line(bad) == "c3fs: error: not a size: 'lots' (examples: 500MiB, 50GiB, 1TB)"
    # the alias; (what a copy fetches ahead skips the disk cache, so the blocks the first copy
    # left may stay: a cache shrinks to a new limit at its next write, not before)
    shown = json.loads(b.ok("--cache-size", "1MiB", "config", "show", "--local", "--json"))
    assert {"key": "disk_cache", "source": "--disk-cache", "value": "1MiB"} in shown["settings"]


def test_two_machines_racing_for_one_job_id(machines, tmp_path: Path) -> None:
    a, b = machines
    for name, seed in (("ta", 3), ("tb", 4)):
        mixed_tree(tmp_path / name, seed=seed, big=6 * MiB, small=50)
    a.ok("config", "set", "quota", "none")  # create the store first, so neither racer does
    racers = [subprocess.Popen(m.argv("push", str(tmp_path / tree), "-p", "p", "-j", "job_x"),
                               env=m.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for m, tree in ((a, "ta"), (b, "tb"))]
    results = [(p.wait(timeout=120), *p.communicate()) for p in racers]
    assert sorted(code for code, _, _ in results) == [0, 4], results
    code, _, err = next(r for r in results if r[0] != 0)
    line = error_line(subprocess.CompletedProcess([], code, "", err))
    assert line == "c3fs: error: job 'job_x' already exists in the store (project p)"
    winner = "ta" if results[0][0] == 0 else "tb"
    b.ok("cp", "-r", "/jobs/job_x/", str(tmp_path / "got"))
    same_tree(tmp_path / winner, tmp_path / "got")


def wait_for_pack(server: MotoServer, url: str, known: set[str], proc, deadline: float) -> None:
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the push finished before the server could be killed"
        if any(k.startswith("packs/") and k not in known for k in bucket_objects(server, url)):
            return
        time.sleep(0.02)
    raise AssertionError("no pack was uploaded in time")


def test_server_killed_mid_push(machines, s3_server: MotoServer, tmp_path: Path) -> None:
    a, b = machines
    small = tmp_path / "small"
    mixed_tree(small, seed=5, big=1 * MiB, small=20)
    a.push(small, "job_small")
    store = Store.open(open_backend(a.url), create=False)
    store.save_config(pack_target=4 * MiB)  # many packs: the kill lands between two of them
    big = tmp_path / "big"
    mixed_tree(big, seed=6, big=192 * MiB, small=100)  # outlasts the snapshot below
    known = set(bucket_objects(s3_server, a.url))
    quick = dataclasses.replace(a, deadline="10")  # refused connections: retried for 10 s
    push = subprocess.Popen(a.argv("push", str(big), "-p", "p", "-j", "job_big"), env=quick.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_pack(s3_server, a.url, known, push, time.monotonic() + 60)
        saved = bucket_snapshot(s3_server, a.url)  # what the server had made durable
        s3_server.stop()
        started = time.monotonic()
        out, err = push.communicate(timeout=120)
        failed_after = time.monotonic() - started
    finally:
        push.kill()
        if not s3_server.running:
            s3_server.start()
    line = error_line(subprocess.CompletedProcess([], push.returncode, out, err))
    assert "connection refused" in line and s3_server.endpoint in line, line
    assert failed_after < 30, f"the push took {failed_after:.0f}s to give up (deadline 10 s)"
    s3_server.restore(saved)

    assert a.jobs() == ["job_small"] and b.jobs() == ["job_small"]  # nothing half-written
    survived = {k: n for k, n in bucket_objects(s3_server, a.url).items()
                if k.startswith("packs/") and k not in known}
    again = a.push(big, "job_big")
    assert again["stored_delta"] < again["logical_bytes"] - sum(survived.values()) * 0.9, \
        "the re-push uploaded again what was already there"
    a.ok("verify")
    b.ok("cp", "-r", "/jobs/job_big/", str(tmp_path / "copy"))
    same_tree(big, tmp_path / "copy")


@pytest.mark.slow
def test_hung_server_is_a_clear_error_within_about_a_minute(machines, s3_server: MotoServer,
                                                              tmp_path: Path) -> None:
    """A server that accepts connections and never answers (SIGSTOP), with the default
    timeouts and retries: one line after about a minute (it was 5 minutes per request)."""
    a, b = machines
    small = tmp_path / "small"
    mixed_tree(small, seed=9, big=1 * MiB, small=5)
    a.push(small, "job_small")
    s3_server.pause()
    try:
        started = time.monotonic()
        proc = b.run("ls", "/jobs/", timeout=300)
        took = time.monotonic() - started
    finally:
        s3_server.resume()
    line = error_line(proc)
    assert "timed out" in line and s3_server.endpoint in line, line
    assert took < 100, f"gave up after {took:.0f}s"
    assert b.jobs() == ["job_small"]


def test_rm_and_gc_on_s3(machines, s3_server: MotoServer, tmp_path: Path) -> None:
    a, b = machines
    for job, seed in (("job_keep", 7), ("job_drop", 8)):
        mixed_tree(tmp_path / job, seed=seed, big=3 * MiB, small=40)
        a.push(tmp_path / job, job)
    b.ok("cp", "-r", "/jobs/job_keep/", str(tmp_path / "warm"))  # B's cache holds old packs
    packs_before = sum(n for k, n in bucket_objects(s3_server, a.url).items() if k.startswith("packs/"))
    a.ok("rm", "job_drop")
    assert b.jobs() == ["job_keep"]
    report = json.loads(a.ok("gc", "--json"))
    assert report["bytes_freed"] > 3 * MiB
    packs_after = sum(n for k, n in bucket_objects(s3_server, a.url).items() if k.startswith("packs/"))
    assert packs_before - packs_after == report["bytes_freed"]
    assert "locks/gc" not in bucket_objects(s3_server, a.url)
    b.ok("verify")
    b.ok("cp", "-r", "/jobs/job_keep/", str(tmp_path / "after-gc"))
    same_tree(tmp_path / "job_keep", tmp_path / "after-gc")


def test_verify_reads_the_store_not_the_cache(machines, s3_server, tmp_path: Path) -> None:
    a, b = machines
    mixed_tree(tmp_path / "src", seed=14, big=2 * MiB, small=20)
    a.push(tmp_path / "src", "job_v")
    b.ok("cp", "-r", "/jobs/job_v/", str(tmp_path / "warm"))  # every block now in B's cache
    bucket, prefix = parse_s3_url(b.url)
    s3 = s3_server.client()
    key = next(k for k in bucket_objects(s3_server, b.url) if k.startswith("packs/"))
    body = bytearray(s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read())
    body[100] ^= 0xFF  # inside the first blob: the store's copy is damaged, B's cached one not
    s3.put_object(Bucket=bucket, Key=f"{prefix}/{key}", Body=bytes(body))
    proc = b.run("verify")
    assert proc.returncode == 6 and "DAMAGED chunk" in proc.stdout, proc.stdout + proc.stderr
    assert "1 problem" in proc.stderr


SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSecretThatMustNotLeak"


def test_bad_credentials_are_a_clear_error_without_the_secret(tmp_path: Path) -> None:
    server = MotoServer.launch()
    try:
        server.create_bucket("guarded")
        server.require_auth()
        machine = Machine(tmp_path / "home", "s3://guarded/c3")
        env = {**machine.env(), **server.env(), "AWS_SECRET_ACCESS_KEY": SECRET}
        source = tmp_path / "src"
        mixed_tree(source, seed=9, big=64 * KiB, small=3)
        for args in (["ls", "/jobs/"], ["push", str(source), "-p", "p"]):
            started = time.monotonic()
            proc = subprocess.run(machine.argv(*args), capture_output=True, text=True, env=env,
                                  timeout=60)
            assert time.monotonic() - started < 10, "a permanent error was retried"
            line = error_line(proc)
            assert "refused access to bucket 'guarded'" in line and "AWS_SECRET_ACCESS_KEY" in line
            assert SECRET not in proc.stderr + proc.stdout
            assert line == proc.stderr.strip(), "a permanent error is one line, no retries"
    finally:
        server.stop()


# a live mount on machine B --------------------------------------------------------------------
@pytest.mark.fuse
def _reads(fd: int, expected: bytes) -> bool:
    """Whether the whole file reads (a mount whose deadline was spent fails reads at once
    until its probe sees the store answer again)."""
    try:
        return os.pread(fd, len(expected) + 1, 0) == expected
    except OSError:
        return False


def test_live_mount_of_another_machines_jobs(machines, s3_server: MotoServer, tmp_path) -> None:
    a, b = machines
    mixed_tree(tmp_path / "v1", seed=11, big=4 * MiB, small=60)
    a.push(tmp_path / "v1", "job_a1")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        dataclasses.replace(b, deadline="8").ok("mount", str(mnt))  # (a dead store: 8 s)
        wait_until(lambda: os.path.ismount(mnt), "the mount", 30)
        same_tree(tmp_path / "v1", mnt / "jobs" / "job_a1")  # A's job, byte-exact, on B
        one = tmp_path / "one"
        one.mkdir()
        b.ok("mount", "/jobs/job_a1", str(one))  # and that job alone
        wait_until(lambda: os.path.ismount(one), "the mount of one job", 30)
        same_tree(tmp_path / "v1", one)
        b.ok("umount", str(one))

        # a checkpoint alone: no small file or plot shares its pack, so nothing B's mount
        # reads ahead (directory readahead fetches small files, and their blocks hold any
        # chunk packed beside them) brings the bytes read below into B's memory
        (tmp_path / "v2" / "ckpt").mkdir(parents=True)
        write_random_file(tmp_path / "v2" / "ckpt" / "model.bin", 6 * MiB, 12)
        a.push(tmp_path / "v2", "job_a2")  # pushed elsewhere while B is mounted
        wait_until(lambda: "job_a2" in os.listdir(mnt / "jobs"), "job_a2 in B's mount", 30)
        expected = (tmp_path / "v2" / "ckpt" / "model.bin").read_bytes()
        fd = os.open(mnt / "jobs" / "job_a2" / "ckpt" / "model.bin", os.O_RDONLY)
        try:
            saved = bucket_snapshot(s3_server, a.url)
            # B's disk cache holds the blocks its index sync read (pack trailers), which may
            # hold any part of the file (the order of chunks in a pack varies): emptied, so
            # the middle of the file, not read yet, can only come from the store
            blocks = [p for p in b.home.glob("*/blocks-*/*/*") if not p.name.startswith(".")]
            assert blocks, "B's index sync cached no block: the glob is wrong"
            for block in blocks:
                block.unlink()
            s3_server.stop()
            started = time.monotonic()
            with pytest.raises(OSError) as failure:
                os.pread(fd, 128 * KiB, len(expected) // 2)
            assert failure.value.errno == errno.EIO
            assert time.monotonic() - started < 30, "a read of a dead store hung"
            s3_server.start()
            s3_server.restore(saved)
            wait_until(lambda: _reads(fd, expected), "the same mount working again", 30)
            assert os.pread(fd, len(expected) + 1, 0) == expected
        finally:
            os.close(fd)
            if not s3_server.running:
                s3_server.start()
    finally:
        force_unmount(tmp_path / "one")
        force_unmount(mnt)
