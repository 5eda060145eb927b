"""The artifact lifecycle end to end through the real CLI in subprocesses (issue 3)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import C3FS_BIN, CliResult
from fusehelp import wait_until
from gckit import gc_holding_the_store

JOB_SCRIPT = textwrap.dedent("""\
    import os, json
    out = os.environ["C3_ARTIFACTS_DIR"]
    assert os.path.isdir(out) and not os.listdir(out), "artifacts dir must be fresh and empty"
    os.makedirs("results", exist_ok=True)
    open("results/summary.txt", "w").write("ok")
    open("stray.txt", "w").write("not collected")
    os.makedirs(os.path.join(out, "plots"))
    open(os.path.join(out, "plots", "loss.png"), "wb").write(b"\\x89PNG" + os.urandom(5000))
    json.dump({"job": os.environ["C3_JOB_ID"], "project": os.environ["C3_PROJECT"]},
              open(os.path.join(out, "metrics.json"), "w"))
    open(os.path.join(out, "ckpt.bin"), "wb").write(os.urandom(300_000))
    """)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.py").write_text(JOB_SCRIPT)
    (work / ".c3").write_text("project: vision\noutput:\n  - results\n")
    return work


def record(c3fs_bin, job_id: str) -> dict:
    res = c3fs_bin("ls", "--json", "/jobs/")
    assert res.code == 0, res.err
    items = {i["name"]: i["record"] for i in json.loads(res.out)["entries"]}
    return items[job_id]


def test_run_collects_artifacts_and_outputs(c3fs_bin, workdir: Path, tmp_path: Path) -> None:
    res = c3fs_bin("run", "-j", "job1", "--", sys.executable, "job.py", cwd=workdir)
    assert res.code == 0, res.err
    assert res.out.strip().splitlines()[-1] == "job1"
    rec = record(c3fs_bin, "job1")
    assert (rec["status"], rec["reason"], rec["exit_code"]) == ("SUCCEEDED", "", 0)
    assert rec["project"] == "vision" and rec["files"] == 4
    assert rec["command"][-1] == "job.py" and rec["ended"] >= rec["started"]
    listing = c3fs_bin("ls", "/projects/vision/jobs/job1").out.split()
    assert sorted(listing) == ["ckpt.bin", "metrics.json", "plots/", "results/"]
    assert "stray.txt" not in listing
    out = tmp_path / "out"
    assert c3fs_bin("cp", "-r", "/jobs/job1", str(out)).code == 0
    assert json.loads((out / "metrics.json").read_text()) == {"job": "job1", "project": "vision"}
    assert (out / "results" / "summary.txt").read_text() == "ok"


def test_statuses_failure_timeout(c3fs_bin, workdir: Path) -> None:
    (workdir / "fail.py").write_text(
        "import os; open(os.environ['C3_ARTIFACTS_DIR'] + '/partial.txt', 'w').write('x'); raise SystemExit(3)")
    res = c3fs_bin("run", "-j", "bad", "--", sys.executable, "fail.py", cwd=workdir)
    assert res.code == 3
    rec = record(c3fs_bin, "bad")
    assert (rec["status"], rec["reason"], rec["exit_code"]) == ("FAILED", "SCRIPT_ERROR", 3)
    assert "partial.txt" in c3fs_bin("ls", "/jobs/bad").out  # best effort upload kept it
    res = c3fs_bin("run", "-j", "slow", "--timeout", "0.5", "--", "sleep", "30", cwd=workdir)
    assert res.code == 124
    assert record(c3fs_bin, "slow")["status"] == "TIMEOUT"
    res = c3fs_bin("run", "-j", "nocmd", "--", "/no/such/command", cwd=workdir)
    assert res.code == 127 and record(c3fs_bin, "nocmd")["reason"] == "SCRIPT_ERROR"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cancel(c3fs_bin, store_env, workdir: Path, sig: int) -> None:
    marker = workdir / "started"
    (workdir / "wait.py").write_text(textwrap.dedent(f"""\
        import os, time
        open(os.environ['C3_ARTIFACTS_DIR'] + '/before-cancel.txt', 'w').write('x')
        open({str(marker)!r}, 'w').close()
        time.sleep(60)
        """))
    proc = subprocess.Popen([sys.executable, "-m", "c3fs_cli", "run", "-j", "c1", "--", sys.executable,
                             "wait.py"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(sig)
    err = proc.communicate(timeout=30)[1].decode()  # (read: a full pipe would block the run)
    assert proc.returncode == 130 and "job c1 canceled" in err, err
    rec = record(c3fs_bin, "c1")
    assert rec["status"] == "CANCELED"
    assert "before-cancel.txt" in c3fs_bin("ls", "/jobs/c1").out


SIGNAL_AT = textwrap.dedent("""\
    # `c3fs run ARGS`, which sends itself SIG at each of MOMENTS (comma-separated): `started`,
    # just after its command started (before the run waits for it); `stopping`, as the run
    # begins to stop the command (canceled or timed out). Usage: SIG MOMENTS ARGS...
    import os, signal, sys
    import c3fs.jobs.run as run
    from c3fs_cli.main import main

    sig, moments = signal.Signals[sys.argv[1]], sys.argv[2].split(",")

    def then_signal(func):
        def call(*args):
            result = func(*args)
            os.kill(os.getpid(), sig)
            return result
        return call

    def signal_first(func):
        def call(*args):
            os.kill(os.getpid(), sig)
            return func(*args)
        return call

    if "started" in moments:
        run.RunState.command_started = then_signal(run.RunState.command_started)
    if "stopping" in moments:
        run._stop = signal_first(run._stop)
    main(sys.argv[3:])
    """)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moments, timeout, status, code", [
    ("started", None, "CANCELED", 130),
    ("started,stopping", None, "CANCELED", 130),
    ("stopping", "0.5", "TIMEOUT", 124),
])
def test_a_signal_at_an_unlucky_moment_still_records_the_job(
        c3fs_bin, store_env, workdir: Path, sig: str, moments: str, timeout: str | None,
        status: str, code: int) -> None:
    """SIGINT or SIGTERM to `c3fs run` once its command has started cancels the job whenever
    it comes: just after the command started, before the run installed its handler (it was
    lost: SIGINT aborted the run, exit 130, SIGTERM killed it, nothing recorded and the
    command left running; test_cancel met it once on a loaded machine), or as the job is
    being stopped, canceled or timed out (a second Ctrl-C: a traceback, exit 1, nothing
    recorded, no SIGKILL). The run signals itself at those moments (`SIGNAL_AT`)."""
    argv = ["run", "-j", "c1", *(["--timeout", timeout] if timeout else []), "--", "sleep", "30"]
    proc = subprocess.run([sys.executable, "-c", SIGNAL_AT, sig, moments, *argv], cwd=workdir,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    rec = record(c3fs_bin, "c1")
    assert (rec["status"], rec["exit_code"]) == (status, 128 + signal.SIGTERM)  # stopped


def _new_store(c3fs_bin):
    """Create the test's (empty) store: only a command that writes creates one."""
    return c3fs_bin("config", "set", "quota", "none")


