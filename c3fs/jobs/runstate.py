"""What a `c3fs run` leaves behind while it runs, so that the next one can clean up after a
killed one; and the working dir's `artifacts/`, which one run at a time may use.

Each run keeps a state dir, `$TMPDIR/c3fs-run-<job id>-<pid>.<start time>-XXXXXXXX/` (named
after the `c3fs run` process, so that even a run killed before it wrote anything there is
judged), holding `owner.json`: the pid and start time of `c3fs run` and of the job's
command, the working dir, and the dataset mountpoints (each recorded before it is mounted). A run that ends removes it. A killed run
(kill -9, or SIGTERM before its command started) leaves it; the next `c3fs run`, in any
working dir, finds it and, once neither process is alive (a reused pid does not count: the
start time must match), unmounts what it recorded that is still a c3fs mount, removes the
dir and says so. A dir without `owner.json` (or of another user) is never touched.

`$C3_ARTIFACTS_DIR` is the working dir's `artifacts/`, as on the platform. A run holds an
exclusive lock (flock) on the working dir while it uses it, so a second run there at the
same time is refused. An `artifacts/` that is not empty when a job starts (an earlier job's,
or the user's) is never collected as this job's. When every file, symlink and directory in
it is in the stored tree of the job last run in that working dir (noted in the local index
when its record was written; each file's bytes checked against that job's chunks, as `pull`
checks a file it may skip), it is removed, with a warning naming that job (`c3fs pull` gets it back): else each
run would leave one more copy of a stored job behind. Anything else (a file no stored job
has, an upload that failed, an edit since, a store that cannot be read) is moved aside to
`artifacts.prev-<time>` with a warning, never deleted. One with a mount point inside is
refused instead (exit 4): the mount would move along with it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from c3fs.errors import C3fsError
from c3fs.fsutil import count, human, tree_bytes, walk_files
from c3fs.objects.job import JOB, JobRecord
from c3fs.objects.tree import DIR, FILE, LINK, Entry

if TYPE_CHECKING:
    from c3fs.repo import Repo

log = logging.getLogger(__name__)
PREFIX = "c3fs-run-"
OWNER = "owner.json"
NAMED = re.compile(re.escape(PREFIX) + r"(.+)-(\d+)\.(\d+)-[^-]+")
ARTIFACTS = "artifacts"
RAN = "ran/"  # local index key: + sha256 of a working dir's real path -> the job last run there


class WorkdirBusy(C3fsError):
    exit_code = 4


class MountedInArtifacts(C3fsError):
    """`artifacts/` holds a mount point: moving it aside would move a live mount along."""

    exit_code = 4


def process_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19]) if fields[0] != b"Z" else None


def _alive(owner: dict, key: str) -> bool:
    pid, start = owner.get(key), owner.get(key + "_start")
    return (isinstance(pid, int) and pid > 0 and start is not None
            and process_start(pid) == start)


class RunState:
    """This run's state dir and `owner.json` (see the module doc)."""

    def __init__(self, job_id: str, workdir: Path) -> None:
        pid, start = os.getpid(), process_start(os.getpid())
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{job_id}-{pid}.{start}-"))
        self.owner = {"job": job_id, "workdir": str(workdir), "pid": pid, "pid_start": start,
                      "command": 0, "command_start": None, "mounts": []}
        self._save()

    def add_mount(self, path: Path) -> None:
        self.owner["mounts"].append(str(path))
        self._save()

    def command_started(self, pid: int) -> None:
        self.owner.update(command=pid, command_start=process_start(pid))
        self._save()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def _save(self) -> None:
        tmp = self.dir / (OWNER + ".tmp")
        tmp.write_text(json.dumps(self.owner))
        os.replace(tmp, self.dir / OWNER)


