"""Concurrency and load, each bounded in time and count: pushes racing each other (local and
S3), gc racing pushes (randomly, and at the two exact moments where a race could lose data),
gc racing mount reads, 16 readers on one mount, and a long read soak with the daemon's RSS
sampled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import pytest

from reliability.relkit import (
    GiB,
    KiB,
    MiB,
    Site,
    daemon_of,
    drop_page_cache,
    file_digest,
    make_local_store,
    mounted,
    spread_delays,
    tree_digest,
)


def shared_sources(root: Path, base: Path, count: int) -> list[Path]:
    """`count` trees that share `base`'s big files (hard links) and differ in small files."""
    trees = []
    for i in range(count):
        src = root / f"src-{i}"
        src.mkdir(parents=True)
        for big in sorted(base.glob("weights-*.bin")):
            os.link(big, src / big.name)
        own = src / "own"
        own.mkdir()
        rng = random.Random(i)
        for k in range(50):
            (own / f"f{k}.txt").write_bytes(rng.randbytes(rng.randint(10, 40 * KiB)))
        trees.append(src)
    return trees


def assert_each_job_is_its_source(site: Site, jobs: dict[str, Path], dest: Path) -> None:
    site.assert_verifies()
    for job, src in jobs.items():
        site.run("cp", "-r", f"/jobs/{job}", dest / job).ok()
        assert tree_digest(dest / job) == tree_digest(src), job


# pushes racing pushes ------------------------------------------------------------------------
@pytest.mark.parametrize("caches", ["one-machine", "two-machines"])
def test_two_pushes_at_once_sharing_chunks(tmp_path: Path, big_tree: Path, caches: str) -> None:
    a, b = shared_sources(tmp_path / "src", big_tree, 2)
    site = Site(str(tmp_path / "store"), tmp_path / "cache-a")
    other = site if caches == "one-machine" else site.with_cache(tmp_path / "cache-b")
    procs = [site.popen("push", a, "-p", "rel", "-j", "job-a"),
             other.popen("push", b, "-p", "rel", "-j", "job-b")]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert site.jobs() == ["job-a", "job-b"]
    assert_each_job_is_its_source(site, {"job-a": a, "job-b": b}, tmp_path / "copies")


