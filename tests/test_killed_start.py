"""`c3fs mount` and `c3fs run` killed while they start (issue 21): no dead mount ("Transport
endpoint is not connected"), no orphan daemon, no leaked /tmp/c3fs-run-* dir once the next
command ran. Real processes, real mounts; every mount torn down even when a test fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fusehelp import (
    C3FS,
    alive,
    daemon_pids,
    force_unmount,
    fuse_works,
    mounted,
    stop,
    wait_until,
)

pytestmark = [pytest.mark.fuse,
              pytest.mark.skipif(not fuse_works(), reason="needs /dev/fuse and fusermount3")]


@pytest.fixture
def site(c3fs_bin, store_env, tmp_path: Path, monkeypatch) -> Path:
    """A job `prev` in the test's store, a private TMPDIR, and a working dir whose .c3
    mounts `prev` at `data`; returns the working dir."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(100_000))
    c3fs_bin("push", str(src), "-p", "p", "-j", "prev").ok()
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text("datasets:\n  - ref: /jobs/prev\n    mount: data\n")
    yield work
    force_unmount(work / "data")


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def same_command(argv: list[str]) -> list[int]:
    """Live processes running `argv` (a forked mount daemon keeps its parent's command line)."""
    want = [os.fsencode(a) for a in argv]
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:  # the script's interpreter comes first: `python3 .../c3fs mount ...`
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:-1]
                if args[-len(want):] == want and alive(int(entry)):
                    found.append(int(entry))
            except OSError:
                pass
    return found


def answers(path: Path) -> bool:
    try:
        os.listdir(path)  # not stat: the kernel may answer that from its cache
        return True
    except OSError:
        return False


def run_dirs(tmp_path: Path) -> list[str]:
    return [n for n in os.listdir(tmp_path / "tmp") if n.startswith("c3fs-run-")]


# c3fs mount ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("point", ["before-the-mount-exists", "mounted-not-acknowledged"])
def test_a_mount_killed_during_start_leaves_nothing(site: Path, tmp_path: Path,
                                                    point: str, sig: int) -> None:
    """The daemon is frozen (SIGSTOP) before it mounts, or `c3fs mount` is frozen once the
    mount exists, so that the signal lands at that point every time. A start that ended
    before the freeze (the mount existed already: a busy machine let the whole start run
    between two polls) proves nothing: it is undone and tried again."""
    m = tmp_path / "m"
    m.mkdir()
    for _ in range(ATTEMPTS):
        if _kill_during_start(m, point, sig):
            return
    pytest.fail(f"in {ATTEMPTS} attempts the start never stopped before its mount existed")


ATTEMPTS = 10


def _kill_during_start(m: Path, point: str, sig: int) -> bool:
    """One attempt; False if the freeze came too late (the mount existed already)."""
    argv = [C3FS, "mount", "/jobs/prev", str(m)]
    caller = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    daemons: list[int] = []
    try:
        # not the caller, nor its first fork (parent: the caller), nor a process gone
        # between the listing and the look at its parent (ppid 0): that first fork exits at
        # once, and once taken for the daemon, its death passed for the daemon's exit
        _poll(lambda: daemons.extend(p for p in daemon_pids(m) if p != caller.pid
                                     and ppid(p) not in (0, caller.pid)) or daemons,
              "the daemon")
        frozen = daemons[0] if point == "before-the-mount-exists" else caller.pid
        os.kill(frozen, signal.SIGSTOP)
        if mounted(m):  # the daemon had mounted, the caller may have acknowledged it
            return False
        if point == "mounted-not-acknowledged":
            wait_until(lambda: mounted(m), "the mount")
        caller.send_signal(sig)
        caller.send_signal(signal.SIGCONT)  # a frozen caller gets its SIGTERM now
        caller.wait()
        if frozen != caller.pid:  # (a daemon never frozen may be gone already: that is the point)
            os.kill(frozen, signal.SIGCONT)
        # every process serving `m`, not only the one caught: a start that went through
        # `python -m c3fs.fuse` (the caller had a thread) has one more fork on the way. A bound
        # for a hang, not a timing: on a loaded machine (two suites at once) the daemon's
        # unmount and exit once took longer than the default 15 s
        wait_until(lambda: not daemon_pids(m), "the daemon to unmount and exit", 60.0)
        assert not mounted(m), f"left mounted ({_state(m)}); the daemon's log:\n{_log(m)}"
        return True
    finally:
        for pid in daemons:
            stop(pid, signal.SIGCONT)
            stop(pid)  # a too-late attempt's daemon serves a mount: SIGTERM unmounts it
        caller.kill()
        caller.wait()
        for pid in daemons:
            wait_until(lambda pid=pid: not alive(pid), "the daemon to exit", 60.0)
        force_unmount(m)


