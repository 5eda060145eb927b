"""Mounting as a user other than root, as a job does: a user made by the test (useradd,
removed after) gets the store and a cache directory, then mounts, reads and unmounts with
`c3fs mount` through the setuid fusermount3, run as that user with runuser.

That user needs /dev/fuse readable and writable (distributions ship it 0666). Where it is
not, the test does not change the machine's device: it runs as the user in a private mount
namespace (unshare -m) in which a 0666 node of the same device is bind-mounted over
/dev/fuse, and a fuse.conf with `user_allow_other` over /etc/fuse.conf for --allow-other.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fusehelp import run_c3fs, sbin_link

from c3fs.errors import FuseUnavailable

pytestmark = pytest.mark.fuse
BIN = Path(sys.executable).parent
JOB = "job_user"


@pytest.fixture
def user() -> Iterator[pwd.struct_passwd]:
    """A new system user with no home and no login shell; deleted after the test, and its
    processes (a daemon the test left) stopped by pid."""
    if os.geteuid() != 0:
        pytest.skip("making a user needs root")
    for tool in ("useradd", "userdel", "runuser", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    name = f"c3fs-t{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        _stop_processes_of(pwd.getpwnam(name).pw_uid)
        subprocess.run(["userdel", name], capture_output=True)


def _stop_processes_of(uid: int) -> None:
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)


@pytest.fixture
def home(user, tmp_path) -> Iterator[Path]:
    """A directory the user owns (pytest's tmp_path is root's, 0700), holding a store that
    root pushed to and still owns (the user may read it, not write it); removed after."""
    base = Path(tempfile.mkdtemp(prefix="c3fs-user-"))
    try:
        probe = _in_namespace(user, base, f"{sys.executable} -c 'import c3fs_cli.main'",
                              fuse_for_all=False)
        if probe.returncode != 0:
            pytest.skip(f"this venv is not usable by another user: {probe.stderr.strip()}")
        src = tmp_path / "src"
        (src / "sub").mkdir(parents=True)
        (src / "sub" / "w.txt").write_bytes(b"weights\n")
        env = dict(os.environ, C3FS_STORE=str(base / "store"),
                   C3FS_CACHE_DIR=str(tmp_path / "root-cache"))
        run_c3fs("push", str(src), "-p", "p", "--job", JOB, env=env)
        (base / "mnt").mkdir()
        os.chown(base, user.pw_uid, user.pw_gid)
        os.chown(base / "mnt", user.pw_uid, user.pw_gid)
        for path in [base / "store", *(base / "store").rglob("*")]:  # root's, read-only
            path.chmod(0o755 if path.is_dir() else 0o444)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/bin:/bin", "C3FS_STORE": str(home / "store"),
            "C3FS_CACHE_DIR": str(home / "cache"), "HOME": str(home), "LANG": "C.UTF-8"}


def _command(user, home: Path, script: str) -> list[str]:
    """`script` (sh -e) as `user` (None: as root), with only the variables of `_env`."""
    command = ["env", "-i", *(f"{k}={v}" for k, v in _env(home).items()), "sh", "-ec", script]
    return ["runuser", "-u", user.pw_name, "--", *command] if user else command


def _closed_ancestor(path: str) -> tuple[Path, Path] | None:
    """The first directory on the way to `path` that others may not enter (root's home,
    where pyenv puts this interpreter), and its child on that way; None if there is none."""
    real = Path(os.path.realpath(path))
    ancestors = [*reversed(real.parents), real]
    for directory, child in zip(ancestors, ancestors[1:], strict=False):
        if not directory.stat().st_mode & 0o001:
            return directory, child
    return None


def _in_namespace(user, home: Path, *steps: str, fuse_for_all: bool = True,
                  files: dict[str, str] | None = None,
                  first: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`steps` in a private mount namespace: the odd ones as `user`, the even ones as root.
    There, with `fuse_for_all`, /dev/fuse is a crw-rw-rw- node of the same device; each of
    `files` (/etc/fuse.conf, /etc/fstab) has the text given; a directory others may not
    enter on the way to this interpreter (root's home) is replaced by one showing only that
    way; then root runs the commands `first`. Nothing changes outside the namespace."""
    scratch = home.parent / f"{home.name}-ns"
    scratch.mkdir()
    try:
        setup = []
        if fuse_for_all:
            node = scratch / "fuse"
            os.mknod(node, 0o666 | stat.S_IFCHR, os.stat("/dev/fuse").st_rdev)
            os.chmod(node, 0o666)  # whatever the umask
            setup.append(f"mount --bind {node} /dev/fuse")
        for i, (path, text) in enumerate((files or {}).items()):
            (scratch / f"file{i}").write_text(text)
            setup.append(f"mount --bind {scratch / f'file{i}'} {path}")
        if closed := _closed_ancestor(sys.executable):
            directory, child = closed
            (scratch / "keep").mkdir()
            setup += [f"mount --bind {child} {scratch / 'keep'}",
                      f"mount -t tmpfs -o mode=0755 c3fs-test {directory}",
                      f"mkdir {child}", f"mount --bind {scratch / 'keep'} {child}"]
        commands = setup + list(first) + [shlex.join(_command(None if i % 2 else user, home, step))
                            for i, step in enumerate(steps)]
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec",
                               "\n".join(commands)], capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