@pytest.mark.s3
def test_two_pushes_at_once_on_s3(tmp_path: Path, small_tree: Path, s3_url: str) -> None:
    a, b = shared_sources(tmp_path / "src", small_tree, 2)
    site = Site(s3_url, tmp_path / "cache-a")
    other = site.with_cache(tmp_path / "cache-b")  # two machines on one bucket
    procs = [site.popen("push", a, "-p", "rel", "-j", "job-a"),
             other.popen("push", b, "-p", "rel", "-j", "job-b")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    assert other.jobs() == ["job-a", "job-b"]
    assert_each_job_is_its_source(site, {"job-a": a, "job-b": b}, tmp_path / "copies")


# gc racing pushes ----------------------------------------------------------------------------
GC_PUSH_ROUNDS = 4


def test_gc_during_push_never_removes_a_live_blob(tmp_path: Path, big_tree: Path) -> None:
    """A removed job's blobs are exactly what the next push dedups against: the most
    dangerous moment for gc. Either side may refuse (exit 7); no blob a job uses may go."""
    (src,) = shared_sources(tmp_path / "src", big_tree, 1)  # 96 MiB in 3 files + 50 small
    site = Site(str(tmp_path / "store"), tmp_path / "cache")
    make_local_store(site.root, 4 * MiB)
    pushed: dict[str, Path] = {}
    outcomes = []
    for i, delay in enumerate(spread_delays(7, GC_PUSH_ROUNDS, 0.8)):
        site.push(src, f"old-{i}")
        site.run("rm", f"old-{i}").ok()
        push = site.popen("push", src, "-p", "rel", "-j", f"new-{i}")
        time.sleep(delay)
        gc = site.popen("gc")
        (_, push_err), (_, gc_err) = push.communicate(timeout=120), gc.communicate(timeout=120)
        assert push.returncode in (0, 7) and gc.returncode in (0, 7), (push_err, gc_err)
        if push.returncode == 7:
            assert b"gc is running" in push_err
            site.push(src, f"new-{i}")
        if gc.returncode == 7:
            assert b"in progress" in gc_err or b"another gc" in gc_err
        outcomes.append((push.returncode, gc.returncode))
        pushed[f"new-{i}"] = src
        site.assert_verifies()
    site.run("gc").ok()
    assert site.jobs() == sorted(pushed), outcomes
    site.assert_verifies()


def test_gc_between_a_push_and_its_ref(tmp_path: Path, small_tree: Path, monkeypatch) -> None:
    """gc starting in the instant after a push stored its trees, before it registers the job,
    must not see the new packs (and the removed job's blobs it deduped against) as garbage."""
    from c3fs.jobs import push as push_module

    site = Site(str(tmp_path / "store"), tmp_path / "cache")
    site.push(small_tree, "old")
    site.run("rm", "old").ok()
    gc_runs = []
    real_register = push_module.register

    def register_after_a_gc(repo, record):
        gc_runs.append(site.run("gc"))  # another process, the same machine
        return real_register(repo, record)

    monkeypatch.setattr(push_module, "register", register_after_a_gc)
    with site.repo() as repo:
        push_module.push_dir(repo, small_tree, "rel", "new")
    assert len(gc_runs) == 1 and gc_runs[0].code in (0, 7), gc_runs
    site.assert_verifies()


def test_gc_between_a_push_index_sync_and_its_lock(tmp_path: Path, small_tree: Path,
                                                   monkeypatch) -> None:
    """Machine B's push learns the store's packs, then machine A's gc deletes a removed job's
    packs, then B takes its push lock: B must not dedup against the packs that are gone."""
    from c3fs.jobs import push as push_module

    machine_a = Site(str(tmp_path / "store"), tmp_path / "cache-a")
    machine_b = machine_a.with_cache(tmp_path / "cache-b")
    machine_a.push(small_tree, "old")
    machine_a.run("rm", "old").ok()
    real_lock = push_module.push_lock
    gc_runs = []

    @contextlib.contextmanager
    def lock_after_a_gc(store, wait=0.0):
        if not gc_runs:
            gc_runs.append(machine_a.run("gc").ok())
        with real_lock(store, wait) as lease:
            yield lease

    monkeypatch.setattr(push_module, "push_lock", lock_after_a_gc)
    with machine_b.repo() as repo:
        push_module.push_dir(repo, small_tree, "rel", "new")
    assert json.loads(machine_a.run("balance", "--json").ok().out)["jobs"] == 1
    machine_a.assert_verifies()
    machine_b.assert_verifies()


# gc racing mount reads --------------------------------------------------------------------------
class Readers:
    """Threads that read files of a mount over and over (page cache dropped each time) and
    compare every byte with the source, until stopped; errors are collected, not raised."""

    def __init__(self, mnt: Path, src: Path, files: list[str], threads: int) -> None:
        self.mnt, self.src, self.files = mnt, src, files
        self.digests = {f: file_digest(src / f) for f in files}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.reads = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(threads)]

    def __enter__(self) -> Readers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _loop(self, seed: int) -> None:
        rng = random.Random(seed)
        scattered = seed % 2 == 1  # odd threads read at random offsets, even ones whole files
        while not self.stop.is_set():
            name = rng.choice(self.files)
            try:
                drop_page_cache(self.mnt / name)
                done = self._scattered(name, rng) if scattered else self._whole(name)
            except OSError as exc:
                self.errors.append(f"{name}: {exc}")
                done = 0
            with self._lock:
                self.reads += 1
                self.bytes += done

    def _whole(self, name: str) -> int:
        digest, size = hashlib.sha256(), 0
        with open(self.mnt / name, "rb", buffering=0) as f:
            while block := f.read(MiB):
                digest.update(block)
                size += len(block)
        if digest.hexdigest() != self.digests[name]:
            self.errors.append(f"{name}: wrong bytes")
        return size

    def _scattered(self, name: str, rng: random.Random) -> int:
        size, done = (self.src / name).stat().st_size, 0
        with open(self.mnt / name, "rb", buffering=0) as mine, open(self.src / name, "rb") as src:
            for _ in range(32):
                offset, length = rng.randrange(max(size, 1)), rng.randint(1, MiB)
                got = os.pread(mine.fileno(), length, offset)
                if got != os.pread(src.fileno(), length, offset):
                    self.errors.append(f"{name}@{offset}+{length}: wrong bytes")
                done += len(got)
        return done


@pytest.mark.fuse
@pytest.mark.parametrize("gc_from", ["same-machine", "other-machine"])
def test_gc_during_mount_reads(tmp_path: Path, small_tree: Path, gc_from: str) -> None:
    """The mounted job's chunks sit in a removed job's packs, which gc repacks and deletes
    while 4 readers keep reading: every read must succeed with the right bytes."""
    dead, live = tmp_path / "dead", tmp_path / "live"
    for src, own in ((dead, "dead-only.bin"), (live, "live-only.bin")):
        shutil.copytree(small_tree, src, symlinks=True)
        (src / own).write_bytes(random.Random(own).randbytes(2 * MiB))
    site = Site(str(tmp_path / "store"), tmp_path / "cache")
    make_local_store(site.root, 1 * MiB)
    site.push(dead, "dead")
    site.push(live, "live")
    site.run("rm", "dead").ok()
    gc_site = site if gc_from == "same-machine" else site.with_cache(tmp_path / "cache-gc")
    files = sorted(str(p.relative_to(live)) for p in live.rglob("*")
                   if p.is_file() and not p.is_symlink())
    with mounted(site, "/jobs/live", tmp_path / "mnt", "--cache-size", "4MiB") as mnt:
        with Readers(mnt, live, files, threads=4) as readers:
            time.sleep(0.5)
            before = readers.reads
            report = json.loads(gc_site.run("gc", "--json").ok().out)
            time.sleep(0.5)
            during = readers.reads - before
        assert report["packs_repacked"] > 0, report  # the mounted job's packs were rewritten
        assert readers.errors == [] and during > 0
        for name in files:  # and once more after gc, nothing cached
            drop_page_cache(mnt / name)
            assert file_digest(mnt / name) == readers.digests[name], name
    site.assert_verifies()