def _state(m: Path) -> str:
    return "it answers: an orphan" if answers(m) else "it does not answer: a dead mount"


def _log(m: Path) -> str:
    """The daemons' log for mountpoint `m` (c3fs.fuse.default_log_file), under the cache dir."""
    logs = sorted(Path(os.environ["C3FS_CACHE_DIR"], "mounts").glob(f"{m.name}-*.log"))
    return "".join(p.read_text(errors="replace")[-4000:] for p in logs) or "(none)"


def _poll(predicate, what: str, deadline: float = 30.0) -> None:
    """wait_until without its backoff: the daemon must be caught within a millisecond."""
    end = time.monotonic() + deadline
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")
        time.sleep(0.0005)


def kill_mount_once(m: Path, delay: float, sig: int) -> str:
    """`sig` to `c3fs mount` `delay` s into its start; once what it started settles: no dead
    mount, and no daemon unless its mount answers (the start had ended: the mount was
    acknowledged). Returns what the kill met."""
    argv = [C3FS, "mount", "/jobs/prev", str(m)]
    caller = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    finished = caller.poll() is not None
    caller.send_signal(sig)
    caller.wait()
    def settled() -> bool:  # a whole mount (one daemon, answering), or nothing at all
        daemons = same_command(argv)
        if mounted(m):
            return answers(m) and len(daemons) == 1
        return not daemons

    # (a daemon the killed start is stopping can answer a moment before it unmounts and
    # exits: a state on the way to "nothing"; a dead mount never settles, and fails here)
    wait_until(settled, "no daemon and no mount, or one daemon whose mount answers")
    try:
        if mounted(m):
            return "finished" if finished else "acknowledged"
        return "finished" if finished else "nothing"
    finally:
        force_unmount(m)
        wait_until(lambda: not same_command(argv), "the daemon to exit")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_mount_killed_at_many_points_of_its_start(site: Path, tmp_path: Path, sig: int) -> None:
    m = tmp_path / "m"
    m.mkdir()
    started = time.monotonic()
    subprocess.run([C3FS, "mount", "/jobs/prev", str(m)], check=True)
    full = time.monotonic() - started
    force_unmount(m)
    rng = random.Random(sig)
    met = [kill_mount_once(m, rng.uniform(0, full), sig) for _ in range(12)]
    print(f"mount {signal.Signals(sig).name} during start-up:",
          {k: met.count(k) for k in sorted(set(met))})
    assert met.count("nothing") > 0  # some kills met the start itself


# c3fs run -----------------------------------------------------------------------------------
def test_the_next_run_cleans_up_after_a_killed_run(c3fs_bin, site: Path, tmp_path: Path) -> None:
    """kill -9 of `c3fs run` and of its command leave the dataset mounted by an orphan
    daemon and the run's temp dir: the next run unmounts it, removes the dir, says so."""
    argv = [C3FS, "run", "-j", "victim", "--", "sh", "-c", "touch started; exec sleep 60"]
    victim = subprocess.Popen(argv, cwd=site, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (site / "started").exists(), "the job's command")
        [state] = run_dirs(tmp_path)
        owner = json.loads((tmp_path / "tmp" / state / "owner.json").read_text())
        victim.kill()
        os.kill(owner["command"], signal.SIGKILL)
        assert mounted(site / "data") and answers(site / "data")  # orphaned, for now
        res = c3fs_bin("run", "-j", "next", "--", "ls", "data", cwd=site).ok()
    finally:
        victim.kill()
        victim.wait()
    assert "an earlier c3fs run of job victim" in res.err and "was killed" in res.err
    assert f"unmounted {site / 'data'}" in res.err
    assert "weights.bin" in res.out  # the new run mounted it again
    assert not mounted(site / "data") and run_dirs(tmp_path) == []
    wait_until(lambda: not same_command(argv), "the orphan daemon to exit")