def _kept_dir(err: str) -> Path:
    """The artifacts dir named by the 'artifacts are kept in PATH' line of a run's stderr."""
    kept = [line for line in err.splitlines() if "artifacts are kept in" in line]
    assert len(kept) == 1, err
    return Path(kept[0].rsplit("kept in ", 1)[1].strip())


def _remove_kept(kept_dir: Path | None, job_id: str) -> None:
    """Remove the run dir a test's failed upload kept (it is outside the test's tmp_path)."""
    if kept_dir is not None and kept_dir.parent.name.startswith(f"c3fs-run-{job_id}-"):
        shutil.rmtree(kept_dir.parent)


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@contextlib.contextmanager
def _run_with_a_full_store(c3fs_bin, workdir: Path, tmp_path: Path, monkeypatch, job: str,
                           size: str, script: str):
    """`c3fs run -j job -- python script` with the store on a `size` tmpfs; yields the result
    while the store is still mounted, then unmounts it and removes the run dir kept."""
    small = tmp_path / "small"
    _tmpfs(small, size)
    res = None
    try:
        monkeypatch.setenv("C3FS_STORE", str(small / "store"))
        (workdir / f"{job}.py").write_text(script)
        res = c3fs_bin("run", "-j", job, "--", sys.executable, f"{job}.py", cwd=workdir)
        yield res
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
        if res is not None and "artifacts are kept in" in res.err:
            _remove_kept(_kept_dir(res.err), job)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_upload_error_disk_full(c3fs_bin, store_env, workdir: Path, tmp_path: Path, monkeypatch) -> None:
    script = ("import os; open(os.environ['C3_ARTIFACTS_DIR'] + '/big.bin', 'wb')"
              ".write(os.urandom(3_000_000))")
    with _run_with_a_full_store(c3fs_bin, workdir, tmp_path, monkeypatch, "full", "1m",
                                script) as res:
        assert res.code == 74, res.err
        assert "UPLOAD_ERROR" in res.err and "disk full" in res.err
        kept_dir = _kept_dir(res.err)
        assert (kept_dir / "big.bin").stat().st_size == 3_000_000  # nothing lost
        rec = record(c3fs_bin, "full")
        assert (rec["status"], rec["reason"]) == ("FAILED", "UPLOAD_ERROR")
        assert c3fs_bin("verify").code == 0
        res = c3fs_bin("run", "-j", "after", "--", "true", cwd=workdir)  # the job last run
        assert "moved to ./artifacts.prev-" in res.err, res.err  # here stored none of it
        [aside] = workdir.glob("artifacts.prev-*")
        assert (aside / "big.bin").stat().st_size == 3_000_000


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a read-only bind mount")
def test_upload_error_read_only_store(c3fs_bin, store_env, workdir: Path) -> None:
    assert _new_store(c3fs_bin).code == 0
    subprocess.run(["mount", "--bind", str(store_env.store), str(store_env.store)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(store_env.store)], check=True)
        res = c3fs_bin("run", "-j", "ro", "--", "true", cwd=workdir)
        assert res.code == 74 and "UPLOAD_ERROR" in res.err
        _remove_kept(_kept_dir(res.err), "ro")
        assert "Traceback" not in res.err
    finally:
        subprocess.run(["umount", "-l", str(store_env.store)], check=False)
    assert c3fs_bin("ls", "/jobs/").out.split() == []


def test_balance_quota_rm_gc(c3fs_bin, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(2_000_000))
    (data / "b.txt").write_text("hello " * 10000)
    assert _new_store(c3fs_bin).code == 0
    empty = json.loads(c3fs_bin("balance", "--json").out)
    assert empty["stored_bytes"] == 0 and empty["jobs"] == 0
    assert c3fs_bin("push", str(data), "-p", "p1", "-j", "one").code == 0
    (data / "c.bin").write_bytes(os.urandom(1_000_000))
    assert c3fs_bin("push", str(data), "-p", "p2", "-j", "two").code == 0
    bal = json.loads(c3fs_bin("balance", "--json", "--by-project").out)
    assert 3_000_000 < bal["stored_bytes"] < 3_300_000  # a.bin stored once
    assert bal["logical_bytes"] > 5_000_000 and bal["saving"] > 0.3
    assert set(bal["projects"]) == {"p1", "p2"}
    assert c3fs_bin("config", "set", "quota", "1MiB").code == 0
    res = c3fs_bin("balance")
    assert "exceeds the quota" in res.err and res.code == 0
    res = c3fs_bin("push", str(data), "-p", "p1", "-j", "three")
    assert res.code == 0 and "exceeds the quota" in res.err  # soft: stored anyway
    assert "of 1.0 MiB" in res.err  # in the units balance uses
    assert c3fs_bin("verify", "/projects/p1/jobs/three", "/jobs/two", "two").code == 0
    res = c3fs_bin("rm", "/jobs/two", "/projects/p1/jobs/three", "two")  # as ls shows them
    assert res.code == 0 and res.err.count("removed") == 2, res.err
    gc = json.loads(c3fs_bin("gc", "--json").out)
    assert gc["bytes_freed"] >= 900_000
    after = json.loads(c3fs_bin("balance", "--json").out)
    assert after["stored_bytes"] <= bal["stored_bytes"] - 900_000
    assert c3fs_bin("verify").code == 0
    out = tmp_path / "out"
    assert c3fs_bin("cp", "-r", "/jobs/one", str(out)).code == 0
    assert (out / "a.bin").read_bytes() == (data / "a.bin").read_bytes()
    res = c3fs_bin("rm", "nope")
    assert res.code == 3 and "nope" in res.err


