"""Security defaults: the mount is read-only and private to its user unless --allow-other;
store, index and cache files are owner-only whatever the umask; credentials never appear in
output, logs, errors, job records or the index.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from s3server import MotoServer

from reliability.relkit import (
    Site,
    daemon_of,
    mount_options,
    mounted,
    needs_root,
)

NOBODY = 65534


@pytest.fixture
def public_dir():
    """A directory other users can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="c3fs-rel-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), user=NOBODY, group=NOBODY, capture_output=True, timeout=30)


WRITES = {
    "open-for-write": lambda m: open(m / "weights-0.bin", "r+b"),
    "create": lambda m: open(m / "new-file", "xb"),
    "truncate": lambda m: os.truncate(m / "weights-0.bin", 0),
    "mkdir": lambda m: os.mkdir(m / "new-dir"),
    "unlink": lambda m: os.unlink(m / "empty"),
    "rmdir": lambda m: os.rmdir(m / "step-000"),
    "rename": lambda m: os.rename(m / "empty", m / "renamed"),
    "symlink": lambda m: os.symlink("x", m / "new-link"),
    "link": lambda m: os.link(m / "empty", m / "hard-link"),
    "chmod": lambda m: os.chmod(m / "empty", 0o777),
    "utime": lambda m: os.utime(m / "empty", (1, 1)),
    "setxattr": lambda m: os.setxattr(m / "empty", "user.x", b"1"),
    "mknod": lambda m: os.mkfifo(m / "fifo"),
}


@pytest.mark.fuse
@needs_root
def test_mount_is_read_only_and_private(site: Site, small_tree: Path, public_dir: Path) -> None:
    site.push(small_tree, "job")
    mnt = public_dir / "mnt"
    with mounted(site, "/jobs/job", mnt):
        options, super_options = mount_options(mnt)
        assert "ro" in options and {"nosuid", "nodev"} <= options
        assert "allow_other" not in super_options
        for name, write in WRITES.items():
            with pytest.raises(OSError) as info:
                write(mnt)
            assert info.value.errno == errno.EROFS, name
        assert (mnt / "empty").read_bytes() == b""
        denied = as_nobody("cat", str(mnt / "step-000" / "metrics-000.txt"))
        assert denied.returncode != 0 and b"Permission denied" in denied.stderr
        assert as_nobody("ls", str(mnt)).returncode != 0
    mnt.rmdir()
    with mounted(site, "/jobs/job", mnt, "--allow-other"):
        assert "allow_other" in mount_options(mnt)[1]
        shared = as_nobody("cat", str(mnt / "step-000" / "metrics-000.txt"))
        assert shared.returncode == 0
        assert shared.stdout == (small_tree / "step-000" / "metrics-000.txt").read_bytes()
        with pytest.raises(OSError) as info:
            open(mnt / "new-file", "xb")
        assert info.value.errno == errno.EROFS


# owner-only files -----------------------------------------------------------------------------
def loose_modes(root: Path) -> list[str]:
    """Everything below (and including) `root` that is not 0700 (dirs) / 0600 (files)."""
    loose = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != want:
            loose.append(f"{oct(stat.S_IMODE(st.st_mode))} {path.relative_to(root.parent)}")
    return loose


def run_umask0(site: Site, *args, **kwargs):
    result = site.run(*args, umask=0, **kwargs)
    return result.ok()


@pytest.mark.fuse
def test_store_and_cache_are_owner_only_under_umask_0(tmp_path: Path, small_tree: Path) -> None:
    site = Site(str(tmp_path / "home" / "data" / "store"), tmp_path / "home" / "cache" / "c3fs")
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    (work / ".c3").write_text("output: [results]\n")
    run_umask0(site, "push", small_tree, "-p", "rel", "-j", "job")
    run_umask0(site, "run", "-j", "ran", "--", "sh", "-c", "echo 1 > results/r.txt", cwd=work)
    run_umask0(site, "cp", "-r", "/jobs/job", tmp_path / "copy")
    run_umask0(site, "pull", "ran", "--dest", tmp_path / "pulled")
    run_umask0(site, "config", "set", "quota", "1GiB")
    run_umask0(site, "rm", "ran")
    run_umask0(site, "gc")
    run_umask0(site, "verify")
    run_umask0(site, "index", "rebuild")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run_umask0(site, "mount", "/jobs/job", mnt)
    try:
        assert (mnt / "empty").read_bytes() == b""
    finally:
        run_umask0(site, "umount", mnt)
    assert loose_modes(site.root) == []
    assert loose_modes(site.cache) == []


