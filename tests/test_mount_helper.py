"""`mount.c3fs`, mount(8)'s helper: `mount -t c3fs`, fstab lines and `c3fs#REF` through
mount.fuse3, run by the real mount(8) (util-linux), which finds helpers only in /sbin."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from c3fs_cli.mount_helper import Usage, parse
from fusehelp import force_unmount, run_c3fs, sbin_link, wait_until

BIN = Path(sys.executable).parent
JOB = "job_fstab"


# the protocol, parsed ----------------------------------------------------------------------
def test_mounts_arguments_become_a_c3fs_mount():
    request = parse(["/jobs/job_a", "/data/x", "-n", "-v", "-o",
                     "ro,noauto,_netdev,x-systemd.automount,store=s3://b/c,cache_dir=/var/c,"
                     "cache_size=1GiB,allow_other,dev,suid"])
    assert request.argv() == ["-v", "--store", "s3://b/c", "mount", "/jobs/job_a", "/data/x",
                              "--source", "/jobs/job_a", "--cache-size", "1GiB",
                              "--allow-other"]
    assert request.env == {"C3FS_CACHE_DIR": "/var/c"} and not request.fake
    assert parse(["c3fs#/datasets/d", "/m", "-f"]).argv() == [
        "mount", "/datasets/d", "/m", "--source", "c3fs#/datasets/d"]
    assert parse(["c3fs", "/m", "-o", "rw"]).ref == "/"  # mount(8)'s default is rw: ignored
    assert parse(["c3fs", "/m", "-f"]).fake
    assert parse(["/jobs/a", "/m", "-o", "profile=team,endpoint=http://h:9000,region=eu-1"]
                 ).argv()[:6] == ["--profile", "team", "--endpoint", "http://h:9000",
                                  "--region", "eu-1"]
    assert parse(["/", "/m", "-s", "-o", "unknown_thing"]).ref == "/"  # sloppy


@pytest.mark.parametrize("args, message", [
    (["/jobs/a"], "expected SPEC and DIR"),
    (["/jobs/a", "/m", "-o", "colour=red"], "unknown option 'colour=red'"),
    (["/jobs/a", "/m", "-o", "store"], "option store needs a value"),
    (["/jobs/a", "/m", "-o", "allow_other=1"], "option allow_other takes no value"),
    (["jobs/a", "/m"], "is not a ref"),
    (["/jobs/a", "/m", "-N", "1234"], "namespaces"),
])
def test_bad_arguments_are_one_line_and_exit_1(args, message, capsys):
    with pytest.raises(Usage, match=message):
        parse(args)
    from c3fs_cli.mount_helper import run

    assert run(args) == 1
    assert message.split("'")[0] in capsys.readouterr().err


# the real mount(8) ------------------------------------------------------------------------
@pytest.fixture
def helper_world(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], dict[str, str]]]:
    """A store with one job, /sbin/mount.c3fs pointing into this venv, and two environments:
    the test's (C3FS_*) and a bare one, as mount(8) has it from fstab or systemd."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) runs helpers for root only (and /sbin is root's)")
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.txt").write_bytes(b"weights\n")
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"))
    run_c3fs("push", str(src), "-p", "p", "--job", JOB, env=env)
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("C3FS_", "XDG_"))}
    with sbin_link("mount.c3fs", BIN / "mount.c3fs"):
        yield tmp_path, env, bare


def _mount(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _mountinfo(path: Path) -> list[str]:
    """The fields after " - " of the mountinfo line of `path`: type, source, options."""
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        lines = [line for line in f if line.split(b" ")[4] == target]
    return lines[-1].decode().split(" - ")[1].split() if lines else []


def _serving(mnt: Path) -> list[int]:
    """The processes whose command line names `mnt`: the daemon (forked from the helper)."""
    needle = os.fsencode(os.path.realpath(mnt))
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                found.append(int(entry))
    return found


def _check_and_umount(mnt: Path) -> None:
    """The job's file reads through the mount; umount(8), as systemd does, ends the daemon."""
    try:
        assert (mnt / "sub" / "w.txt").read_bytes() == b"weights\n"
        fstype, _source, options = _mountinfo(mnt)
        assert fstype == "fuse.c3fs" and "ro" in options.split(",")
        pids = _serving(mnt)
        assert pids
        proc = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert not os.path.ismount(mnt)
        wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in pids),
                   "the daemon to exit after umount(8)")
    finally:
        force_unmount(mnt)