def test_rm_and_verify_of_a_project_path_hold_to_that_project(c3fs_bin, tmp_path: Path) -> None:
    """/projects/<p>/jobs/<id> names the job in project <p> only, as `ls` of that path
    does: another project's job of that id is neither removed nor verified (exit 3, nothing
    done); the path `ls /jobs/` prints, with its slash, names the job."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("alpha's\n")
    assert c3fs_bin("push", str(data), "-p", "alpha", "-j", "job_a").code == 0
    assert c3fs_bin("push", str(data), "-p", "alpha", "-j", "job_b").code == 0
    assert c3fs_bin("cp", "-r", str(data), "/projects/alpha/datasets/ds1").code == 0
    assert c3fs_bin("ls", "/projects/beta/jobs/job_a").code == 3
    for argv in (["rm", "/projects/beta/jobs/job_a"],
                 ["rm", "/jobs/job_b", "/projects/nosuch/jobs/job_a"],  # nothing removed
                 ["rm", "--dataset", "/projects/beta/datasets/ds1"],
                 ["verify", "/projects/beta/jobs/job_a"]):
        res = c3fs_bin(*argv)
        assert res.code == 3 and "no such" in res.err and "project alpha" in res.err, res.err
        assert len(res.err.strip().splitlines()) == 1, res.err
    assert c3fs_bin("ls", "/jobs/").out.split() == ["job_a/", "job_b/"]
    assert c3fs_bin("verify", "/projects/alpha/jobs/job_a", "job_b/").code == 0
    res = c3fs_bin("rm", "/projects/alpha/jobs/job_a", "job_b/", "--dataset")
    assert res.code == 3  # (with --dataset the names are datasets: job_b/ is not one)
    res = c3fs_bin("rm", "/projects/alpha/jobs/job_a", "job_b/")
    assert res.code == 0 and res.err.count("removed") == 2, res.err
    assert c3fs_bin("ls", "/jobs/").out.split() == []


def test_pull_into_a_pipe_prints_its_line_without_rich(c3fs_bin, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A pull in a script (stdout and stderr pipes) prints its result line as it is and
    never imports rich (~25 ms of CPU a command); the environment variables rich obeys
    still make it a terminal."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a:smile:b.txt").write_text("x")
    assert c3fs_bin("push", str(data), "-p", "p", "-j", "j1").code == 0
    dest = tmp_path / "to:smile:here"
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # (-X importtime: to stderr)
    res = c3fs_bin("pull", "j1", "--dest", str(dest))
    assert res.code == 0
    assert res.out == f"j1 -> {dest / 'j1'} (1 file, 1 B, 0 unchanged)\n"  # no emoji made of it
    assert "| rich" not in res.err and "| c3fs.jobs.pull" in res.err  # (-X importtime's lines)
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = c3fs_bin("pull", "j1", "--dest", str(dest))
    assert forced.code == 0 and "| rich.console" in forced.err


def test_pulls_progress_bar_has_the_jobs_totals_from_their_records(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pull's bar has a total (so an ETA), the bytes of the jobs' records, and their count
    of files, as cp -r's has (it had none: `0/? bytes`); what it advances by adds up to
    them, unchanged files too."""
    from c3fs_cli import output

    for job, sizes in (("j1", (1000, 70_000)), ("j2", (5, 0, 300_000))):
        data = tmp_path / job
        data.mkdir()
        for i, size in enumerate(sizes):
            (data / f"f{i}").write_bytes(os.urandom(size))
        assert run_cli(["push", str(data), "-p", "p", "-j", job]).code == 0
    bars: list[tuple[str, int | None, int | None, list[tuple[int, int]]]] = []

    @contextlib.contextmanager
    def recorded(label: str, total: int | None, files: int | None = None) -> Iterator:
        bars.append((label, total, files, []))
        yield lambda n, files=0: bars[-1][3].append((n, files))

    monkeypatch.setattr(output, "progress_bar", recorded)
    assert run_cli(["pull", "j1", "j2", "--dest", str(tmp_path / "out")]).code == 0
    assert run_cli(["pull", "--dest", str(tmp_path / "out")]).code == 0  # none pending
    assert run_cli(["pull", "j2", "--dest", str(tmp_path / "out")]).code == 0  # unchanged
    total = 1000 + 70_000 + 5 + 300_000
    assert [(label, size, files, sum(n for n, _ in steps), sum(f for _, f in steps))
            for label, size, files, steps in bars] == [
        ("pull", total, 5, total, 5), ("pull", 0, 0, 0, 0), ("pull", 300_005, 3, 300_005, 3)]


def test_pull_new_jobs_and_resume(c3fs_bin, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "w.bin").write_bytes(os.urandom(500_000))
    (data / "m.json").write_text("{}")
    for job in ("j1", "j2"):
        assert c3fs_bin("push", str(data), "-p", "p", "-j", job).code == 0
    dest = tmp_path / "pulled"
    first = json.loads(c3fs_bin("pull", "--dest", str(dest), "--json").out)
    assert sorted(p["job"] for p in first) == ["j1", "j2"]
    assert (dest / "j1" / "w.bin").read_bytes() == (data / "w.bin").read_bytes()
    again = c3fs_bin("pull", "--dest", str(dest), "--json")
    assert json.loads(again.out) == []  # nothing new
    (dest / "j1" / "w.bin").unlink()  # an interrupted pull, run again by name
    resumed = json.loads(c3fs_bin("pull", "j1", "--dest", str(dest), "--json").out)
    assert resumed[0]["files"] == 1 and resumed[0]["unchanged"] == 1
    assert (dest / "j1" / "w.bin").read_bytes() == (data / "w.bin").read_bytes()
    (dest / "blocked").mkdir()
    (dest / "blocked" / "j1").write_text("a file in the way")
    res = c3fs_bin("pull", "j1", "--dest", str(dest / "blocked"))
    assert res.code != 0 and "not a directory" in res.err and "Traceback" not in res.err


