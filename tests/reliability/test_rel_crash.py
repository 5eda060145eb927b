"""Crashes and full disks: `kill -9` of push, run (during its upload) and gc at seeded random
moments spread over a whole run, and a disk that fills up under push and cp.

After every kill: the store verifies, every pack left behind is whole, no partial job is
visible, and running the same command again completes and writes only what was missing
(its new bytes + the killed run's packs ~= one full run).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.relkit import (
    KiB,
    MiB,
    Site,
    copy_site,
    ext4_disk,
    fill,
    kill_after,
    leftovers,
    make_local_store,
    needs_root,
    spread_delays,
    tmpfs,
    tree_digest,
)

PACK_TARGET = 8 * MiB  # ~10 packs per full push: kills land between pack writes too
SOAK_POINTS = 20
FAST_POINTS = 3


@dataclass
class Reference:
    duration: float  # of the whole command (push) or of the upload alone (run)
    stored: int  # bytes of packs one complete run writes
    files: int


def fresh_site(root: Path, bystander: Path) -> Site:
    """A store that already holds a job sharing chunks with the one we will kill."""
    site = Site(str(root / "store"), root / "cache")
    make_local_store(site.root, PACK_TARGET)
    site.push(bystander, "bystander")
    return site


def assert_store_consistent(site: Site) -> None:
    """verify passes, and every pack in the store has a whole, valid trailer."""
    site.assert_verifies()
    with site.repo() as repo:
        for pack_id, size in site.packs().items():
            repo.store.pack_entries(pack_id, size)  # raises FormatError if torn


def assert_repaired_by_rerun(site: Site, left: int, rerun: dict, ref: Reference) -> None:
    """The rerun wrote only what the killed run had not: together they make one full run."""
    total = left + rerun["stored_delta"]
    assert abs(total - ref.stored) <= ref.stored // 100 + 64 * KiB, (left, rerun, ref)
    if left > 0:
        assert rerun["stored_delta"] < ref.stored
    assert rerun["files"] == ref.files
    site.assert_verifies()


def stage(left: int, ref: Reference) -> str:
    """Where a kill landed, judged by the packs it left: none, some, or all of them."""
    if left == 0:
        return "killed before any pack"
    return "killed after all packs" if left >= ref.stored * 0.99 else "killed mid-upload"


def soak(what: str, delays: list[float], once: Callable[[int, float], str]) -> None:
    """`once(i, delay)` for each delay, scaled down after each kill that came too late (the
    command had completed: it ran faster than its reference, measured under other load), so
    that most kills land while it runs however the machine's load moves."""
    scale, outcomes = 1.0, []
    for i, delay in enumerate(delays):
        outcomes.append(once(i, delay * scale))
        if outcomes[-1] == "complete":
            scale *= 0.6
    summarize(what, outcomes)


def summarize(what: str, outcomes: list[str]) -> None:
    counts = {name: outcomes.count(name) for name in sorted(set(outcomes))}
    print(f"\n{what}: {len(outcomes)} points: {counts}")
    assert len(outcomes) - outcomes.count("complete") >= len(outcomes) // 2, counts


# push ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def push_ref(big_tree: Path, tmp_path_factory) -> Reference:
    site = fresh_site(tmp_path_factory.mktemp("push-ref"), big_tree / "step-000")
    started = time.monotonic()
    record = site.push(big_tree, "victim")
    return Reference(time.monotonic() - started, record["stored_delta"], record["files"])


def kill_push_once(root: Path, src: Path, ref: Reference, delay: float) -> str:
    site = fresh_site(root, src / "step-000")
    before = site.pack_bytes()
    outcome = kill_after(site.popen("push", src, "-p", "rel", "-j", "victim", "--json"), delay)
    assert_store_consistent(site)
    if "victim" in site.jobs():  # killed after registering (or not at all): the job is whole
        assert site.record("victim")["files"] == ref.files
        assert "already exists" in site.run("push", src, "-p", "rel", "-j", "victim").one_line_error()
        return "complete"
    assert outcome.killed, outcome.err
    left = site.pack_bytes() - before
    assert_repaired_by_rerun(site, left, site.push(src, "victim"), ref)
    shutil.rmtree(root)
    return stage(left, ref)


def kill_when_all_packs_written(site: Site, proc, ref: Reference, before: int) -> bool:
    """SIGKILL `proc` the moment its last pack is in the store: between the packs and the
    ref (fsync, index, create-only ref) - the latest a kill can land. False if it finished."""
    while proc.poll() is None:
        if site.pack_bytes() - before >= ref.stored * 0.99:
            proc.kill()
            proc.communicate()
            return True
        time.sleep(0.001)
    proc.communicate()
    return False