def clean_stale_runs() -> None:
    """Remove the state dirs of this user's killed runs, unmounting what they mounted."""
    base = Path(tempfile.gettempdir())
    try:
        names = [n for n in os.listdir(base) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        owner = _stale_owner(base / name)
        if owner is not None:
            _clean(base / name, owner)


def _stale_owner(path: Path) -> dict | None:
    """The owner record of a state dir left by a killed run of this user, else None."""
    named = NAMED.fullmatch(path.name)
    try:
        st = path.lstat()
    except OSError:
        return None
    if named is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return None
    owner = {"job": named[1], "pid": int(named[2]), "pid_start": int(named[3])}
    try:  # absent or half-written when the run was killed at once: the name says enough
        recorded = json.loads((path / OWNER).read_text())
        if isinstance(recorded, dict) and recorded.get("pid") == owner["pid"]:
            owner = recorded
    except (OSError, ValueError):
        pass
    if _alive(owner, "pid") or _alive(owner, "command"):
        return None
    return owner


def _clean(path: Path, owner: dict) -> None:
    unmounted = [m for m in owner.get("mounts", []) if isinstance(m, str) and _unmount_stale(m)]
    size = tree_bytes(path)
    shutil.rmtree(path, ignore_errors=True)
    what = f"removed its temp dir {path} ({human(size)})"
    if unmounted:
        what += f" and unmounted {', '.join(unmounted)}"
    log.warning("an earlier c3fs run of job %s (pid %s) was killed: %s", owner.get("job"),
                owner.get("pid"), what)


def _unmount_stale(mountpoint: str) -> bool:
    """Unmount a c3fs mount nobody owns any more (lazily: a process may still be inside)."""
    from c3fs.fuse import FSTYPE, MountError, mount_type, unmount

    if mount_type(mountpoint) != FSTYPE:
        return False
    try:
        unmount(mountpoint, lazy=True)
    except MountError as exc:
        log.error("could not unmount %s, left by a killed c3fs run: %s", mountpoint, exc)
        return False
    return True


def clear_dead_mount(mountpoint: Path) -> None:
    """A c3fs mount at `mountpoint` whose daemon died ("Transport endpoint is not
    connected") is unmounted, with a warning; a live one is left (mounting there fails)."""
    from c3fs.fuse import FSTYPE, mount_type

    if mount_type(str(mountpoint)) != FSTYPE:
        return
    try:
        os.listdir(mountpoint)  # not stat: the kernel may answer that from its cache
        return
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            return
    if _unmount_stale(str(mountpoint)):
        log.warning("unmounted a dead c3fs mount at %s (its daemon had died)", mountpoint)


def lock_workdir(workdir: Path) -> int:
    """An fd holding the working dir's lock for this run (closed: released), or
    `WorkdirBusy` when another run uses it."""
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkdirBusy(f"another c3fs run is running in {workdir} and uses its "
                          f"{ARTIFACTS}/: wait for it, or run in another directory (-C)") from None
    return fd


def fresh_artifacts(workdir: Path, job_id: str, repo: Repo | None = None) -> Path:
    """The working dir's `artifacts/`, empty: one that holds anything is removed when all of
    it is stored in the job last run there (in `repo`), else moved aside (module doc)."""
    artifacts = workdir / ARTIFACTS
    if artifacts.is_symlink() or (artifacts.exists() and not _empty_dir(artifacts)):
        _check_nothing_mounted(artifacts)
        stored = _stored_in(repo, workdir, artifacts) if repo is not None else None
        aside = _aside_name(workdir)
        n = sum(1 for _ in walk_files(artifacts)) if artifacts.is_dir() else 1
        try:
            os.rename(artifacts, aside)
        except OSError as exc:
            raise C3fsError(f"cannot move {artifacts} aside to {aside.name}: "
                            f"{exc.strerror}") from None
        if stored is None:
            log.warning("job %s: ./%s held %s from before the job; moved to ./%s (not "
                        "collected, not deleted)", job_id, ARTIFACTS, count(n, "file"),
                        aside.name)
        else:
            _remove_stored(aside, job_id, stored.id, n)
    try:
        artifacts.mkdir(exist_ok=True)
    except OSError as exc:
        raise C3fsError(f"cannot create {artifacts}: {exc.strerror}") from None
    return artifacts


def _remove_stored(aside: Path, job_id: str, stored_id: str, n: int) -> None:
    """Remove `aside`, an `artifacts/` all of whose content job `stored_id` holds."""
    what = (f"job {job_id}: ./{ARTIFACTS} held {count(n, 'file')} of job {stored_id}, all "
            f"stored in it (c3fs pull {stored_id} gets them back)")
    try:
        shutil.rmtree(aside)
    except OSError as exc:
        log.warning("%s; moved to ./%s, which could not be removed: %s", what, aside.name,
                    exc.strerror or exc)
        return
    log.warning("%s: removed", what)


# is an artifacts/ all stored? ----------------------------------------------------------------
def remember_run(repo: Repo, workdir: Path, job_id: str) -> None:
    """Note in the local index that job `job_id` ran in `workdir` (its record is stored): the
    next run there removes the `artifacts/` it finds if that job holds all of it."""
    try:
        repo.index.local_put(_ran_key(workdir), job_id.encode())
    except C3fsError as exc:  # only a hint: the next run moves artifacts/ aside instead
        log.debug("could not note that job %s ran in %s: %s", job_id, workdir, exc)


def _ran_key(workdir: Path) -> str:
    # hashed: a path may be longer than LMDB's 511-byte keys, and not UTF-8
    return RAN + hashlib.sha256(os.fsencode(os.path.realpath(workdir))).hexdigest()


def _stored_in(repo: Repo, workdir: Path, artifacts: Path) -> JobRecord | None:
    """The job last run in `workdir`, if the store still has it and its tree holds all of
    `artifacts` (`_all_in_tree`); else None, also when anything cannot be read."""
    if artifacts.is_symlink() or not artifacts.is_dir():
        return None
    try:
        noted = repo.index.local_get(_ran_key(workdir))
        if noted is None:
            return None
        record = repo.store.get_ref(JOB, noted.decode())  # the store's: not one removed since
        return record if _all_in_tree(repo, artifacts, record.root_id) else None
    except (C3fsError, OSError, ValueError) as exc:
        log.info("could not check %s against the job last run there (%s): moving it aside",
                 artifacts, exc)
        return None


def _all_in_tree(repo: Repo, top: Path, tree_id: bytes) -> bool:
    """Whether every file, symlink and directory below `top` is at its path in the tree
    `tree_id`, a file with the same bytes (each chunk's blake3 is its id), a symlink with the
    same target. What only the tree has (the job's `output:` dirs) does not matter."""
    dirs = [(os.fsencode(top), tree_id)]
    while dirs:
        path, tree_id = dirs.pop()
        tree = repo.tree(tree_id, check=False, keep=False)  # (each entry checked when read)
        with os.scandir(path) as items:
            for item in items:
                at = tree.find(item.name)
                if at < 0 or not _same(item, tree[at], dirs):
                    return False
    return True


def _same(item: os.DirEntry[bytes], entry: Entry, dirs: list[tuple[bytes, bytes]]) -> bool:
    """Whether `item` is what `entry` stored; a directory's content is left to `dirs`."""
    if item.is_symlink():
        return entry.kind == LINK and os.readlink(item.path) == entry.target
    if item.is_dir(follow_symlinks=False):
        if entry.kind != DIR:
            return False
        dirs.append((item.path, entry.target))
        return True
    if entry.kind != FILE or not item.is_file(follow_symlinks=False):
        return False  # (a fifo, socket or device file is never stored)
    from c3fs.jobs.download import same_content  # (what `pull` checks a file with)

    return (item.stat(follow_symlinks=False).st_size == entry.size
            and same_content(item.path, entry))


def _check_nothing_mounted(artifacts: Path) -> None:
    """Refuse to move aside an `artifacts/` with a mount point in it (it would move along,
    still mounted, and its files would be neither the job's nor unmounted by it)."""
    from c3fs.fuse import mounts_within

    if artifacts.is_symlink() or not artifacts.is_dir():
        return  # (the link is moved, not what it points to)
    inside = mounts_within(artifacts)
    if inside:
        raise MountedInArtifacts(f"cannot move {artifacts} aside for the new job: {inside[0]} "
                                 "is mounted inside it; unmount it first (c3fs umount, or "
                                 "umount(8)), or mount it outside artifacts/")


def _empty_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _aside_name(workdir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = workdir / f"{ARTIFACTS}.prev-{stamp}", 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = workdir / f"{ARTIFACTS}.prev-{stamp}-{n}"
    return aside
