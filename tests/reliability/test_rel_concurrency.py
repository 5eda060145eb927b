"""Concurrency and load, each bounded in time and count: pushes racing each other (local and
S3), gc racing pushes (randomly, and at the two exact moments where a race could lose data),
gc racing mount reads, 16 readers on one mount, and a long read soak with the daemon's RSS
sampled.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from reliability.relkit import (
    KiB,
    MiB,
    Site,
    make_local_store,
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
    site = Site(str(tmp_path / "store"), tmp_path / "cache")
    make_local_store(site.root, 4 * MiB)
    pushed: dict[str, Path] = {}
    outcomes = []
    for i, delay in enumerate(spread_delays(7, GC_PUSH_ROUNDS, 1.0)):
        site.push(big_tree, f"old-{i}")
        site.run("rm", f"old-{i}").ok()
        push = site.popen("push", big_tree, "-p", "rel", "-j", f"new-{i}")
        time.sleep(delay)
        gc = site.popen("gc")
        (_, push_err), (_, gc_err) = push.communicate(timeout=120), gc.communicate(timeout=120)
        assert push.returncode in (0, 7) and gc.returncode in (0, 7), (push_err, gc_err)
        if push.returncode == 7:
            assert b"gc is running" in push_err
            site.push(big_tree, f"new-{i}")
        if gc.returncode == 7:
            assert b"in progress" in gc_err or b"another gc" in gc_err
        outcomes.append((push.returncode, gc.returncode))
        pushed[f"new-{i}"] = big_tree
        site.assert_verifies()
    site.run("gc").ok()
    assert site.jobs() == sorted(pushed)
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
    def lock_after_a_gc(store):
        if not gc_runs:
            gc_runs.append(machine_a.run("gc").ok())
        with real_lock(store):
            yield

    monkeypatch.setattr(push_module, "push_lock", lock_after_a_gc)
    with machine_b.repo() as repo:
        push_module.push_dir(repo, small_tree, "rel", "new")
    assert json.loads(machine_a.run("balance", "--json").ok().out)["jobs"] == 1
    machine_a.assert_verifies()
    machine_b.assert_verifies()