# load on one mount --------------------------------------------------------------------------------
@pytest.mark.fuse
def test_16_readers_on_one_mount(tmp_path: Path, big_tree: Path, site: Site) -> None:
    """8 sequential readers (whole files) and 8 random readers (preads at random offsets and
    lengths), all at once; every byte compared with the source."""
    site.push(big_tree, "big")
    files = sorted(str(p.relative_to(big_tree)) for p in big_tree.rglob("*")
                   if p.is_file() and not p.is_symlink())
    big = [f for f in files if f.startswith("weights-")]
    picked = {seed: big + random.Random(seed).sample(files, 100) for seed in range(8)}
    digests = {name: file_digest(big_tree / name) for names in picked.values() for name in names}
    errors: list[str] = []

    def sequential(seed: int, mnt: Path) -> None:
        for name in picked[seed]:
            if file_digest(mnt / name) != digests[name]:
                errors.append(f"{name}: wrong bytes")

    def scattered(seed: int, mnt: Path) -> None:
        rng = random.Random(100 + seed)
        handles = {name: (os.open(mnt / name, os.O_RDONLY), os.open(big_tree / name, os.O_RDONLY))
                   for name in big}
        try:
            for _ in range(200):
                name = rng.choice(big)
                offset = rng.randrange(32 * MiB)
                length = rng.choice([1, 4096, 65536 + 17, 1 * MiB, 3 * MiB])
                mine, source = handles[name]
                if os.pread(mine, length, offset) != os.pread(source, length, offset):
                    errors.append(f"{name}@{offset}+{length}: wrong bytes")
        finally:
            for fds in handles.values():
                for fd in fds:
                    os.close(fd)

    with mounted(site, "/jobs/big", tmp_path / "mnt", "--cache-size", "64MiB") as mnt:
        for name in files:
            drop_page_cache(mnt / name)
        threads = [threading.Thread(target=work, args=(i, mnt))
                   for i in range(8) for work in (sequential, scattered)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not any(t.is_alive() for t in threads), "readers hung"
        assert errors == []
        assert time.monotonic() - started < 300


@pytest.mark.fuse
@pytest.mark.slow
def test_10_gib_of_reads_with_bounded_daemon_memory(tmp_path: Path, site: Site) -> None:
    """Re-read 240 MiB of files (page cache dropped before each read; 2 threads read whole
    files, 2 read at random offsets) until 10 GiB have gone through the daemon; its RSS,
    sampled every 0.1 s, stays under 100 MiB + its cache size."""
    cache = 64 * MiB
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        with open(src / f"checkpoint-{i}.bin", "wb") as f:
            rng = random.Random(i)
            for block in range(40):
                f.write(rng.randbytes(MiB) if block % 2 else bytes([i + block]) * MiB)
    site.push(src, "soak")
    files = sorted(p.name for p in src.iterdir())
    with mounted(site, "/jobs/soak", tmp_path / "mnt", "--cache-size", "64MiB") as mnt:
        daemon = daemon_of(mnt)
        assert daemon is not None
        rchar_before = daemon.io_counters().read_chars
        peak = [daemon.memory_info().rss]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak.append(daemon.memory_info().rss)
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        with Readers(mnt, src, files, threads=4) as readers:
            while readers.bytes < 10 * GiB and time.monotonic() - started < 240:
                time.sleep(0.2)
        sampling.set()
        sampler.join()
        elapsed = time.monotonic() - started
        served = daemon.io_counters().read_chars - rchar_before
    assert readers.errors == []
    assert readers.bytes >= 10 * GiB, f"only {readers.bytes / GiB:.1f} GiB in {elapsed:.0f} s"
    assert served > 2 * GiB, f"the daemon read only {served / GiB:.1f} GiB of packs"
    print(f"\n10 GiB soak: {readers.bytes / GiB:.1f} GiB in {elapsed:.0f} s, "
          f"daemon RSS peak {max(peak) / MiB:.0f} MiB, packs read {served / GiB:.1f} GiB")
    bound = 100 * MiB + cache
    assert max(peak) <= bound, f"daemon RSS peaked at {max(peak) / MiB:.0f} MiB > {bound / MiB:.0f}"
