"""rm and gc of a job that is mounted (c3fs/store/mounts.py): rm refuses it unless --force,
gc keeps what a live mount reads, a mount killed -9 holds nothing. Real mounts, real store;
another host is a UTS namespace with its own host name."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from fusehelp import C3FS, alive, daemon_pids, force_unmount, mount, run_c3fs, stop, wait_until

pytestmark = pytest.mark.fuse

JOB = "job_in_use"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A store holding JOB: ckpt/weights.bin (3 MiB, random: one pack with the trees)."""
    src = tmp_path / "src"
    (src / "ckpt").mkdir(parents=True)
    (src / "ckpt" / "weights.bin").write_bytes(random.Random(7).randbytes(3 * 1024 * 1024))
    (src / "note.txt").write_bytes(b"stage one\n")
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"))
    run_c3fs("push", str(src), "-p", "p", "-j", JOB, env=env)
    return env


def weights(tmp_path: Path) -> bytes:
    return (tmp_path / "src" / "ckpt" / "weights.bin").read_bytes()


def leases(env: dict[str, str]) -> list[dict]:
    return json.loads(run_c3fs("unlock", "--list", "--json", env=env).stdout)


def jobs(env: dict[str, str]) -> list[str]:
    return [name.rstrip("/") for name in run_c3fs("ls", "/jobs/", env=env).stdout.split()]


def test_rm_of_a_mounted_job_is_refused_and_gc_keeps_what_the_mount_reads(
        env: dict[str, str], tmp_path: Path) -> None:
    with mount(env, tmp_path / "m", f"/jobs/{JOB}") as m:
        [lease] = leases(env)
        assert (lease["kind"], lease["mountpoint"]) == ("mount", str(m))
        refused = run_c3fs("rm", JOB, env=env, check=False)
        assert refused.returncode == 7, refused.stderr
        assert refused.stderr.splitlines() == [
            f"c3fs: error: job {JOB} is mounted at {m}: unmount it first, or rm --force "
            "(gc keeps what a mount reads); nothing was removed"]
        assert JOB in jobs(env)
        forced = run_c3fs("rm", "--force", JOB, env=env)
        assert f"removed job {JOB}" in forced.stderr
        assert f"job {JOB} is mounted at {m}: gc keeps what the mount reads" in forced.stderr
        assert JOB not in jobs(env)
        kept = run_c3fs("gc", env=env).stdout
        assert kept.startswith("freed 0 B") and "kept 1 mounted tree of removed jobs" in kept
        # never read before: its chunks come from the store now, not from a cache
        assert (m / "ckpt" / "weights.bin").read_bytes() == weights(tmp_path)
        assert (m / "note.txt").read_bytes() == b"stage one\n"
    wait_until(lambda: not leases(env), "the unmounted daemon to remove its lease")
    freed = run_c3fs("gc", env=env).stdout
    assert "1 pack deleted" in freed and "kept" not in freed, freed


def test_a_mount_killed_by_kill_9_holds_nothing(env: dict[str, str], tmp_path: Path) -> None:
    with mount(env, tmp_path / "m", f"/jobs/{JOB}/") as m:
        [pid] = daemon_pids(m)
        stop(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), "the daemon to die")
        assert len(leases(env)) == 1  # left behind, and judged by its pid at once
        removed = run_c3fs("rm", JOB, env=env, timeout=30)
        assert "removed the expired mount lock" in removed.stderr and str(m) in removed.stderr
        assert f"removed job {JOB}" in removed.stderr
        assert not leases(env)
        assert "1 pack deleted" in run_c3fs("gc", env=env).stdout


