"""Faults around the data (issue 21, items 1-3): the forked index, a hung S3 server, stale
locks. Each is injected through real processes: a chained `c3fs run` whose mount daemon is
started while `run` holds the index, SIGSTOP/SIGCONT of the S3 server process, and lock
holders killed -9 on another "host" (a UTS namespace with another hostname)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fusehelp import wait_until
from s3server import MotoServer

from c3fs.store.local import TMP_PREFIX
from reliability.relkit import BIN, Result, Site, mounted


# 1. the forked index ----------------------------------------------------------------------
@pytest.mark.fuse
@pytest.mark.fuse
def test_pull_marks_survive_a_chained_run(site: Site, tmp_path: Path) -> None:
    """`run` holds the index open when it starts the mount daemon for a `datasets:` entry:
    the daemon must not inherit that LMDB environment (it took "already open" for damage and
    rebuilt the index, losing what `pull` had fetched)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * 5000)
    site.push(src, "job_base")
    dest = tmp_path / "pulled"
    assert "job_base" in site.run("pull", "-d", dest).ok().out
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text("project: rel\ndatasets:\n  - ref: /jobs/job_base\n    mount: data\n")
    ran = site.run("run", "-j", "job_next", "--", "cat", "data/weights.bin", cwd=work).ok()
    assert "w" * 5000 in ran.out
    logs = "".join(p.read_text() for p in (site.cache / "mounts").glob("*.log"))
    assert "damaged" not in logs and "already open" not in logs, logs
    pulled = site.run("pull", "-d", dest, "--json").ok()
    assert [item["job"] for item in json.loads(pulled.out)] == ["job_next"], pulled.out


def test_an_index_open_twice_is_not_damage(site: Site, tmp_path: Path) -> None:
    """Opening the index a second time in one process is refused in one line; the index and
    its pull marks stay (it used to be deleted and rebuilt as if damaged)."""
    from c3fs.index import Index, IndexUnavailable, environments_open

    path = tmp_path / "index"
    first = Index(path, "s1")
    try:
        first.local_put("pulled/job_a", b"{}")
        assert environments_open()
        with pytest.raises(IndexUnavailable, match="already open in this process"):
            Index(path, "s1")
        assert first.local_get("pulled/job_a") == b"{}"
    finally:
        first.close()
    again = Index(path, "s1")
    try:
        assert again.local_get("pulled/job_a") == b"{}"
    finally:
        again.close()


# 3. stale locks: two "hosts" (UTS namespaces with their own host names) -------------------
HOLDER = """\
import sys, time
from c3fs.store import locks
from c3fs.store.store import Store, open_backend
store = Store.open(open_backend(sys.argv[1], create=False), create=False)
hold = locks.gc_lock if sys.argv[2] == "gc" else locks.push_lock
with hold(store) as lease:
    print("held", flush=True)
    while not lease.lost:
        time.sleep(0.05)
    print("lost", flush=True)
"""
LEASE = "2"  # seconds: a holder renews every 0.5 s; a dead one is judged after 2


def _can_unshare() -> bool:
    probe = subprocess.run(["unshare", "--uts", "true"], capture_output=True)
    return probe.returncode == 0


needs_uts = pytest.mark.skipif(shutil.which("unshare") is None or not _can_unshare(),
                               reason="needs unshare --uts (root)")


def on_host(host: str, argv: list[str]) -> list[str]:
    """`argv` run in a new UTS namespace whose host name is `host` (another "machine")."""
    return ["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh", *argv]


