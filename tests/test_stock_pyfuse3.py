"""A stock pyfuse3 (what `pip install c3fs` gets): c3fs works, and says once, at the first
mount, that each open costs a request and how to get the patched build (patches/README.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fusehelp import force_unmount, run_c3fs, wait_until

ROOT = Path(__file__).resolve().parent.parent
NOTICE = "is a stock build: every file opened on a c3fs mount costs an OPEN and a RELEASE"


def test_the_notice_is_given_once_per_cache_dir(tmp_path, monkeypatch):
    """The marker logic alone; what a stock build lacks is this one attribute."""
    import pyfuse3

    from c3fs.fuse.ops import stock_pyfuse3_notice

    marker = tmp_path / "cache" / "stock-pyfuse3-warned"
    monkeypatch.delenv("C3FS_FUSE_OPEN", raising=False)
    assert stock_pyfuse3_notice(marker) is None  # the patched build of this venv
    assert not marker.exists()
    monkeypatch.delattr(pyfuse3, "READ_INODE_WITHOUT_OPEN")
    monkeypatch.setenv("C3FS_FUSE_OPEN", "1")  # opens requested anyway: nothing to say
    assert stock_pyfuse3_notice(marker) is None
    monkeypatch.delenv("C3FS_FUSE_OPEN")
    notice = stock_pyfuse3_notice(marker)
    assert NOTICE in notice and "make pyfuse3" in notice and str(marker) in notice
    assert "\n" not in notice and marker.exists()
    assert stock_pyfuse3_notice(marker) is None


def _stock_pyfuse3(target: Path) -> Path:
    """pyfuse3's source release as published (no patch), built into `target`."""
    tarballs = sorted((ROOT / ".venv" / "build" / "pyfuse3").glob("pyfuse3-*.tar.gz"))
    if not tarballs:  # `make` keeps the release it patched; else ask the package index
        import pyfuse3

        version = getattr(pyfuse3, "__version__", "3.5.0")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--no-binary", ":all:", "-d", str(target.parent),
                               f"pyfuse3=={version}"], capture_output=True, timeout=300)
        tarballs = sorted(target.parent.glob("pyfuse3-*.tar.gz"))
        if proc.returncode != 0 or not tarballs:
            pytest.skip("no pyfuse3 source release at hand")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(tarballs[-1])],
                   check=True, capture_output=True, timeout=600)
    return target


# a mount from a process with threads: `python -m c3fs.fuse` starts the daemon
THREADED_MOUNT = """
import logging, sys, threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
import c3fs.fuse
c3fs.fuse.mount(None, sys.argv[1], sys.argv[2])
"""


@pytest.mark.fuse
@pytest.mark.slow
def test_a_stock_pyfuse3_mounts_and_says_so_once(tmp_path):
    stock = _stock_pyfuse3(tmp_path / "stock" / "site")
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"alpha\n")
    with open(src / "sparse.bin", "wb") as f:  # 3 hole chunks (of 1 MiB), then data
        f.truncate(3 << 20)
        f.seek(3 << 20)
        f.write(os.urandom(1000))
    sparse = (src / "sparse.bin").read_bytes()
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"),
               C3FS_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(stock))
    env.pop("C3FS_FUSE_OPEN", None)
    run_c3fs("push", str(src), "-p", "p", "--job", "job_stock", env=env)
    probe = subprocess.run([sys.executable, "-c", "import pyfuse3; print(pyfuse3.__file__, "
                            "hasattr(pyfuse3, 'READ_INODE_WITHOUT_OPEN'))"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(str(stock)) and probe.stdout.split()[-1] == "False"

    def mount_and_read(*command: str) -> str:
        mnt = tmp_path / f"mnt{len(list(tmp_path.glob('mnt*')))}"
        mnt.mkdir()
        try:
            proc = subprocess.run([*command, "/jobs/job_stock", str(mnt)], env=env,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert (mnt / "a.txt").read_bytes() == b"alpha\n"
            sparse_through(mnt / "sparse.bin", sparse)
            run_c3fs("umount", str(mnt), env=env)
            wait_until(lambda: not os.path.ismount(mnt), "the unmount")
            return proc.stderr
        finally:
            force_unmount(mnt)

    def sparse_through(path: Path, expected: bytes) -> None:
        """A sparse file: its st_blocks are its data's (c3fs's own doing); without the patched
        pyfuse3's lseek handler the kernel takes it all for data (SEEK_HOLE: its end), so
        `cp --sparse=auto` reads its zeros, and copies its bytes right."""
        assert path.read_bytes() == expected
        assert path.stat().st_blocks == (1000 + 511) // 512
        with open(path, "rb") as f:
            assert os.lseek(f.fileno(), 0, os.SEEK_DATA) == 0
            assert os.lseek(f.fileno(), 0, os.SEEK_HOLE) == len(expected)
        subprocess.run(["cp", "--sparse=auto", str(path), str(tmp_path / "copy")], check=True)
        assert (tmp_path / "copy").read_bytes() == expected

    first = mount_and_read(sys.executable, "-c", THREADED_MOUNT)
    assert first.count(NOTICE) == 1 and first.startswith("WARNING "), first
    assert "make pyfuse3" in first
    assert NOTICE not in mount_and_read(str(Path(sys.executable).with_name("c3fs")), "mount")
    env["C3FS_CACHE_DIR"] = str(tmp_path / "cache2")  # another user, another machine
    again = mount_and_read(str(Path(sys.executable).with_name("c3fs")), "mount")
    assert again.count(NOTICE) == 1 and again.startswith("c3fs: warning: "), again