@pytest.mark.fuse
def test_mount_t_c3fs_with_options_and_no_environment(helper_world):
    root, _env, bare = helper_world
    mnt = root / "mnt"
    mnt.mkdir()
    options = f"ro,noauto,store={root / 'store'},cache_dir={root / 'helper-cache'}"
    proc = _mount("-t", "c3fs", f"/jobs/{JOB}", str(mnt), "-o", options, env=bare)
    assert proc.returncode == 0, proc.stderr
    assert (root / "helper-cache").is_dir()  # the option, not a default under ~/.cache
    assert _mountinfo(mnt)[1] == f"/jobs/{JOB}"  # the spec is the source: mount -a knows it
    _check_and_umount(mnt)


@pytest.mark.fuse
def test_a_failed_mount_is_one_line_and_exit_32(helper_world):
    root, _env, bare = helper_world
    mnt = root / "mnt"
    mnt.mkdir()
    proc = _mount("-t", "c3fs", "/jobs/job_missing", str(mnt), "-o",
                  f"store={root / 'store'},cache_dir={root / 'cache'}", env=bare)
    assert proc.returncode == 32 and not os.path.ismount(mnt)
    assert "job_missing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _mount("-t", "c3fs", "/", str(mnt), "-o", "colour=red", env=bare)
    assert proc.returncode == 1 and "unknown option 'colour=red'" in proc.stderr


@pytest.mark.fuse
def test_fstab_lines_c3fs_and_fuse_types(helper_world):
    """`mount -a -T FSTAB` mounts the auto lines (and leaves them alone the second time);
    `mount -T FSTAB DIR` a noauto one; `c3fs#REF` of type fuse goes through mount.fuse3,
    which runs `c3fs REF DIR -o ...` (here by its full path: mount.fuse3 runs it with sh's
    default PATH); type fuse.c3fs goes to /sbin/mount.fuse.c3fs, the same helper."""
    root, _env, bare = helper_world
    a, b, c, d = (root / n for n in "abcd")
    for mnt in (a, b, c, d):
        mnt.mkdir()
    common = f"store={root / 'store'},cache_dir={root / 'cache'}"
    fstab = root / "fstab"
    fstab.write_text(
        f"# c3fs mounts\n/jobs/{JOB}/sub {a} c3fs ro,{common} 0 0\n"
        f"/projects/p/jobs/{JOB} {b} c3fs ro,noauto,{common} 0 0\n"
        f"{BIN / 'c3fs'}#/jobs/{JOB} {c} fuse ro,noauto,_netdev,{common} 0 0\n"
        f"/jobs/{JOB} {d} fuse.c3fs ro,noauto,{common} 0 0\n")
    try:
        for _ in range(2):
            proc = _mount("-a", "-T", str(fstab), env=bare)
            assert proc.returncode == 0, proc.stderr
            assert os.path.ismount(a) and not os.path.ismount(b) and not os.path.ismount(c)
        assert (a / "w.txt").read_bytes() == b"weights\n"
        with sbin_link("mount.fuse.c3fs", BIN / "mount.c3fs"):
            for mnt in (b, c, d):
                proc = _mount("-T", str(fstab), str(mnt), env=bare)
                assert proc.returncode == 0, proc.stderr
                _check_and_umount(mnt)
    finally:
        for mnt in (a, b, c, d):
            force_unmount(mnt)


def test_the_example_systemd_units_verify(tmp_path):
    """docs/systemd/ as systemd reads it (its names must match Where=, its keys exist)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze")
    units = sorted((Path(__file__).resolve().parent.parent / "docs" / "systemd").glob("*"))
    assert {u.suffix for u in units} == {".mount", ".automount"}
    for unit in units:
        (tmp_path / unit.name).write_text(unit.read_text())
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no",
                           *(str(tmp_path / u.name) for u in units)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
