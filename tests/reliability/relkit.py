"""Tools for the reliability suite: sites (a store and its index cache), the real CLI in a
subprocess, kills at chosen moments, damage to a store, a model of what each job reaches
(to know exactly what `verify` must report), and real FUSE mounts.

Everything here drives c3fs from outside, the way a user or a crash would: subprocesses of
`.venv/bin/c3fs`, bytes flipped in pack files, `kill -9`. The library is used only to look
(where a blob lives, which trees a job reaches) and to craft hostile objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psutil
import pytest
from clikit import CliResult

BIN = Path(sys.executable).parent / "c3fs"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (tmpfs, setuid)")
KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024


# the CLI ------------------------------------------------------------------------------------
Result = CliResult


def _text(data: bytes | str | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "surrogateescape")
    return data or ""


@dataclass
class Site:
    """One machine's view of one store: the store (path or s3:// URL) and its index cache."""

    store: str
    cache: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(C3FS_STORE=str(self.store), C3FS_CACHE_DIR=str(self.cache), COLUMNS="80")
        env.update(self.env_extra)
        env.update(extra)
        return env

    def run(self, *args: str | os.PathLike, timeout: float = 180, **kwargs) -> Result:
        env = self.env(**kwargs.pop("env", {}))
        proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)
        return Result(proc.returncode, _text(proc.stdout), _text(proc.stderr))

    def popen(self, *args: str | os.PathLike, **kwargs) -> subprocess.Popen:
        env = self.env(**kwargs.pop("env", {}))
        return subprocess.Popen([str(BIN), *map(str, args)], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)

    def with_cache(self, cache: Path) -> Site:
        """The same store seen from another machine (an index cache of its own)."""
        return Site(self.store, cache, dict(self.env_extra))

    # common commands ------------------------------------------------------------------------
    def push(self, src: Path, job: str, project: str = "rel", **kwargs) -> dict:
        result = self.run("push", src, "-p", project, "-j", job, "--json", **kwargs).ok()
        return json.loads(result.out)

    def record(self, job: str) -> dict:
        items = json.loads(self.run("ls", "--json", "/jobs/").ok().out)["entries"]
        return next(item["record"] for item in items if item["name"] == job)

    def jobs(self) -> list[str]:
        result = self.run("ls", "/jobs/").ok()
        return sorted(line.rstrip("/") for line in result.out.split())

    def verify(self, *jobs: str) -> tuple[int, dict]:
        result = self.run("verify", "--json", *jobs)
        assert result.code in (0, 6), result.err
        assert "Traceback" not in result.err, result.err
        return result.code, json.loads(result.out)

    def assert_verifies(self) -> dict:
        code, report = self.verify()
        assert code == 0 and not report["problems"], report["problems"]
        return report

    # a local store's files ------------------------------------------------------------------
    @property
    def root(self) -> Path:
        assert "://" not in self.store, "only for local stores"
        return Path(self.store)

    def packs(self) -> dict[str, int]:
        """{pack id: size} of the complete packs in a local store (temp files excluded)."""
        found = {}
        packs = self.root / "packs"
        if packs.is_dir():
            for path in packs.glob("*/*"):
                if not path.name.startswith(".tmp.") and len(path.name) == 64:
                    found[path.name] = path.stat().st_size
        return found

    def pack_bytes(self) -> int:
        return sum(self.packs().values())

    def pack_path(self, pack_id: str) -> Path:
        return self.root / "packs" / pack_id[:2] / pack_id

    @contextlib.contextmanager
    def repo(self) -> Iterator:
        """The library's Repo on this site (for looking and crafting, not for the tests' acts)."""
        from c3fs.repo import Repo

        saved = os.environ.get("C3FS_CACHE_DIR")
        os.environ["C3FS_CACHE_DIR"] = str(self.cache)
        try:
            repo = Repo.open(str(self.store))
            try:
                yield repo
            finally:
                repo.close()
        finally:
            if saved is None:
                os.environ.pop("C3FS_CACHE_DIR", None)
            else:
                os.environ["C3FS_CACHE_DIR"] = saved


def make_local_store(path: Path, pack_target: int) -> None:
    """Create a local store with a chosen pack size (small packs: more of them to damage)."""
    from c3fs.store import StoreConfig
    from c3fs.store.local import LocalBackend

    config = StoreConfig(store_id=secrets.token_hex(8), created=time.time(),
                         pack_target=pack_target)
    LocalBackend(path).create("config", msgspec.json.encode(config))


# kills ---------------------------------------------------------------------------------------
@dataclass
class Killed:
    killed: bool  # False: the process had finished before the moment came
    code: int
    err: str


def kill_after(proc: subprocess.Popen, delay: float) -> Killed:
    """SIGKILL `proc` `delay` seconds from now, unless it has exited by then."""
    try:
        _, err = proc.communicate(timeout=delay)
        return Killed(False, proc.returncode, _text(err))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        return Killed(True, proc.returncode, _text(err))