def test_verify_names_damaged_blob(c3fs_bin, store_env, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "weights.bin").write_bytes(os.urandom(400_000))
    assert c3fs_bin("push", str(data), "-p", "p", "-j", "v1").code == 0
    pack = max((p for p in (store_env.store / "packs").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    raw = bytearray(pack.read_bytes())
    raw[100] ^= 0xFF
    pack.write_bytes(raw)
    res = c3fs_bin("verify")
    assert res.code == 6
    assert "job v1:/weights.bin" in res.out and "corrupt" in res.out


def _damage_first_chunk(store: Path, job: str, path: bytes) -> None:
    """Flip a byte in the middle of the first chunk of `path` (bytes) in job `job`."""
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    repo = Repo.open(str(store))
    try:
        node = Vfs(repo).resolve(b"/jobs/" + job.encode() + path)
        loc = repo.index.lookup(node.entry.chunk_ids()[0])
    finally:
        repo.close()
    with open(store / "packs" / loc.pack_id[:2] / loc.pack_id, "r+b") as f:
        f.seek(loc.offset + loc.length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


ODD, LOOKALIKE, PLAIN = b"/sub\xfe/w\xff.bin", b"/sub\xfe/w\\xff.bin", "/caf\u00e9.bin".encode()


def _job_with_damaged_names(c3fs_bin, store: Path, tmp_path: Path,
                            names: tuple[bytes, ...]) -> None:
    """Job v1 holding a file at each of `names`, the first chunk of each damaged."""
    data = os.fsencode(tmp_path / "data")
    for path in names:
        os.makedirs(os.path.dirname(data + path), exist_ok=True)
        with open(data + path, "wb") as f:
            f.write(os.urandom(300_000))
    assert c3fs_bin("push", data, "-p", "p", "-j", "v1").code == 0
    for path in names:
        _damage_first_chunk(store, "v1", path)


def test_verify_json_names_broken_paths_exactly(c3fs_bin, store_env, tmp_path: Path) -> None:
    """A path that is not UTF-8 is `\\xNN` text in `broken` and in `paths`, whose entry has
    its bytes too (`path_b64`), as `ls --json` gives them; a UTF-8 path has none."""
    import base64

    _job_with_damaged_names(c3fs_bin, store_env.store, tmp_path, (ODD, PLAIN))
    res = c3fs_bin("verify", "--json")
    assert res.code == 6, res.err
    problems = json.loads(res.out)["problems"]
    assert sorted(w for p in problems for w in p["broken"]) == [
        "job v1:/caf\u00e9.bin", "job v1:/sub\\xfe/w\\xff.bin"]
    assert sorted((w for p in problems for w in p["paths"]), key=lambda w: w["path"]) == [
        {"job": "v1", "path": "/caf\u00e9.bin"},
        {"job": "v1", "path": "/sub\\xfe/w\\xff.bin",
         "path_b64": base64.b64encode(ODD).decode()}]


def test_verify_shows_broken_paths_as_ls_does(c3fs_bin, store_env, tmp_path: Path) -> None:
    """The text names a byte that is not UTF-8 as `ls` does (octal, GNU ls -b), so a name
    holding the four characters \\xff reads otherwise (its backslash doubled)."""
    _job_with_damaged_names(c3fs_bin, store_env.store, tmp_path, (ODD, LOOKALIKE))
    listed = c3fs_bin("ls", "/jobs/v1/sub\udcfe")
    assert sorted(listed.out.split()) == ["w\\377.bin", "w\\\\xff.bin"], listed.err
    res = c3fs_bin("verify")
    assert res.code == 6, res.err
    breaks = sorted(line for line in res.out.splitlines() if line.startswith("  breaks "))
    assert breaks == ["  breaks job v1:/sub\\376/w\\377.bin",
                      "  breaks job v1:/sub\\376/w\\\\xff.bin"], res.out


@pytest.mark.parametrize("config, message", [
    ("output:\n  - ../outside\n", "not inside the working directory"),
    ("output:\n  - /etc\n", "not inside the working directory"),
    ("output: [ unclosed\n", "not valid YAML"),
    ("output: 5\n", "Expected `array`"),
    ("project: 'bad/name'\n", "invalid project"),
    ("datasets:\n  - ref: /jobs/missing\n    mount: x\n",
     ".c3 datasets entry /jobs/missing -> x: no job 'missing'"),
])
def test_bad_config_refused_before_running(c3fs_bin, workdir: Path, config: str, message: str) -> None:
    (workdir / ".c3").write_text(config)
    res = c3fs_bin("run", "--", "touch", "ran", cwd=workdir)
    assert res.code != 0 and message in res.err, res.err
    assert not (workdir / "ran").exists()
    assert "Traceback" not in res.err


def test_config_warnings_and_odd_artifacts(c3fs_bin, workdir: Path) -> None:
    (workdir / ".c3").write_text("project: p\nimage: x\noutput:\n  - missing_dir\n")
    res = c3fs_bin("run", "-j", "w1", "--", "true", cwd=workdir)
    assert res.code == 0 and "key 'image' is the platform's" in res.err and "missing_dir" in res.err
    res = c3fs_bin("run", "-j", "w2", "--", "sh", "-c", 'rm -rf "$C3_ARTIFACTS_DIR"', cwd=workdir)
    assert res.code == 0 and "deleted by the job" in res.err
    res = c3fs_bin("run", "-j", "w3", "--", "sh", "-c",
                   'rmdir "$C3_ARTIFACTS_DIR" && echo data > "$C3_ARTIFACTS_DIR"', cwd=workdir)
    assert res.code == 0 and "replaced by a file" in res.err
    assert c3fs_bin("ls", "/jobs/w3").out.split() == ["artifacts"]


def test_output_dir_name_clash(c3fs_bin, workdir: Path, tmp_path: Path) -> None:
    (workdir / ".c3").write_text("output:\n  - results\n  - deep/nested\n")
    (workdir / "deep" / "nested").mkdir(parents=True)
    (workdir / "deep" / "nested" / "n.txt").write_text("n")
    script = 'mkdir -p results "$C3_ARTIFACTS_DIR/results"; echo a > "$C3_ARTIFACTS_DIR/results/a"; echo o > results/o'
    res = c3fs_bin("run", "-j", "clash", "--", "sh", "-c", script, cwd=workdir)
    assert res.code == 0 and "stored as results~output" in res.err
    assert c3fs_bin("ls", "/jobs/clash").out.split() == ["deep/", "results/", "results~output/"]
    assert c3fs_bin("ls", "/jobs/clash/results~output").out.split() == ["o"]
    assert c3fs_bin("ls", "/jobs/clash/deep/nested").out.split() == ["n.txt"]


def test_two_runs_at_once(c3fs_bin, workdir: Path) -> None:
    """Two working dirs: both run. One working dir (one artifacts/): the second is refused."""
    other = workdir.parent / "work2"
    shutil.copytree(workdir, other)
    procs = [subprocess.Popen([str(Path(sys.executable).parent / "c3fs"), "run", "-j", f"par{i}",
                               "--", sys.executable, "job.py"], cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, cwd in enumerate((workdir, other))]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert {"par0/", "par1/"} <= set(c3fs_bin("ls", "/jobs/").out.split())
    assert c3fs_bin("verify").code == 0
    marker = workdir / "started"
    first = subprocess.Popen([str(Path(sys.executable).parent / "c3fs"), "run", "-j", "long",
                              "--", "sh", "-c", f"touch {marker}; sleep 30"], cwd=workdir,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.02)
        res = c3fs_bin("run", "-j", "second", "--", "touch", "ran", cwd=workdir)
        assert "another c3fs run is running in" in res.one_line_error() and res.code == 4
        assert not (workdir / "ran").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)


@pytest.fixture(params=["local", "s3"])
def a_store(request: pytest.FixtureRequest, store_env, monkeypatch) -> str:
    """The test's store: a local dir, or a bucket of the S3 server (create-only enforced)."""
    if request.param == "local":
        return str(store_env.store)
    url = request.getfixturevalue("s3_url")
    monkeypatch.setenv("C3FS_STORE", url)
    return url


def _workdirs(tmp_path: Path, n: int) -> list[Path]:
    dirs = [tmp_path / f"w{i}" for i in range(n)]
    for work in dirs:
        work.mkdir()
    return dirs


def test_two_runs_of_one_job_id_at_once_the_second_runs_nothing(c3fs_bin, a_store: str,
                                                                 tmp_path: Path) -> None:
    """Two `run -j same` started together (two working dirs, one store): one runs, the other
    is refused at its start, one line naming the holder, exit 7, its command never started
    (it used to run it too, and fail its upload at the end: UPLOAD_ERROR, exit 74). Once the
    job is registered, a run of its id is refused at its start too (exit 4)."""
    go = tmp_path / "go"
    command = ["sh", "-c", f"touch ran; while [ ! -e {go} ]; do sleep 0.05; done"]
    procs = [subprocess.Popen([str(C3FS_BIN), "run", "-j", "same", "--", *command], cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for work in _workdirs(tmp_path, 2)]
    try:
        wait_until(lambda: any(p.poll() is not None for p in procs), "one run to be refused")
        [loser] = [i for i, p in enumerate(procs) if p.poll() is not None]
        res = CliResult(procs[loser].returncode, *procs[loser].communicate())
        assert "job id 'same' is taken by a run in progress (pid " in res.one_line_error()
        assert res.code == 7 and f"pid {procs[1 - loser].pid} " in res.err, res.err
        assert os.listdir(tmp_path / f"w{loser}") == []  # not even an artifacts dir
        assert [lock["kind"] for lock in _locks(c3fs_bin)] == ["run"]
    finally:
        go.touch()
        codes = [p.wait(timeout=120) for p in procs]
    assert codes[1 - loser] == 0, procs[1 - loser].stderr.read()
    assert (tmp_path / f"w{1 - loser}" / "ran").exists() and _locks(c3fs_bin) == []
    again = _workdirs(tmp_path / "w0", 1)[0]
    res = c3fs_bin("run", "-j", "same", "--", "touch", "ran", cwd=again)
    assert "job 'same' already exists in the store" in res.one_line_error() and res.code == 4
    assert os.listdir(again) == [] and _locks(c3fs_bin) == []


def _locks(c3fs_bin) -> list[dict]:
    return json.loads(c3fs_bin("unlock", "--list", "--json").ok().out)


@pytest.mark.logs("removed the expired run lock run-k of pid")
def test_a_killed_runs_job_id_is_taken_over_by_the_next_run(c3fs_bin, store_env,
                                                              tmp_path: Path) -> None:
    """kill -9 of `c3fs run -j k` leaves its reservation in the store: the next run of k on
    this host sees at once that its holder is gone, takes it over (saying so) and runs."""
    first, second = _workdirs(tmp_path, 2)
    victim = subprocess.Popen([str(C3FS_BIN), "run", "-j", "k", "--", "sh", "-c",
                               "echo $$ > pid; exec sleep 60"], cwd=first,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (first / "pid").exists() and (first / "pid").read_text(), "the job")
    finally:
        victim.kill()
        victim.wait()
        if (first / "pid").exists():
            os.kill(int((first / "pid").read_text()), signal.SIGKILL)
    assert [(lock["name"], lock["pid"]) for lock in _locks(c3fs_bin)] == [("run-k", victim.pid)]
    res = c3fs_bin("run", "-j", "k", "--", "touch", "ran", cwd=second).ok()
    assert f"removed the expired run lock run-k of pid {victim.pid} " in res.err, res.err
    assert (second / "ran").exists() and record(c3fs_bin, "k")["status"] == "SUCCEEDED"
    assert _locks(c3fs_bin) == []


def test_datasets_upload_list_download(c3fs_bin, tmp_path: Path) -> None:
    data = tmp_path / "ds"
    data.mkdir()
    (data / "train.csv").write_text("a,b\n" * 50000)
    res = c3fs_bin("cp", "-r", str(data), "/projects/vision/datasets/mini")
    assert res.code == 0, res.err
    assert c3fs_bin("ls", "/projects/vision/datasets/").out.split() == ["mini/"]
    assert c3fs_bin("ls", "/datasets/").out.split() == ["mini/"]
    assert c3fs_bin("cp", "-r", str(data), "/projects/vision/datasets/mini").code == 4  # write-once
    res = c3fs_bin("push", str(data), "-p", "vision", "-j", "same", "--json")
    assert json.loads(res.out)["stored_delta"] < 2000  # dedups with the dataset
    out = tmp_path / "back"
    assert c3fs_bin("cp", "-r", "/datasets/mini", str(out)).code == 0
    assert (out / "train.csv").read_text() == (data / "train.csv").read_text()
    for argv in (["cp"], ["cp", "-r"]):  # a file: one error that says what to do, either way
        res = c3fs_bin(*argv, str(data / "train.csv"), "/projects/vision/datasets/one")
        assert res.code == 2 and "train.csv is not a directory: a dataset is uploaded from one" \
            in res.err and len(res.err.splitlines()) == 1, res.err


@contextlib.contextmanager
def _renewed(lock: Path) -> Iterator[None]:
    """A lock of another host whose holder is alive: its body changes every 0.1 s."""
    stop = threading.Event()

    def beat() -> None:
        beat = 0
        while not stop.wait(0.1):
            beat += 1
            lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "lease": 2, "beat": beat}))

    lock.parent.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "lease": 2, "beat": 0}))
    thread = threading.Thread(target=beat)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def test_gc_and_push_exclude_each_other(c3fs_bin, store_env, tmp_path: Path, monkeypatch) -> None:
    """A live lock of another host (renewed) is respected; once its holder stops renewing it
    for its lease (2 s here), it is removed and the command runs."""
    monkeypatch.setenv("C3FS_LOCK_LEASE", "2")
    assert _new_store(c3fs_bin).code == 0
    lock = store_env.store / "locks" / "push-feedc0de"
    with _renewed(lock):
        res = c3fs_bin("gc")
    assert res.code == 7 and "push(es) in progress" in res.err and "elsewhere" in res.err
    assert c3fs_bin("gc").code == 0 and not lock.exists()
    gc_lock = store_env.store / "locks" / "gc"
    (tmp_path / "d").mkdir()
    with _renewed(gc_lock):
        res = c3fs_bin("push", str(tmp_path / "d"), "-p", "p", "--lock-wait", "0")
    assert res.code == 7 and "gc is running" in res.err
    res = c3fs_bin("push", str(tmp_path / "d"), "-p", "p")
    assert res.code == 0 and "removed the expired gc lock" in res.err and not gc_lock.exists()