def test_a_dead_mount_at_a_dataset_mountpoint_is_cleared(c3fs_bin, site: Path) -> None:
    (site / "data").mkdir()
    subprocess.run([C3FS, "mount", "/jobs/prev", str(site / "data")], check=True)
    [daemon] = daemon_pids(site / "data")
    os.kill(daemon, signal.SIGKILL)
    wait_until(lambda: not alive(daemon), "the daemon to die")
    assert mounted(site / "data") and not answers(site / "data")
    res = c3fs_bin("run", "-j", "after", "--", "ls", "data", cwd=site).ok()
    assert f"unmounted a dead c3fs mount at {site / 'data'}" in res.err
    assert "weights.bin" in res.out and not mounted(site / "data")


def kill_run_during_start(c3fs_bin, site: Path, tmp_path: Path, i: int, delay: float,
                          after_dir: bool) -> str:
    """kill -9 `c3fs run` `delay` s after it started, let what it left settle, run again;
    then nothing may be left: no mount, no daemon, no temp dir. Returns what the kill met."""
    argv = [C3FS, "run", "-j", f"killed{i}", "--", "true"]
    victim = subprocess.Popen(argv, cwd=site, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    if after_dir:  # count from when the run's temp dir appears: its mounts come next
        wait_until(lambda: run_dirs(tmp_path) or victim.poll() is not None, "the run dir",
                   deadline=60)
    time.sleep(delay)
    finished = victim.poll() is not None
    victim.kill()
    victim.wait()
    # a daemon still starting unmounts itself; one acknowledged stays, mounted and alive. A
    # daemon started from a fresh interpreter (the run had threads or the index open) has
    # its own command line: it is found by its mountpoint.
    wait_until(lambda: not (same_command(argv) or daemon_pids(site / "data"))
               or (mounted(site / "data") and answers(site / "data")), "the daemon")
    met = ("finished" if finished else "mounted" if mounted(site / "data") else
           "left a dir" if run_dirs(tmp_path) else "nothing")
    c3fs_bin("run", "-j", f"next{i}", "--", "true", cwd=site).ok()
    assert not mounted(site / "data"), met
    left = run_dirs(tmp_path)
    assert left == [], (met, left, [os.listdir(tmp_path / "tmp" / d) for d in left],
                        [(tmp_path / "tmp" / d / "owner.json").read_text() for d in left
                         if (tmp_path / "tmp" / d / "owner.json").exists()])
    wait_until(lambda: not same_command(argv), "the killed run's daemons to exit")
    return met


@pytest.mark.slow
def test_run_killed_at_many_points_of_its_start(c3fs_bin, site: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.Popen([C3FS, "run", "-j", "timing", "--", "true"], cwd=site,
                            stdout=subprocess.DEVNULL)
    wait_until(lambda: run_dirs(tmp_path), "the run dir", deadline=60)
    before_dir = time.monotonic() - started
    assert proc.wait(timeout=60) == 0
    full = time.monotonic() - started
    rng = random.Random(21)
    met = [kill_run_during_start(c3fs_bin, site, tmp_path, i, rng.uniform(0, before_dir), False)
           for i in range(6)]
    met += [kill_run_during_start(c3fs_bin, site, tmp_path, i, rng.uniform(0, full - before_dir),
                                  True) for i in range(6, 20)]
    print("run kill -9 during start-up:", {m: met.count(m) for m in sorted(set(met))})
    assert met.count("finished") < len(met)  # most kills met a start-up, not the end
