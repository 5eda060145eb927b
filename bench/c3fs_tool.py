"""c3fs driven through its CLI only (the contract below), measured like the peers.

    c3fs --store STORE push DIR --project P --job JOBID --json   -> {files, logical_bytes, stored_delta}
    c3fs --store STORE cp -r /jobs/JOBID DEST
    c3fs --store STORE pull JOBID --dest DIR
    c3fs --store STORE mount /jobs/JOBID MOUNTPOINT                (returns when ready)
    c3fs umount MOUNTPOINT
    c3fs --store STORE balance --json                            -> {stored_bytes, logical_bytes}

STORE is a local directory or `s3://bucket/prefix` (AWS_* variables in `env`). The index and
cache directories (XDG_*) live in the tool's work directory, so every repeat starts empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.measure import (
    Command,
    Mount,
    StepFailed,
    apparent_bytes,
    discard,
    fresh_dir,
    run,
    unmount,
    wait_mounted,
)
from bench.peers import Tool

PROJECT = "bench"


def c3fs_binary() -> str:
    local = Path(sys.executable).parent / "c3fs"
    return str(local) if local.exists() else "c3fs"


def cli_problem() -> str | None:
    """None if the c3fs CLI answers `--help` and offers the verbs the bench uses."""
    try:
        proc = subprocess.run([c3fs_binary(), "--help"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"c3fs CLI not runnable: {exc}"
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return f"c3fs CLI not ready (`c3fs --help` exited {proc.returncode}: {tail[0]})"
    return None if "push" in text else "c3fs CLI has no `push` command yet"


def missing_verbs() -> list[str]:
    """Verbs of the contract that `c3fs --help` does not list yet (their steps will fail)."""
    proc = subprocess.run([c3fs_binary(), "--help"], capture_output=True, timeout=60)
    text = proc.stdout.decode(errors="replace")
    verbs = ("push", "pull", "cp", "mount", "umount", "balance")
    return [v for v in verbs if not re.search(rf"^\s+{v}\b", text, re.MULTILINE)]


class C3fs(Tool):
    name = "c3fs"
    is_peer = False

    def __init__(self, work: Path, store: str | None = None, extra_env: dict | None = None) -> None:
        super().__init__(work)
        self.store = store or str(self.repo)
        self.extra_env = extra_env or {}
        self.jobs: dict[str, str] = {}
        self.run_id = 0
        self.pushed: dict[str, dict] = {}

    def missing(self) -> str | None:
        return cli_problem()

    @property
    def env(self) -> dict[str, str]:
        """The cache directory outlives the repeats (each repeat has a new store, so a new
        index); it keeps what a user's keeps between commands: `c3fs.preload`'s lists."""
        xdg = self.work / "xdg"
        cache = self.work.parent / f"{self.work.name}-cache"
        return {"XDG_DATA_HOME": str(xdg / "data"), "XDG_CACHE_HOME": str(cache),
                "XDG_STATE_HOME": str(xdg / "state"), "XDG_CONFIG_HOME": str(xdg / "config"),
                "C3FS_STORE": self.store, **self.extra_env}

    def warm_up(self) -> None:
        """Run each timed command once, on a scratch store of one file, so that the cache
        directory holds what it holds for anyone who has used c3fs before: the list of
        files each command loads, read ahead by its next run (`c3fs.preload`). Without
        this the first repeat alone would start without them."""
        scratch = self.work.parent / f"{self.work.name}-warm-up"
        fresh_dir(scratch / "src")
        (scratch / "src" / "f").write_bytes(b"warm-up\n")
        store, jobs = self.store, self.jobs
        self.store, self.jobs = str(scratch / "store"), {}
        try:  # the very command lines that are timed, on the scratch store
            run(self.ingest(scratch / "src", "warm"))
            with self.mount("warm", scratch / "mnt") as mounted:
                (mounted.mountpoint / "f").read_bytes()
            run(self.copy("warm", scratch / "cp"))
            run(self.restore("warm", scratch / "pull"))
            self.store_bytes()
        finally:
            self.store, self.jobs = store, jobs
            discard(scratch)

    def cli(self, *args: str, store: bool = True) -> list[str]:
        return [c3fs_binary(), *(("--store", self.store) if store else ()), *args]

    def version(self) -> str:
        with contextlib.suppress(StepFailed, OSError):
            return run(Command([c3fs_binary(), "--version"])).strip()
        return "c3fs (version unknown)"

    def setup(self) -> None:
        fresh_dir(self.work)
        self.run_id += 1
        self.jobs = {}

    def job_id(self, label: str) -> str:
        return self.jobs.setdefault(label, f"job_bench_{os.getpid()}_{self.run_id}_{label}")

    def ingest(self, src: Path, label: str) -> Command:
        return Command(self.cli("push", str(src), "--project", PROJECT, "--job", self.job_id(label),
                                "--json"), env=self.env)

    def after_ingest(self, src: Path, label: str, stdout: str) -> None:
        super().after_ingest(src, label, stdout)
        with contextlib.suppress(ValueError):
            self.pushed[label] = json.loads(stdout[stdout.index("{"):])

    def store_bytes(self) -> int:
        """`balance --json` stored_bytes; for a local store without `balance`, its file sizes."""
        try:
            out = run(Command(self.cli("balance", "--json"), env=self.env))
            return int(json.loads(out[out.index("{"):])["stored_bytes"])
        except (StepFailed, ValueError, KeyError):
            if self.store.startswith("s3://"):
                raise
            return apparent_bytes(Path(self.store))

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(self.cli("mount", f"/jobs/{self.job_id(label)}", str(mnt)), env=self.env)

    @contextlib.contextmanager
    def mount(self, label: str, mnt: Path) -> Iterator[Mount]:
        """`c3fs mount` returns when ready, leaving the daemon in the background."""
        mnt.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            run(self.mount_cmd(label, mnt), timeout=300)
            wait_mounted(mnt, None)
            yield Mount(mnt, started)
        finally:
            with contextlib.suppress(StepFailed, subprocess.TimeoutExpired):
                run(Command(self.cli("umount", str(mnt), store=False), env=self.env), timeout=60)
            unmount(mnt)

    def restore(self, label: str, dest: Path) -> Command:
        return Command(self.cli("pull", self.job_id(label), "--dest", str(dest / "out")), env=self.env)

    def copy(self, label: str, dest: Path) -> Command:
        return Command(self.cli("cp", "-r", f"/jobs/{self.job_id(label)}", str(dest / "out")),
                       env=self.env)

    def commands(self) -> dict[str, str]:
        cmds = super().commands()
        cmds.update(copy=self.copy("v1", Path("DEST")).describe(),
                    umount=Command(self.cli("umount", "MNT", store=False)).describe(),
                    balance=Command(self.cli("balance", "--json")).describe())
        return cmds