# pushes wait for a running gc ---------------------------------------------------------------------
def test_a_push_waits_for_a_running_gc(c3fs_bin, store_env, tmp_path: Path) -> None:
    """gc holds the store (a real gc process, its lock renewed) for 4 s: a push started then
    waits for it, says so, and goes on when gc has finished (it used to exit 7 at once)."""
    assert _new_store(c3fs_bin).code == 0
    src = tmp_path / "d"
    src.mkdir()
    (src / "r.txt").write_text("x\n")
    gc = gc_holding_the_store(store_env.store, 4)
    started = time.monotonic()
    res = c3fs_bin("push", str(src), "-p", "p", "-j", "job_x")
    assert res.code == 0, res.err
    assert gc.wait(60) == 0, (tmp_path / "gc.out").read_text()
    assert time.monotonic() - started > 1
    assert (f"gc is running on this store (pid {gc.pid} (c3fs gc) of " in res.err
            and "waiting for it to finish, 0 s so far, up to 10 min (--lock-wait)" in res.err)
    assert "gc has finished after" in res.err
    assert c3fs_bin("cat", "/jobs/job_x/r.txt").out == "x\n"
    assert c3fs_bin("verify").code == 0


def _stderr_says(path: Path, text: str) -> Callable[[], bool]:
    return lambda: path.exists() and text in path.read_text()