@pytest.mark.s3
def test_s3_cache_is_owner_only_under_umask_0(tmp_path: Path, small_tree: Path,
                                              s3_url: str) -> None:
    site = Site(s3_url, tmp_path / "cache" / "c3fs")
    run_umask0(site, "push", small_tree / "step-000", "-p", "rel", "-j", "job")
    run_umask0(site.with_cache(site.cache), "cp", "-r", "/jobs/job", tmp_path / "copy")
    run_umask0(site, "verify")
    assert loose_modes(site.cache) == []


# credentials ----------------------------------------------------------------------------------
SECRET = "c3fsRelSecret/Do+Not+Print+0123456789abcdefXYZ"
TOKEN = "c3fsRelToken-FQoGZXIvYXdzEJr-Do-Not-Print"


def all_text(results) -> str:
    return "\n".join(r.out + r.err for r in results)


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def commands(site: Site, src: Path, tmp_path: Path) -> list:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return [site.run("-vv", "push", src, "-p", "rel", "-j", "job", "--json"),
            site.run("-vv", "ls", "-l", "/jobs/"),
            site.run("-vv", "ls", "--json", "/jobs/"),
            site.run("-vv", "cp", "-r", "/jobs/job", tmp_path / "copy"),
            site.run("-vv", "run", "-j", "ran", "--", "true", cwd=work),
            site.run("-vv", "balance", "--json"),
            site.run("-vv", "verify", "--json"),
            site.run("-vv", "gc"),
            site.run("-vv", "config", "show"),
            site.run("-vv", "pull", "--dest", tmp_path / "pulled")]


@pytest.mark.s3
def test_a_wrong_secret_is_never_shown(tmp_path: Path, small_tree: Path) -> None:
    server = MotoServer.launch()
    try:
        server.create_bucket("guarded")
        server.require_auth()
        env = dict(server.env(), AWS_ACCESS_KEY_ID="AKIARELIABILITYTEST", AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_SESSION_TOKEN=TOKEN)
        site = Site("s3://guarded/c3", tmp_path / "cache", env)
        results = commands(site, small_tree / "step-000", tmp_path)
    finally:
        server.stop()
    assert all(r.code != 0 for r in results)
    text = all_text(results)
    assert "refused access" in text
    assert SECRET not in text and TOKEN not in text
    for secret in (SECRET, TOKEN):
        assert files_containing(tmp_path, secret.encode()) == []


@pytest.mark.fuse
@pytest.mark.s3
def test_the_right_secret_is_never_recorded(tmp_path: Path, small_tree: Path, s3_url: str,
                                            s3_server: MotoServer) -> None:
    site = Site(s3_url, tmp_path / "cache", {"AWS_SECRET_ACCESS_KEY": SECRET,
                                             "AWS_SESSION_TOKEN": TOKEN})
    results = commands(site, small_tree / "step-000", tmp_path)
    assert all(r.code == 0 for r in results), [r.err for r in results if r.code]
    record = json.loads(results[0].out)
    assert record["id"] == "job"
    mnt = tmp_path / "mnt"
    with mounted(site, "/jobs/job", mnt, "--log-file", tmp_path / "mount.log"):
        daemon = daemon_of(mnt)
        assert daemon is not None
        assert not any(SECRET in part for part in daemon.cmdline())
        assert (mnt / "metrics-000.txt").read_bytes() == \
            (small_tree / "step-000" / "metrics-000.txt").read_bytes()
    text = all_text(results)
    assert SECRET not in text and TOKEN not in text
    bucket = s3_url.split("/")[2]
    for key, body in s3_server.snapshot()[bucket].items():
        assert SECRET.encode() not in body and TOKEN.encode() not in body, key
    for secret in (SECRET, TOKEN):
        assert files_containing(tmp_path, secret.encode()) == []  # index, logs, copies