def test_a_folder_mounted_by_a_chained_run_reads_on_after_rm_force_and_gc(
        env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text(f"project: p\ndatasets:\n  - ref: /jobs/{JOB}/ckpt\n"
                              "    mount: data\n")
    script = (f"{C3FS} rm {JOB} 2>&1; echo rm=$?; {C3FS} rm -f {JOB} 2>/dev/null && {C3FS} gc"
              f" && cmp data/weights.bin {tmp_path / 'src' / 'ckpt' / 'weights.bin'} && echo same")
    ran = subprocess.run([C3FS, "run", "-j", "job_next", "--", "sh", "-c", script], env=env,
                         cwd=work, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == (f"c3fs: error: job {JOB} is mounted at {work / 'data'}: unmount it "
                        "first, or rm --force (gc keeps what a mount reads); nothing was removed")
    assert lines[1] == "rm=7" and lines[3:] == ["same", "job_next"]
    # what the folder holds is kept; the job's root tree and note.txt are not (repacked out)
    assert lines[2].startswith("freed ") and lines[2].endswith(
        ": 0 packs deleted, 1 repacked into 1; kept 1 mounted tree of removed jobs "
        "(c3fs unlock --list)"), lines[2]
    assert not leases(env)


def test_a_job_removed_while_mounting_is_not_mounted(env: dict[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount's lease is written, then the ref read again: a job removed (or pushed
    again) in between is refused, its lease removed (else a gc could miss it)."""
    from c3fs.errors import NotFound
    from c3fs.objects.job import JOB as KIND
    from c3fs.repo import Repo
    from c3fs.store import mounts
    from c3fs.store.locks import list_locks

    monkeypatch.setenv("C3FS_CACHE_DIR", env["C3FS_CACHE_DIR"])
    repo = Repo.open(env["C3FS_STORE"], create=False)
    try:
        root = repo.record(KIND, JOB).root_id
        lease = mounts.register(repo.store, (KIND, JOB), root, root, "/m")
        assert [lock.mountpoint for lock in list_locks(repo.store)] == ["/m"]
        lease.release()
        with pytest.raises(NotFound, match="pushed again while mounting"):
            mounts.register(repo.store, (KIND, JOB), root, bytes(32), "/m")
        repo.store.delete_ref(KIND, JOB)
        with pytest.raises(NotFound, match=f"job {JOB} was removed while mounting"):
            mounts.register(repo.store, (KIND, JOB), root, root, "/m")
        assert list_locks(repo.store) == []
    finally:
        repo.close()


# another host ------------------------------------------------------------------------------
def _can_unshare() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--uts", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare --uts (root)")
def test_a_mount_on_another_host_is_judged_by_its_lease(env: dict[str, str],
                                                        tmp_path: Path) -> None:
    """A mount of host-a renews its lease (every 0.5 s here): rm here refuses, naming the
    host; gc keeps what it reads. Killed -9, it is judged gone once its lease (2 s) passes
    unrenewed, and gc frees its bytes."""
    env = dict(env, C3FS_LOCK_LEASE="2")
    m = tmp_path / "m"
    m.mkdir()
    subprocess.run(["unshare", "--uts", "sh", "-c", f"hostname host-a && exec {C3FS} mount "
                    f"/jobs/{JOB} {m}"], env=env, check=True, capture_output=True, timeout=60)
    try:
        refused = run_c3fs("rm", JOB, env=env, check=False)
        assert refused.returncode == 7 and f"mounted at {m} on host-a" in refused.stderr
        run_c3fs("rm", "--force", JOB, env=env)
        assert "kept 1 mounted tree" in run_c3fs("gc", env=env).stdout
        assert (m / "ckpt" / "weights.bin").read_bytes() == weights(tmp_path)
        [pid] = daemon_pids(m)
        stop(pid, signal.SIGKILL)
        wait_until(lambda: not alive(pid), "the daemon to die")
        freed = run_c3fs("gc", env=env)
        assert "1 pack deleted" in freed.stdout, freed.stdout
        assert "removed the expired mount lock" in freed.stderr and "host-a" in freed.stderr
        assert not leases(env)
    finally:
        force_unmount(m)