def hold_lock(site: Site, host: str, kind: str) -> subprocess.Popen:
    """A process of `host` holding the store's gc lock or a push lock (renewing it)."""
    proc = subprocess.Popen(on_host(host, [sys.executable, "-c", HOLDER, site.store, kind]),
                            env=site.env(C3FS_LOCK_LEASE=LEASE), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n", proc.stderr.read()
    return proc


def host_run(site: Site, host: str, *args: str) -> Result:
    proc = subprocess.run(on_host(host, [str(BIN), *args]), env=site.env(C3FS_LOCK_LEASE=LEASE),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def lock_names(site: Site) -> list[str]:
    """The locks in the store: not the temporary file of a renewal that a kill -9 cut short
    (the store never reads one; it is swept after an hour)."""
    return sorted(p.name for p in (site.root / "locks").iterdir()
                  if not p.name.startswith(TMP_PREFIX))


@needs_uts
def test_a_gc_killed_on_one_host_does_not_block_pushes_on_another(site: Site, tmp_path: Path,
                                                                  small_tree: Path) -> None:
    site.push(small_tree, "job_first")
    holder = hold_lock(site, "host-a", "gc")
    live = host_run(site, "host-b", "push", str(small_tree), "-p", "rel", "-j", "job_x",
                    "--lock-wait", "2")  # (a live gc is waited for: 2 s here)
    assert live.code == 7 and "gc is running" in live.err and "on host-a" in live.err, live.err
    assert re.search(r"waited \d+ s, --lock-wait 2\)", live.err), live.err  # (+ a look at
    # the lock: another host's is watched until it changes, up to a quarter of its lease)
    holder.kill()  # kill -9: the lock stays behind, never renewed again
    holder.wait()
    assert lock_names(site) == ["gc"]
    pushed = host_run(site, "host-b", "push", str(small_tree), "-p", "rel", "-j", "job_second")
    assert pushed.code == 0, pushed.err
    assert "removed the expired gc lock" in pushed.err and "host-a" in pushed.err, pushed.err
    assert lock_names(site) == []
    site.assert_verifies()


@needs_uts
def test_gc_removes_push_locks_of_killed_pushes_on_another_host(site: Site,
                                                                small_tree: Path) -> None:
    site.push(small_tree, "job_first")
    holders = [hold_lock(site, "host-a", "push") for _ in range(3)]
    refused = host_run(site, "host-b", "gc")
    assert refused.code == 7 and "3 push(es) in progress" in refused.err, refused.err
    for holder in holders:
        holder.kill()
        holder.wait()
    assert len(lock_names(site)) == 3
    done = host_run(site, "host-b", "gc")
    assert done.code == 0, done.err
    assert done.err.count("removed the expired push lock") == 3, done.err
    assert lock_names(site) == []
    site.assert_verifies()


def test_locks_of_dead_processes_on_this_host_are_removed_at_once(site: Site,
                                                                  small_tree: Path) -> None:
    """No watching needed on the holder's own host: its pid says it is gone."""
    site.push(small_tree, "job_first")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, site.store, "push"],
                              env=site.env(C3FS_LOCK_LEASE="3600"), stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    done = site.run("gc", env={"C3FS_LOCK_LEASE": "3600"}, timeout=60)
    assert done.code == 0 and "removed the expired push lock" in done.err, done.err
    assert lock_names(site) == []


@pytest.mark.parametrize("case", ["pid taken again", "earlier boot", "zombie"])
def test_a_lock_of_this_host_is_its_holders_not_its_pids(site: Site, small_tree: Path,
                                                         case: str) -> None:
    """A pid names the holder only in the boot it was written in, and only while the process
    that has it is the one that started then: after a kill -9 the pid may be another
    process's (a mount's lease lives for days), and after a reboot anyone's."""
    def stat(pid: int) -> list[str]:  # /proc/<pid>/stat from its state on
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()

    site.push(small_tree, "job_first")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    if case == "zombie":  # dead, not yet reaped by its parent (this test)
        other.kill()
        wait_until(lambda: stat(other.pid)[0] == "Z", "the process to be a zombie")
    body = {"version": 1, "kind": "push", "host": os.uname().nodename, "pid": other.pid,
            "boot": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "pidns": os.readlink("/proc/self/ns/pid"), "start": int(stat(os.getpid())[19]),
            "lease": 3600, "beat": 1}
    if case == "earlier boot":
        body.update(boot="an-earlier-boot", start=int(stat(other.pid)[19]))
    (site.root / "locks").mkdir(exist_ok=True)
    (site.root / "locks" / "push-c0ffee").write_text(json.dumps(body))
    try:
        done = site.run("gc", env={"C3FS_LOCK_LEASE": "3600"}, timeout=60)
    finally:
        other.kill()
        other.wait()
    assert done.code == 0 and "removed the expired push lock" in done.err, done.err
    assert lock_names(site) == []


@needs_uts
def test_a_run_of_a_job_id_reserved_on_another_host(site: Site, tmp_path: Path) -> None:
    """`run -j job_x` on host-b while a run of job_x lives on host-a: refused before it runs
    anything, once it has seen host-a renew its reservation (exit 7, naming host-a). Once
    host-a's run is killed -9, its reservation is taken over after one lease unrenewed."""
    work = {name: tmp_path / name for name in ("a", "b")}
    for path in work.values():
        path.mkdir()
    holder = subprocess.Popen(on_host("host-a", [str(BIN), "run", "-C", str(work["a"]), "-j",
                                                 "job_x", "--", "sh", "-c",
                                                 "echo $$ > pid; exec sleep 120"]),
                              env=site.env(C3FS_LOCK_LEASE=LEASE), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (work["a"] / "pid").exists() and (work["a"] / "pid").read_text(),
                   "host-a's job")
        listed = json.loads(host_run(site, "host-b", "unlock", "--list", "--json").ok().out)
        assert [(lock["name"], lock["kind"], lock["host"]) for lock in listed] == \
            [("run-job_x", "run", "host-a")]
        live = host_run(site, "host-b", "run", "-C", str(work["b"]), "-j", "job_x", "--",
                        "touch", "ran")
        assert live.code == 7 and "taken by a run in progress" in live.err, live.err
        assert "on host-a" in live.err and "checking whether it is still running" in live.err
        assert os.listdir(work["b"]) == []
    finally:
        holder.kill()  # kill -9: the reservation stays behind, never renewed again
        holder.wait()
        if (work["a"] / "pid").exists():
            os.kill(int((work["a"] / "pid").read_text()), signal.SIGKILL)
    assert lock_names(site) == ["run-job_x"]
    after = host_run(site, "host-b", "run", "-C", str(work["b"]), "-j", "job_x", "--",
                     "touch", "ran")
    assert after.code == 0, after.err
    assert "removed the expired run lock run-job_x" in after.err and "host-a" in after.err
    assert (work["b"] / "ran").exists() and lock_names(site) == []
    assert site.record("job_x")["host"] == "host-b"


@needs_uts
def test_unlock_lists_and_breaks_locks_naming_the_holder(site: Site, small_tree: Path) -> None:
    site.push(small_tree, "job_first")
    holder = hold_lock(site, "host-a", "gc")
    try:
        listed = json.loads(host_run(site, "host-b", "unlock", "--list", "--json").ok().out)
        assert [(lock["name"], lock["kind"], lock["host"], lock["pid"]) for lock in listed] == \
            [("gc", "gc", "host-a", listed[0]["pid"])] and listed[0]["pid"] > 0
        table = host_run(site, "host-b", "unlock", "--list").ok().out
        assert "gc" in table and "host-a" in table
        alive = host_run(site, "host-b", "unlock", "gc")
        assert alive.code == 7 and "host-a" in alive.err and "--force" in alive.err, alive.err
        assert lock_names(site) == ["gc"]
        broken = host_run(site, "host-b", "unlock", "gc", "--force")
        assert broken.code == 0 and "removed lock gc" in broken.err and "host-a" in broken.err
        assert lock_names(site) == []
        # the holder learns at its next heartbeat that its lock is gone, and says so
        assert holder.stdout.readline() == "lost\n"
        assert "was broken by another process" in holder.stderr.read()
    finally:
        holder.kill()
        holder.wait()
    assert host_run(site, "host-b", "unlock", "--list", "--json").ok().out.strip() == "[]"
    assert host_run(site, "host-b", "unlock", "push-nope").code == 3
    assert host_run(site, "host-b", "unlock", "../config").code == 2


# 2. a hung S3 server (SIGSTOP): one deadline per operation --------------------------------
DEADLINE = 5.0  # C3FS_STORE_DEADLINE for these tests (the default is 60 s)
BOUND = 40.0  # generous: one deadline, its retries' back-off, start-up; before: 120-550 s


def s3_site(tmp_path: Path, s3_url: str) -> Site:
    return Site(s3_url, tmp_path / "cache", {"C3FS_STORE_DEADLINE": str(DEADLINE)})


def hang_when_logged(server: MotoServer, needle: str, proc: subprocess.Popen) -> None:
    """SIGSTOP the server once its request log shows `needle` (a request of the command
    under test has been answered: it is under way), or at once if the command ended."""
    start = server.log_path.stat().st_size
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with open(server.log_path, "rb") as log_file:
            log_file.seek(start)
            if needle.encode() in log_file.read():
                break
        time.sleep(0.01)
    server.pause()


def timed(proc: subprocess.Popen, server: MotoServer, cap: float = 180) -> tuple[float, str]:
    """Seconds until `proc` exits while the server hangs (the server is resumed after `cap`
    seconds at most, so a command that waits for it still ends), and its stderr."""
    started = time.monotonic()
    try:
        proc.wait(cap)
    except subprocess.TimeoutExpired:
        pass
    finally:
        took = time.monotonic() - started
        server.resume()
    _, err = proc.communicate(timeout=120)
    return took, err.decode(errors="replace")


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("c3fs: error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


@pytest.mark.s3
@pytest.mark.slow
def test_push_to_a_hung_server_fails_within_one_deadline(s3_server: MotoServer, s3_url: str,
                                                         tmp_path: Path, big_tree: Path,
                                                         small_tree: Path) -> None:
    """The server hangs once the first pack is stored: the other packs' uploads (bulk
    requests, 120 s timeout each) and the lock's heartbeat share one deadline."""
    site = s3_site(tmp_path, s3_url)
    proc = site.popen("push", big_tree, "-p", "rel", "-j", "job_hung")
    hang_when_logged(s3_server, "PUT /" + s3_url.split("/")[2] + "/c3/packs/", proc)
    took, err = timed(proc, s3_server)
    assert proc.returncode == 5 and "timed out" in one_error_line(err), err
    assert took < BOUND, f"push gave up after {took:.0f} s"
    site.push(small_tree, "job_after")  # the server is back: the next push works
    site.assert_verifies()


@pytest.mark.s3
@pytest.mark.slow
def test_pull_from_a_hung_server_fails_within_one_deadline(s3_server: MotoServer, s3_url: str,
                                                           tmp_path: Path, small_tree: Path) -> None:
    """No index sync per failed read, no queued file waiting a deadline of its own."""
    site = s3_site(tmp_path, s3_url)
    for n in range(4):
        site.push(small_tree, f"job_{n}")
    shutil.rmtree(site.cache)  # a machine that has fetched nothing: every read asks the store
    site.run("ls", "/jobs/").ok()
    proc = site.popen("pull", "-d", tmp_path / "pulled")
    hang_when_logged(s3_server, "GET /" + s3_url.split("/")[2] + "/c3/packs/", proc)
    took, err = timed(proc, s3_server)
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert took < BOUND, f"pull gave up after {took:.0f} s"
    assert len(err.splitlines()) <= 5, err  # not a line per file
    pulled = site.run("pull", "-d", tmp_path / "pulled", "--json").ok()
    assert len(json.loads(pulled.out)) == 4


@pytest.mark.fuse
@pytest.mark.fuse
@pytest.mark.s3
@pytest.mark.slow
def test_a_mounted_read_from_a_hung_server_fails_within_one_deadline(
        s3_server: MotoServer, s3_url: str, tmp_path: Path, small_tree: Path) -> None:
    """Every waiting read gets EIO when the deadline passes, each with one log line naming
    job, path and chunk (no traceback); the reads that follow at once (the kernel's retry
    of the page, `cat`'s next files) fail without waiting again; once the server is back,
    reads work again on the same mount."""
    site = s3_site(tmp_path, s3_url)
    site.push(small_tree, "job_m")
    shutil.rmtree(site.cache)  # nothing cached on this machine
    names = sorted(str(p.relative_to(small_tree)) for p in small_tree.rglob("*")
                   if p.is_file() and not p.is_symlink() and p.stat().st_size)
    with mounted(site, "/jobs/job_m", tmp_path / "mnt") as mnt:
        s3_server.pause()
        readers = [subprocess.Popen(["cat", *args], cwd=mnt, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
                   for args in (["weights-1.bin"], names)]  # one file; every file
        started = time.monotonic()
        for reader in readers:
            try:
                reader.wait(180)
            except subprocess.TimeoutExpired:
                pass
        took = time.monotonic() - started
        s3_server.resume()
        for reader in readers:
            _, err = reader.communicate(timeout=120)
            assert reader.returncode == 1 and b"Input/output error" in err, err
        assert took < BOUND, f"the reads gave up after {took:.0f} s"
        log_text = "".join(p.read_text() for p in (site.cache / "mounts").glob("*.log"))
        assert "Traceback" not in log_text and "unexpected" not in log_text, log_text
        failed = [line for line in log_text.splitlines() if "failed (EIO)" in line]
        assert failed and all("job job_m" in line and "chunk " in line for line in failed)
        assert any("weights-1.bin" in line for line in failed)
        # recovered as soon as the daemon's probe is answered: the same mount
        wait_until(lambda: _reads(mnt / "weights-1.bin"), "a read after SIGCONT", 10)
        for name in names:
            assert (mnt / name).read_bytes() == (small_tree / name).read_bytes()


def _reads(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True


class _Hanging:
    """A backend whose requests block until released (a hung server)."""

    url = "test://hanging"
    capabilities: frozenset[str] = frozenset()

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.calls = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls += 1
        self.release.wait(30)
        return b"x"

    def size(self, key: str) -> int:
        self.release.wait(30)
        return 1


def test_one_deadline_is_shared_by_an_operations_requests() -> None:
    """Requests waiting at once share one deadline (not one each); once spent, a command's
    later requests fail at once; a mount's deadline starts anew when a probe is answered."""
    from concurrent.futures import ThreadPoolExecutor

    from c3fs.store.backend import Deadline, RetryingBackend, StoreTimeout

    inner = _Hanging()
    backend = RetryingBackend(inner, deadline=Deadline(1.0))
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        waits = [pool.submit(backend.get, f"k{n}") for n in range(4)]
        for wait in waits:
            with pytest.raises(StoreTimeout, match="within 1 s"):
                wait.result()
    assert time.monotonic() - started < 3  # four requests, one deadline
    calls = inner.calls
    with pytest.raises(StoreTimeout):
        backend.get("later")
    assert inner.calls == calls  # spent: not even asked
    mount = RetryingBackend(inner, deadline=Deadline(1.0, rearm=True))
    with pytest.raises(StoreTimeout):
        mount.get("k")
    calls = inner.calls
    with pytest.raises(StoreTimeout):
        mount.get("again")  # at once, while the probe waits
    assert inner.calls == calls and mount.deadline.spent
    inner.release.set()  # the store answers again; the probe (size) sees it
    wait_until(lambda: not mount.deadline.spent, "the probe", 10)
    assert mount.get("k") == b"x"