def test_push_killed_after_its_last_pack(tmp_path: Path, big_tree: Path,
                                         push_ref: Reference) -> None:
    site = fresh_site(tmp_path, big_tree / "step-000")
    before = site.pack_bytes()
    proc = site.popen("push", big_tree, "-p", "rel", "-j", "victim")
    assert kill_when_all_packs_written(site, proc, push_ref, before), "the push finished first"
    assert_store_consistent(site)
    assert "victim" not in site.jobs()
    rerun = site.push(big_tree, "victim")
    assert rerun["stored_delta"] < push_ref.stored // 100  # nothing left to write but a ref
    assert_repaired_by_rerun(site, site.pack_bytes() - before - rerun["stored_delta"], rerun,
                             push_ref)


def soak_push(tmp_path: Path, src: Path, ref: Reference, points: int, seed: int) -> None:
    soak("push kill -9", spread_delays(seed, points, 0.9 * ref.duration),
         lambda i, delay: kill_push_once(tmp_path / f"k{i}", src, ref, delay))


def test_push_killed_at_3_points(tmp_path: Path, big_tree: Path, push_ref: Reference) -> None:
    soak_push(tmp_path, big_tree, push_ref, FAST_POINTS, seed=3)


@pytest.mark.slow
def test_push_killed_at_20_points(tmp_path: Path, big_tree: Path, push_ref: Reference) -> None:
    soak_push(tmp_path, big_tree, push_ref, SOAK_POINTS, seed=20)


# run (killed during its upload) --------------------------------------------------------------
def start_run(site: Site, root: Path, src: Path) -> tuple:
    """`c3fs run -j victim` of a job that hard-links `src` into its artifacts dir; returns
    the process once the job's command has finished (its upload has begun)."""
    marker = root / "command-done"
    marker.unlink(missing_ok=True)
    (root / "work").mkdir(exist_ok=True)
    (root / "tmp").mkdir(exist_ok=True)
    script = f'cp -al "{src}/." "$C3_ARTIFACTS_DIR/" && touch "{marker}"'
    proc = site.popen("run", "-p", "rel", "-j", "victim", "--", "sh", "-c", script,
                      cwd=root / "work", env={"TMPDIR": str(root / "tmp")})
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job's command did not finish"
        time.sleep(0.005)
    return proc, time.monotonic()