_PEAK = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def run_peak_rss(argv: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """Run `argv`; return (exit code, stderr, peak RSS in bytes). Through a small launcher:
    Linux keeps ru_maxrss across fork+exec, so a child of the (large) test process would
    report the test process's own peak."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, *argv], env=env, capture_output=True,
                          text=True, timeout=120)
    code, peak = proc.stdout.split()
    return int(code), proc.stderr, int(peak)


def spread_delays(seed: int, count: int, span: float) -> list[float]:
    """`count` seeded random moments in [0, span), one in each of `count` equal slices, so
    the kills land in every stage (start-up, chunking, pack writes, fsync, registering)."""
    rng = random.Random(seed)
    return [(i + rng.random()) * span / count for i in range(count)]


# damage --------------------------------------------------------------------------------------
def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# what each job reaches -----------------------------------------------------------------------
@dataclass
class DirModel:
    path: str  # "/" for a job's root
    tree_id: bytes
    files: list[tuple[str, list[bytes]]]
    subdirs: list[DirModel]


def job_model(repo, job: str) -> DirModel:
    """Every tree and chunk job `job` reaches, by path (read while the store is intact)."""
    from c3fs.objects.job import JOB
    from c3fs.objects.tree import DIR, FILE

    def walk(path: str, tree_id: bytes) -> DirModel:
        model = DirModel(path or "/", tree_id, [], [])
        for entry in repo.tree(tree_id).entries:
            child = path + "/" + entry.name.decode("utf-8", "backslashreplace")
            if entry.kind == DIR:
                model.subdirs.append(walk(child, entry.target))
            elif entry.kind == FILE:
                model.files.append((child, entry.chunk_ids()))
        return model

    return walk("", repo.record(JOB, job).root_id)


def affected(models: dict[str, DirModel], damaged: set[bytes]) -> set[tuple[str, str]]:
    """(job, path) pairs `verify` must name: a damaged tree's directory (nothing below it is
    reachable), else each file with a damaged chunk."""
    found: set[tuple[str, str]] = set()

    def visit(job: str, model: DirModel) -> None:
        if model.tree_id in damaged:
            found.add((job, model.path))
            return
        for path, chunks in model.files:
            if damaged.intersection(chunks):
                found.add((job, path))
        for sub in model.subdirs:
            visit(job, sub)

    for job, model in models.items():
        visit(job, model)
    return found


def all_blobs(model: DirModel) -> Iterator[tuple[str, bytes, str]]:
    """(kind, blob id, path) of every tree and chunk below `model`."""
    yield "tree", model.tree_id, model.path
    for path, chunks in model.files:
        for chunk_id in chunks:
            yield "chunk", chunk_id, path
    for sub in model.subdirs:
        yield from all_blobs(sub)


def reported(report: dict) -> set[tuple[str, str]]:
    """(job, path) pairs from `verify --json` ("job X:/path" entries; refs as (X, ""))."""
    pairs = set()
    for problem in report["problems"]:
        for where in problem["broken"]:
            label, _, path = where.partition(":")
            pairs.add((label.split(" ", 1)[1], path))
    return pairs


# trees on disk ------------------------------------------------------------------------------
def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, tuple[str, str]]:
    """{relative path: (kind, sha256 or link target)} below `root` (never follows links)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", "")
            else:
                found[rel] = ("file", file_digest(path))
    return found


def leftovers(root: Path) -> list[str]:
    """Temp files a copy left behind (there must be none)."""
    return [str(p) for p in root.rglob("*") if p.name.startswith(".c3fs-tmp.")]


# mounts --------------------------------------------------------------------------------------
def mounted_here(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == target for line in f)


def mount_options(path: Path) -> tuple[set[str], set[str]]:
    """(per-mount options, super options) of the mount at `path`, from /proc/self/mountinfo."""
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.decode().split()
            if os.fsencode(fields[4]) == target:
                sep = fields.index("-")
                return set(fields[5].split(",")), set(fields[sep + 3].split(","))
    raise AssertionError(f"{path} is not mounted")


def daemon_of(mountpoint: Path) -> psutil.Process | None:
    """The mount daemon serving `mountpoint` (a forked `c3fs mount ... MNT` process)."""
    target = str(mountpoint)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if target in cmdline and any(part.endswith("mount") for part in cmdline) and \
                proc.pid != os.getpid():
            return proc
    return None


@contextlib.contextmanager
def mounted(site: Site, ref: str | None, mountpoint: Path, *options: str) -> Iterator[Path]:
    """`c3fs mount [REF] MNT`, waited for by the command itself; always torn down with
    `fusermount3 -u -z`, and the daemon (found by its pid) is made to exit."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = site.run("mount", *([ref] if ref else []), mountpoint, *options, timeout=120)
    daemon = daemon_of(mountpoint)
    try:
        result.ok()
        assert os.path.ismount(mountpoint)
        yield mountpoint
    finally:
        if mounted_here(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True)
        if daemon is not None:
            try:
                daemon.wait(timeout=20)
            except psutil.TimeoutExpired:
                daemon.kill()
            except psutil.NoSuchProcess:
                pass


def drop_page_cache(path: Path) -> None:
    """Forget the kernel's cached pages of one file, so the next read reaches the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# tmpfs ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def ext4_disk(path: Path, size: int) -> Iterator[Path]:
    """A small ext4 filesystem on a loop device (a real disk, where a full disk is ENOSPC
    from write(); tmpfs differs for mapped files)."""
    image = path.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-m", "0", str(image)], check=True)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        image.unlink()


def fill(path: Path, size: int | None = None) -> None:
    """Write `size` bytes to `path` (None: until the disk is full)."""
    with open(path, "wb", buffering=0) as f:
        left = size if size is not None else 1 << 62
        while left:
            try:
                left -= f.write(b"\1" * min(left, 64 * KiB))
            except OSError:
                if size is not None:
                    raise
                return


def copy_site(site: Site, dest: Path) -> Site:
    """A byte-for-byte copy of a local store and its cache (to start each kill from the same
    state)."""
    shutil.copytree(site.root, dest / "store", symlinks=True)
    shutil.copytree(site.cache, dest / "cache", symlinks=True)
    return Site(str(dest / "store"), dest / "cache")