MOUNT_READ_UMOUNT = f"""
c3fs mount /jobs/{JOB} "$HOME/mnt"
cat "$HOME/mnt/sub/w.txt"
stat -c 'owner=%U mode=%A' "$HOME/mnt/sub/w.txt"
grep " $HOME/mnt " /proc/self/mountinfo | sed 's/.* - /type=/'
c3fs umount "$HOME/mnt"
grep -c " $HOME/mnt " /proc/self/mountinfo || echo unmounted
"""


def test_a_user_mounts_reads_and_unmounts(user, home):
    proc = _in_namespace(user, home, MOUNT_READ_UMOUNT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "weights\n" in out and f"owner={user.pw_name} mode=-r" in out
    assert "type=fuse.c3fs c3fs " in out and f"user_id={user.pw_uid}" in out  # by fusermount3
    assert out.rstrip().endswith("unmounted")
    assert (home / "cache").stat().st_uid == user.pw_uid  # the user's own index
    # root's store takes no write from the user: rm and gc cannot know of the mount (c3fs
    # rm --help), and the user is told, in one line
    [warning] = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warning.startswith("c3fs: warning: this mount is not registered in the store ("), warning
    assert warning.endswith(f"): rm and gc do not know that it reads job {JOB}"), warning


def test_what_a_user_lacks_is_one_line(user, home):
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:  # as here: root's only
        proc = _in_namespace(user, home, f'c3fs mount /jobs/{JOB} "$HOME/mnt"',
                             fuse_for_all=False)
        assert proc.returncode == FuseUnavailable.exit_code and not proc.stdout, proc.stderr
        assert "/dev/fuse (crw" in proc.stderr and len(proc.stderr.splitlines()) == 1
    lacks = {"--allow-other": "needs the line user_allow_other in /etc/fuse.conf",
             "root's mountpoint": "is not writable by this user: fusermount3 mounts only",
             "root's store": f"cannot open the store as this user: Permission denied: {home}"}
    (home / "roots").mkdir()  # root's, 0755
    proc = _in_namespace(user, home, f"c3fs mount /jobs/{JOB} {home / 'mnt'}", first=(
        f"cp /usr/bin/fusermount3 {home}-ns/fm", f"mount --bind {home}-ns/fm /usr/bin/fusermount3"))
    assert proc.returncode == 8 and "/usr/bin/fusermount3 is not setuid root" in proc.stderr
    for case, message in lacks.items():
        mountpoint = home / "roots" if case == "root's mountpoint" else home / "mnt"
        if case == "root's store":
            (home / "store").chmod(0o700)
        option = "--allow-other" if case == "--allow-other" else ""
        proc = _in_namespace(user, home, f"c3fs mount {option} /jobs/{JOB} {mountpoint}")
        assert proc.returncode == 8 and message in proc.stderr, (case, proc.stderr)
        assert len(proc.stderr.splitlines()) == 1, proc.stderr


def test_allow_other_lets_root_read_a_users_mount(user, home):
    """FUSE keeps a user's mount to that user, root included, unless allow_other (which a
    user may ask for only with user_allow_other in /etc/fuse.conf)."""
    root_reads = 'cat "$HOME/mnt/sub/w.txt" 2>/dev/null || echo "root: denied"'
    proc = _in_namespace(
        user, home,
        f'c3fs mount /jobs/{JOB} "$HOME/mnt"', root_reads,
        f'c3fs umount "$HOME/mnt"; c3fs mount --allow-other /jobs/{JOB} "$HOME/mnt"',
        root_reads, 'c3fs umount "$HOME/mnt"', files={"/etc/fuse.conf": "user_allow_other\n"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "root: denied\nweights\n"


def test_a_user_mounts_an_fstab_line_marked_user(user, home):
    """mount(8) runs mount.c3fs as the user for a `user` line of /etc/fstab, with none of the
    user's environment: the line's options name the store and the cache."""
    line = (f"/jobs/{JOB} {home / 'mnt'} c3fs ro,noauto,user,store={home / 'store'},"
            f"cache_dir={home / 'fstab-cache'} 0 0\n")
    with sbin_link("mount.c3fs", BIN / "mount.c3fs"):
        proc = _in_namespace(
            user, home, f'mount {home / "mnt"}; cat {home / "mnt/sub/w.txt"}',
            f'grep " {home / "mnt"} " /proc/self/mountinfo | sed "s/.* - //"',
            f'umount {home / "mnt"}; grep -c " {home / "mnt"} " /proc/self/mountinfo || true',
            files={"/etc/fstab": Path("/etc/fstab").read_text() + line})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "weights"
    assert lines[1].startswith(f"fuse.c3fs /jobs/{JOB} ro,user_id={user.pw_uid},")
    assert lines[2] == "0"
    assert (home / "fstab-cache").stat().st_uid == user.pw_uid