@pytest.fixture(scope="module")
def run_ref(big_tree: Path, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("run-ref")
    site = fresh_site(root, big_tree / "step-000")
    proc, upload_started = start_run(site, root, big_tree)
    assert proc.wait(timeout=120) == 0, proc.communicate()
    duration = time.monotonic() - upload_started
    record = site.record("victim")
    assert record["status"] == "SUCCEEDED"
    return Reference(duration, record["stored_delta"], record["files"])


def kill_run_once(root: Path, src: Path, ref: Reference, delay: float) -> str:
    site = fresh_site(root, src / "step-000")
    before = site.pack_bytes()
    proc, _ = start_run(site, root, src)
    outcome = kill_after(proc, delay)
    assert_store_consistent(site)
    if "victim" in site.jobs():
        assert site.record("victim")["files"] == ref.files
        return "complete"
    assert outcome.killed, outcome.err
    left = site.pack_bytes() - before
    proc, _ = start_run(site, root, src)
    assert proc.wait(timeout=120) == 0, proc.communicate()
    record = site.record("victim")
    assert record["status"] == "SUCCEEDED"
    assert_repaired_by_rerun(site, left, record, ref)
    shutil.rmtree(root)
    return stage(left, ref)


def soak_run(tmp_path: Path, src: Path, ref: Reference, points: int, seed: int) -> None:
    soak("run kill -9 during upload", spread_delays(seed, points, 0.8 * ref.duration),
         lambda i, delay: kill_run_once(tmp_path / f"k{i}", src, ref, delay))


def test_run_killed_during_upload_at_3_points(tmp_path: Path, big_tree: Path,
                                              run_ref: Reference) -> None:
    soak_run(tmp_path, big_tree, run_ref, FAST_POINTS, seed=4)


@pytest.mark.slow
def test_run_killed_during_upload_at_20_points(tmp_path: Path, big_tree: Path,
                                               run_ref: Reference) -> None:
    soak_run(tmp_path, big_tree, run_ref, SOAK_POINTS, seed=21)


# gc (killed mid-sweep) ------------------------------------------------------------------------
GC_JOBS = 6
GC_REMOVED = ("gc-0", "gc-2", "gc-3")


def gc_sources(root: Path) -> dict[str, Path]:
    """Six jobs over a pool of shared files (each job: 4 pool files, a file of its own and
    small metrics), pushed in order, so the later jobs' chunks sit in the earlier jobs' packs."""
    import random

    pool = [random.Random(100 + i).randbytes(768 * KiB) + bytes([i]) * 768 * KiB
            for i in range(2 * GC_JOBS + 2)]
    sources = {}
    for job in range(GC_JOBS):
        src = root / f"gc-{job}"
        (src / "metrics").mkdir(parents=True)
        for k in range(4):
            (src / f"pool-{2 * job + k}.bin").write_bytes(pool[2 * job + k])
        (src / "own.bin").write_bytes(random.Random(job).randbytes(2 * MiB))
        for m in range(20):
            (src / "metrics" / f"m{m}.txt").write_bytes(b"job %d step %d\n" % (job, m) * 200)
        sources[f"gc-{job}"] = src
    return sources


@dataclass
class GcBase:
    site: Site
    sources: dict[str, Path]
    duration: float
    clean_bytes: int  # pack bytes after one complete gc


@pytest.fixture(scope="module")
def gc_base(tmp_path_factory) -> GcBase:
    root = tmp_path_factory.mktemp("gc-base")
    sources = gc_sources(root / "src")
    site = Site(str(root / "store"), root / "cache")
    make_local_store(site.root, 1 * MiB)  # many small packs, most of them partly live
    for job, src in sources.items():
        site.push(src, job)
    site.run("rm", *GC_REMOVED).ok()
    reference = copy_site(site, root / "ref")
    started = time.monotonic()
    report = json.loads(reference.run("gc", "--json").ok().out)
    duration = time.monotonic() - started
    assert report["packs_repacked"] > 0 and report["packs_deleted"] > 0, report
    return GcBase(site, sources, duration, reference.pack_bytes())


def kill_gc_once(root: Path, base: GcBase, delay: float) -> bool:
    site = copy_site(base.site, root)
    outcome = kill_after(site.popen("gc"), delay)
    remaining = sorted(set(base.sources) - set(GC_REMOVED))
    assert site.jobs() == remaining
    assert_store_consistent(site)
    site.run("gc").ok()
    assert json.loads(site.run("gc", "--dry-run", "--json").ok().out)["bytes_freed"] == 0
    assert abs(site.pack_bytes() - base.clean_bytes) <= base.clean_bytes // 50 + 64 * KiB
    site.assert_verifies()
    site.run("cp", "-r", f"/jobs/{remaining[0]}", root / "copy").ok()
    assert tree_digest(root / "copy") == tree_digest(base.sources[remaining[0]])
    shutil.rmtree(root)
    return outcome.killed


def soak_gc(tmp_path: Path, base: GcBase, points: int, seed: int) -> None:
    soak("gc kill -9", spread_delays(seed, points, base.duration),
         lambda i, delay: "killed" if kill_gc_once(tmp_path / f"k{i}", base, delay) else "complete")


def test_gc_killed_at_3_points(tmp_path: Path, gc_base: GcBase) -> None:
    soak_gc(tmp_path, gc_base, FAST_POINTS, seed=5)


@pytest.mark.slow
def test_gc_killed_at_20_points(tmp_path: Path, gc_base: GcBase) -> None:
    soak_gc(tmp_path, gc_base, SOAK_POINTS, seed=22)


# full disks ------------------------------------------------------------------------------------
@needs_root
def test_push_on_a_full_disk(tmp_path: Path, big_tree: Path, small_tree: Path) -> None:
    with tmpfs(tmp_path / "disk", "128m") as disk:
        site = Site(str(disk / "store"), tmp_path / "cache")
        site.push(small_tree, "bystander")
        fill(disk / "filler", 72 * MiB)
        error = site.run("push", big_tree, "-p", "rel", "-j", "victim").one_line_error()
        assert "disk full" in error and str(disk / "store") in error
        assert site.jobs() == ["bystander"]
        assert_store_consistent(site)
        (disk / "filler").unlink()
        assert site.push(big_tree, "victim")["files"] == sum(p.is_file() and not p.is_symlink() for p in big_tree.rglob("*"))
        site.assert_verifies()


@needs_root
@pytest.mark.parametrize("filesystem", ["ext4", "tmpfs"])
def test_home_full_store_and_index_on_one_disk(tmp_path: Path, small_tree: Path,
                                               filesystem: str) -> None:
    """The default layout: store and index cache both under a home dir that fills up (on
    tmpfs, LMDB's mapped lock file used to turn a full disk into SIGBUS)."""
    disk = ext4_disk(tmp_path / "home", 32 * MiB) if filesystem == "ext4" else \
        tmpfs(tmp_path / "home", "32m")
    with disk as home:
        site = Site(str(home / "store"), home / "cache")
        site.push(small_tree, "bystander")
        shutil.rmtree(site.cache)  # the next command must rebuild the index: LMDB writes
        fill(home / "filler")
        for args in (("ls", "/jobs/"), ("push", small_tree, "-p", "rel", "-j", "victim")):
            error = site.run(*args).one_line_error()
            assert "disk full" in error, error
        (home / "filler").unlink()
        assert "bystander" in site.jobs()
        site.assert_verifies()


@needs_root
def test_cp_onto_a_full_disk(tmp_path: Path, big_tree: Path, site: Site) -> None:
    site.push(big_tree, "job")
    with tmpfs(tmp_path / "dest", "48m") as dest:
        error = site.run("cp", "-r", "/jobs/job", dest / "out").one_line_error()
        assert "No space left" in error or "disk full" in error
        assert leftovers(dest) == []
        source = tree_digest(big_tree)
        for rel, digest in tree_digest(dest / "out").items():  # whatever is there is whole
            assert digest == source[rel], rel