def test_a_stopped_gc_is_waited_for_up_to_lock_wait_and_a_run_succeeds_after_it(
        c3fs_bin, store_env, tmp_path: Path) -> None:
    """The audit's case: gc on this host, stopped (SIGSTOP) while it holds the store. A push
    waits --lock-wait seconds, then exits 7; one interrupted while it waits exits 130 and
    leaves no lock; a job that ends meanwhile waits, and is SUCCEEDED once gc goes on."""
    assert _new_store(c3fs_bin).code == 0
    src = tmp_path / "d"
    src.mkdir()
    (src / "r.txt").write_text("x\n")
    gc = gc_holding_the_store(store_env.store, 3)
    os.kill(gc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        res = c3fs_bin("push", str(src), "-p", "p", "--lock-wait", "2")
        assert res.code == 7 and 2 <= time.monotonic() - started < 15, res.err
        assert res.err.splitlines()[-1] == (
            f"c3fs: error: gc is running on this store (pid {gc.pid} (c3fs gc) of "
            f"{_user()} on {os.uname().nodename}); push again when it has finished "
            "(waited 2 s, --lock-wait 2)")
        with open(tmp_path / "push.err", "wb") as err:
            push = subprocess.Popen([str(C3FS_BIN), "push", str(src), "-p", "p"],
                                    stderr=err)
        wait_until(_stderr_says(tmp_path / "push.err", "waiting for it to finish"), "a wait")
        push.send_signal(signal.SIGINT)  # Ctrl-C
        assert push.wait(30) == 130, (tmp_path / "push.err").read_text()
        assert not [n for n in os.listdir(store_env.store / "locks") if n.startswith("push-")]
        work = tmp_path / "work"
        work.mkdir()
        with open(tmp_path / "run.err", "wb") as err:
            run = subprocess.Popen([str(C3FS_BIN), "run", "-p", "pipe", "-j", "job_x", "--",
                                    "sh", "-c", "echo x > $C3_ARTIFACTS_DIR/r.txt"],
                                   cwd=work, stdout=subprocess.PIPE, stderr=err)
        wait_until(_stderr_says(tmp_path / "run.err", "waiting for it to finish"), "a wait")
        assert run.poll() is None
    finally:
        os.kill(gc.pid, signal.SIGCONT)
    assert gc.wait(60) == 0, (tmp_path / "gc.out").read_text()
    assert run.wait(60) == 0, (tmp_path / "run.err").read_text()
    rec = record(c3fs_bin, "job_x")
    assert (rec["status"], rec["reason"]) == ("SUCCEEDED", "")
    assert c3fs_bin("cat", "/jobs/job_x/r.txt").out == "x\n"
    assert c3fs_bin("verify").code == 0


def _user() -> str:
    import getpass

    return getpass.getuser()


# `c3fs run` usability audit ---------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs")
def test_failed_script_and_failed_upload_keep_artifacts(c3fs_bin, store_env, workdir: Path,
                                                        tmp_path: Path, monkeypatch) -> None:
    script = ("import os; open(os.environ['C3_ARTIFACTS_DIR'] + '/weights.bin', 'wb')"
              ".write(os.urandom(2_000_000)); raise SystemExit(3)")
    with _run_with_a_full_store(c3fs_bin, workdir, tmp_path, monkeypatch, "crash", "512k",
                                script) as res:
        assert res.code == 3, res.err  # the script's status wins; the upload was best effort
        assert "best-effort upload failed" in res.err and "Traceback" not in res.err
        kept_dir = _kept_dir(res.err)
        assert (kept_dir / "weights.bin").stat().st_size == 2_000_000  # nothing lost


def test_output_dirs_with_files_from_before_are_named(c3fs_bin, workdir: Path) -> None:
    (workdir / "results").mkdir()
    (workdir / "results" / "old.txt").write_text("from an earlier run")
    (workdir / "results" / "sub").mkdir()
    (workdir / "results" / "sub" / "old2.txt").write_text("also")
    res = c3fs_bin("run", "-j", "nostart", "--", "/no/such/command", cwd=workdir)
    assert res.code == 127
    warned = [line for line in res.err.splitlines() if "from before" in line]
    assert len(warned) == 1 and "results" in warned[0] and "2 files" in warned[0], res.err
    # a command that never started wrote nothing: the earlier files are not recorded as its own
    assert c3fs_bin("ls", "/jobs/nostart").out.split() == []
    assert "not collected" in res.err
    res = c3fs_bin("run", "-j", "started", "--", "true", cwd=workdir)
    assert res.code == 0 and "2 files from before" in res.err  # told, then stored as warned
    assert c3fs_bin("ls", "/jobs/started/results").out.split() == ["old.txt", "sub/"]
    assert (workdir / "results" / "old.txt").exists()  # user files are never deleted
    (workdir / "fresh").mkdir()
    (workdir / ".c3").write_text("output: [fresh]\n")
    res = c3fs_bin("run", "-j", "clean", "--", "true", cwd=workdir)
    assert res.code == 0 and "from before" not in res.err, res.err


@pytest.mark.parametrize("timeout", ["0", "-5", "nan"])
def test_timeout_must_be_positive(c3fs_bin, workdir: Path, timeout: str) -> None:
    res = c3fs_bin("run", "-j", "t1", "--timeout", timeout, "--", "touch", "ran", cwd=workdir)
    assert res.code == 2, res.err
    assert len(res.err.strip().splitlines()) == 1 and "timeout must be a positive number" in res.err, res.err
    assert not (workdir / "ran").exists()
    assert c3fs_bin("ls", "/jobs/").out.split() == []  # the job id is not used up
    assert c3fs_bin("run", "-j", "t1", "--timeout", "30", "--", "true", cwd=workdir).code == 0


@pytest.mark.parametrize("entries", ["[results, results, ./results/]", "[results, res_link]",
                                     "[results/sub, results]"])
def test_output_dir_listed_twice_stored_once(c3fs_bin, workdir: Path, entries: str) -> None:
    (workdir / "res_link").symlink_to("results")
    (workdir / ".c3").write_text(f"output: {entries}\n")
    script = "mkdir -p results/sub && head -c 100000 /dev/urandom > results/sub/w.bin"
    res = c3fs_bin("run", "-j", "dup", "--", "sh", "-c", script, cwd=workdir)
    assert res.code == 0, res.err
    assert "clashes" not in res.err and "collected once" in res.err, res.err
    assert c3fs_bin("ls", "/jobs/dup").out.split() == ["results/"]
    assert c3fs_bin("ls", "/jobs/dup/results/sub").out.split() == ["w.bin"]
    rec = record(c3fs_bin, "dup")
    assert (rec["files"], rec["logical_bytes"]) == (1, 100_000)


def test_output_may_be_a_single_dir(c3fs_bin, workdir: Path) -> None:
    (workdir / ".c3").write_text("output: results\n")
    res = c3fs_bin("run", "-j", "one", "--", sys.executable, "job.py", cwd=workdir)
    assert res.code == 0, res.err
    assert c3fs_bin("ls", "/jobs/one/results").out.split() == ["summary.txt"]


@pytest.mark.parametrize("config, where", [
    ("project: p\noutput: [ unclosed\n", "line 3, column 1"),
    ("project: p\n\toutput: x\n", "line 2, column 1"),
    ("project: p\noutput: x\n  y: z\n", "line 3, column 4"),
])
def test_yaml_error_names_the_line(c3fs_bin, workdir: Path, config: str, where: str) -> None:
    (workdir / ".c3").write_text(config)
    res = c3fs_bin("run", "--", "touch", "ran", cwd=workdir)
    assert res.code == 2 and not (workdir / "ran").exists()
    assert len(res.err.strip().splitlines()) == 1, res.err
    assert "not valid YAML" in res.err and where in res.err, res.err


def test_run_reports_upload_progress_against_the_bytes_to_upload(repo, tmp_path: Path) -> None:
    """`c3fs run` draws an upload bar (on a terminal): its total is what the job wrote,
    artifacts and output dirs, and the upload advances it to that total."""
    import contextlib
    import sys

    from c3fs.jobs.config import JobConfig
    from c3fs.jobs.run import JobSpec, run_job

    seen: dict = {"advanced": 0}

    @contextlib.contextmanager
    def progress(label: str, total: int):
        seen.update(label=label, total=total)

        def advance(n: int) -> None:
            seen["advanced"] += n

        yield advance

    work = tmp_path / "work"
    work.mkdir()
    script = ("import os; open(os.environ['C3_ARTIFACTS_DIR'] + '/w.bin', 'wb').write(os.urandom(300_000)); "
              "os.makedirs('results', exist_ok=True); open('results/r.txt', 'w').write('x' * 5000)")
    spec = JobSpec([sys.executable, "-c", script], work, JobConfig(output=["results"]), "p",
                   "job_progress", progress=progress)
    record, code = run_job(repo, spec)
    assert code == 0 and record.files == 2
    assert seen["label"] == "upload" and seen["total"] == 305_000
    assert seen["advanced"] == 305_000


def test_verify_reports_progress_in_bytes_verified(repo, tmp_path: Path) -> None:
    from c3fs.jobs.maintenance import verify
    from c3fs.jobs.push import push_dir

    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(os.urandom(700_000))
    (src / "m.json").write_text("{}" * 100)
    push_dir(repo, src, "p", "job_v")
    advanced = []
    report = verify(repo, ["job_v"], progress=advanced.append)
    assert report.ok and report.bytes >= 700_200 and sum(advanced) == report.bytes


def _two_jobs_one_removed(repo, tmp_path: Path) -> None:
    """job_a and job_b, each a file of its own; job_b's ref removed (its pack is dead)."""
    from c3fs.jobs.push import push_dir

    for name in ("a", "b"):
        src = tmp_path / name
        src.mkdir()
        (src / "w.bin").write_bytes(os.urandom(200_000))
        push_dir(repo, src, "p", f"job_{name}")
    repo.store.delete_ref("job", "job_b")


def test_gc_says_which_phase_it_is_in(repo, tmp_path: Path) -> None:
    from c3fs.jobs.maintenance import gc

    _two_jobs_one_removed(repo, tmp_path)
    phases: list[str] = []
    report = gc(repo, progress=phases.append)
    assert report.packs_deleted + report.packs_repacked >= 1
    assert phases[0] == "marking what job job_a uses (1/1)", phases
    assert phases[1].startswith("sweeping: ")
    assert phases[2:] in ([], ["repacking 1 pack partly in use"]), phases


@pytest.mark.logs("removed the expired gc lock", "was broken by another process")
def test_a_gc_whose_lock_was_broken_while_it_stood_still_deletes_nothing(
        repo, tmp_path: Path, monkeypatch) -> None:
    """A gc stopped (SIGSTOP, a paused VM) for longer than its lease, whose lock another
    host broke meanwhile (a push now taking its packs' blobs for stored), must find out
    before its next delete, not at its heartbeat's next turn, a quarter lease later. The
    pause is arranged: the lock is broken (as `c3fs unlock` does) right after marking, and
    the gc then stands still for over a second before it sweeps."""
    from c3fs.errors import LockedError
    from c3fs.jobs import maintenance
    from c3fs.store import locks

    _two_jobs_one_removed(repo, tmp_path)
    packs = set(repo.index.pack_sizes())
    sweep = maintenance._sweep

    def broken_then_sweep(*args, **kwargs):
        lock = locks.read_lock(repo.store, locks.GC_KEY)
        assert lock is not None and locks.break_lock(repo.store, lock)
        time.sleep(1.2)
        return sweep(*args, **kwargs)

    monkeypatch.setattr(maintenance, "_sweep", broken_then_sweep)
    with pytest.raises(LockedError, match="was broken by another process"):
        maintenance.gc(repo)
    assert set(repo.index.pack_sizes()) == packs
    assert len(list(repo.store.backend.list("packs/"))) == len(packs)  # none deleted


def test_c3_env_is_set_for_the_command(c3fs_bin, workdir: Path) -> None:
    (workdir / ".c3").write_text('env:\n  SEED: "42"\n  GREETING: hello world\n')
    script = 'echo "$SEED $GREETING" > "$C3_ARTIFACTS_DIR/env.txt"'
    c3fs_bin("run", "-j", "env1", "--", "sh", "-c", script, cwd=workdir).ok()
    assert c3fs_bin("cp", "/jobs/env1/env.txt", "-").ok().out == "42 hello world\n"


@pytest.mark.parametrize("config, message", [
    ("flavour: x\n", "unknown key 'flavour' (known: project, output, datasets, env"),
    ("env:\n  SEED: 42\n", 'env: SEED must be a string (quote it: SEED: "42")'),
    ("env:\n  - A\n", "env must be a mapping of NAME: value"),
    ("env:\n  'BAD-NAME': x\n", "env: 'BAD-NAME' is not a variable name"),
    ("env:\n  C3_JOB_ID: x\n", "env: C3_JOB_ID is set by c3fs run; it cannot be overridden"),
])
def test_bad_env_or_unknown_key_is_one_line(c3fs_bin, workdir: Path, config: str,
                                            message: str) -> None:
    (workdir / ".c3").write_text(config)
    res = c3fs_bin("run", "--", "touch", "ran", cwd=workdir)
    assert message in res.one_line_error() and res.code == 2
    assert not (workdir / "ran").exists()


def test_run_json_is_runs_own_option(c3fs_bin, workdir: Path) -> None:
    res = c3fs_bin("run", "--json", "-j", "js1", "--", "true", cwd=workdir).ok()
    rec = json.loads(res.out)
    assert (rec["id"], rec["status"], rec["command"]) == ("js1", "SUCCEEDED", ["true"])
    res = c3fs_bin("run", "-j", "js2", "sh", "-c", "exit 3", cwd=workdir)  # no `--` needed
    assert res.code == 3 and record(c3fs_bin, "js2")["command"] == ["sh", "-c", "exit 3"]
    assert c3fs_bin("run", "--no-such-option", "true", cwd=workdir).code == 2


# $C3_ARTIFACTS_DIR is the working dir's artifacts/ (the seed) --------------------------------
def test_a_script_writing_its_artifacts_dir_by_name_is_collected(c3fs_bin, workdir: Path) -> None:
    script = ('import os; assert os.environ["C3_ARTIFACTS_DIR"] == os.path.abspath("artifacts"); '
              'assert os.listdir("artifacts") == []; '
              'open("artifacts/model.txt", "w").write("weights")')
    c3fs_bin("run", "-j", "named", "--", sys.executable, "-c", script, cwd=workdir).ok()
    assert c3fs_bin("ls", "/jobs/named").out.split() == ["model.txt"]
    assert (workdir / "artifacts" / "model.txt").read_text() == "weights"  # left in place


def test_an_artifacts_dir_from_before_is_moved_aside_not_collected(c3fs_bin, workdir: Path) -> None:
    (workdir / "artifacts").mkdir()
    (workdir / "artifacts" / "old.txt").write_text("mine")
    script = 'echo new > "$C3_ARTIFACTS_DIR/new.txt"'
    res = c3fs_bin("run", "-j", "fresh1", "--", "sh", "-c", script, cwd=workdir).ok()
    assert "./artifacts held 1 file from before the job; moved to ./artifacts.prev-" in res.err
    assert c3fs_bin("ls", "/jobs/fresh1").out.split() == ["new.txt"]
    [aside] = workdir.glob("artifacts.prev-*")
    assert (aside / "old.txt").read_text() == "mine"
    res = c3fs_bin("run", "-j", "fresh2", "--", "sh", "-c", script, cwd=workdir).ok()
    assert c3fs_bin("ls", "/jobs/fresh2").out.split() == ["new.txt"]
    assert "held 1 file of job fresh1, all stored in it" in res.err  # removed, not moved
    assert list(workdir.glob("artifacts.prev-*")) == [aside]  # the user's, never deleted
    (workdir / "artifacts" / "new.txt").unlink()
    res = c3fs_bin("run", "-j", "fresh3", "--", "true", cwd=workdir).ok()
    assert "moved" not in res.err and list(workdir.glob("artifacts.prev-*")) == [aside]


ARTIFACTS_SCRIPT = textwrap.dedent("""\
    import os
    out = os.environ["C3_ARTIFACTS_DIR"]
    assert not os.listdir(out), "artifacts dir must be fresh and empty"
    os.makedirs(os.path.join(out, "plots"))
    os.makedirs(os.path.join(out, "empty"))
    open(os.path.join(out, "plots", "loss.png"), "wb").write(os.urandom(5000))
    open(os.path.join(out, "ckpt.bin"), "wb").write(os.urandom(3 << 20))  # many chunks
    open(os.path.join(out, "metrics.json"), "w").write(os.environ["C3_JOB_ID"])
    open(os.path.join(out, "none.txt"), "w").close()
    os.symlink("ckpt.bin", os.path.join(out, "best.bin"))
    os.makedirs("results", exist_ok=True)
    open("results/summary.txt", "w").write("ok")
    """)


def test_an_artifacts_dir_its_last_job_stored_is_removed_not_piled_up(
        c3fs_bin, workdir: Path, tmp_path: Path) -> None:
    """Runs in one working dir: the artifacts/ a job left, all of it stored in that job, is
    removed by the next run, with one warning naming the job (each run added one more
    artifacts.prev-*, never pruned); `c3fs pull` gets it back byte for byte. One holding
    anything the job did not store (a byte changed, size and mtime kept; a file added; the
    job removed from the store) is moved aside, as before, and kept."""
    (workdir / "art.py").write_text(ARTIFACTS_SCRIPT)
    artifacts = workdir / "artifacts"

    def run(job: str) -> str:
        return c3fs_bin("run", "-j", job, "--", sys.executable, "art.py", cwd=workdir).ok().err

    def kept() -> list[Path]:
        return sorted(workdir.glob("artifacts.prev-*"))

    run("a1")
    left = _files(artifacts)
    err = run("a2")
    assert ("c3fs: warning: job a2: ./artifacts held 5 files of job a1, all stored in it "
            "(c3fs pull a1 gets them back): removed") in err.splitlines(), err
    assert kept() == [] and _files(artifacts) != left  # a2's own
    c3fs_bin("pull", "a1", "--dest", str(tmp_path / "pulled")).ok()
    assert _files(tmp_path / "pulled" / "a1") == {**left, "results/": b"",
                                                  "results/summary.txt": b"ok"}

    ckpt = artifacts / "ckpt.bin"  # a byte changed, its size and mtime kept
    st = ckpt.stat()
    with open(ckpt, "r+b") as f:
        f.seek(2 << 20)
        byte = f.read(1)
        f.seek(2 << 20)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    edited = _files(artifacts)
    assert "moved to ./artifacts.prev-" in run("a3")
    [aside] = kept()
    assert _files(aside) == edited
    assert "held 5 files of job a3, all stored in it" in run("a4") and kept() == [aside]
    (artifacts / "plots" / "mine.txt").write_text("added by hand")
    assert "moved to ./artifacts.prev-" in run("a5") and len(kept()) == 2
    c3fs_bin("rm", "a5").ok()
    assert "moved to ./artifacts.prev-" in run("a6") and len(kept()) == 3
    assert "all stored" in run("a7") and len(kept()) == 3


def _files(top: Path) -> dict[str, bytes | str]:
    """Each file's bytes and each symlink's target (`-> target`) below `top`, by path."""
    found: dict[str, bytes | str] = {}
    for path in sorted(top.rglob("*")):
        name = str(path.relative_to(top))
        if path.is_symlink():
            found[name] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name + "/"] = b""
    return found


def test_artifacts_listed_as_an_output_dir_is_collected_once(c3fs_bin, workdir: Path) -> None:
    (workdir / ".c3").write_text("output: [artifacts, results]\n")
    res = c3fs_bin("run", "-j", "once", "--", sys.executable, "job.py", cwd=workdir).ok()
    assert "output dir artifacts is $C3_ARTIFACTS_DIR" in res.err
    assert sorted(c3fs_bin("ls", "/jobs/once").out.split()) == [
        "ckpt.bin", "metrics.json", "plots/", "results/"]
