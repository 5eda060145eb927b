"""The tools measured beside c3fs: native disk, restic, borg, squashfs, casync.

Every tool offers the same verbs, each a `Command` (argv, cwd, env) that `bench.run` times and
watches (peak RSS), so all tools are measured by the same code:

    setup()                  a fresh, empty repository (untimed)
    ingest(src, label)       back up / pack `src` as `label` (v1, v2)
    store_bytes()            what the repository holds on disk (sum of file sizes)
    mount(label, mnt)        a context manager: the FUSE daemon running, unmounted on exit
    mount_root(label, mnt)   the directory inside the mount that corresponds to `src`
    restore(label, dest)     restore / extract `label` into `dest`

Tool defaults are kept (compression, chunk sizes) except where a flag is needed to run
unattended (`borg init -e none`, a fixed restic password), and squashfs's compressor (see
`Squashfs`): these are the tools as people use them.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from bench.measure import Command, Mount, apparent_bytes, foreground_mount, fresh_dir, run


class Tool:
    name = "tool"
    binaries: tuple[str, ...] = ()
    is_peer = True
    mounts = True

    def __init__(self, work: Path) -> None:
        self.work = work
        self.sources: dict[str, Path] = {}

    # availability ---------------------------------------------------------------------------
    def missing(self) -> str | None:
        absent = [b for b in self.binaries if shutil.which(b) is None]
        return f"not installed: {', '.join(absent)} (make bench-peers)" if absent else None

    def version(self) -> str:
        return ""

    # verbs ----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Once, before the first repeat: bring the tool's own state to what a user's is."""

    def setup(self) -> None:
        fresh_dir(self.work)

    def ingest(self, src: Path, label: str) -> Command:
        raise NotImplementedError

    def after_ingest(self, src: Path, label: str, stdout: str) -> None:
        self.sources[label] = src

    def store_bytes(self) -> int:
        return apparent_bytes(self.repo)

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        raise NotImplementedError

    @contextlib.contextmanager
    def mount(self, label: str, mnt: Path) -> Iterator[Mount]:
        with foreground_mount(self.mount_cmd(label, mnt), mnt) as mounted:
            yield mounted

    def mount_root(self, label: str, mnt: Path) -> Path:
        return mnt

    def restore(self, label: str, dest: Path) -> Command:
        raise NotImplementedError

    def commands(self) -> dict[str, str]:
        """The command lines this tool runs, for the results file."""
        src, mnt, dest = Path("SRC"), Path("MNT"), Path("DEST")
        self.sources.setdefault("v1", src)
        return {"ingest": self.ingest(src, "v1").describe(),
                "mount": self.mount_cmd("v1", mnt).describe() if self.mounts else "",
                "restore": self.restore("v1", dest).describe()}

    @property
    def repo(self) -> Path:
        return self.work / "repo"


class Native(Tool):
    """The same files on the local disk: `cp -r` in and out, `cat` and `ls -lR` in place."""

    name = "native"
    binaries = ("cp", "cat")
    is_peer = False
    mounts = False

    def version(self) -> str:
        return run(Command(["cp", "--version"])).splitlines()[0]

    def ingest(self, src: Path, label: str) -> Command:
        return Command(["cp", "-r", str(src), str(self.repo / label)])

    def setup(self) -> None:
        fresh_dir(self.repo)

    @contextlib.contextmanager
    def mount(self, label: str, mnt: Path) -> Iterator[Mount]:
        yield Mount(mnt, time.perf_counter(), searched=True)  # no daemon

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(["true"])

    def mount_root(self, label: str, mnt: Path) -> Path:
        return self.sources[label]

    def restore(self, label: str, dest: Path) -> Command:
        return Command(["cp", "-r", str(self.repo / label), str(dest)])


class Restic(Tool):
    name = "restic"
    binaries = ("restic",)

    def __init__(self, work: Path) -> None:
        super().__init__(work)
        self.snapshots: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": str(self.repo), "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": str(self.work / "cache")}

    def version(self) -> str:
        return run(Command(["restic", "version"])).strip()

    def setup(self) -> None:
        super().setup()
        run(Command(["restic", "init"], env=self.env))

    def ingest(self, src: Path, label: str) -> Command:
        return Command(["restic", "backup", "--json", "--host", "bench", "--tag", label, str(src)],
                       env=self.env)

    def after_ingest(self, src: Path, label: str, stdout: str) -> None:
        super().after_ingest(src, label, stdout)
        summary = [json.loads(line) for line in stdout.splitlines() if '"summary"' in line]
        self.snapshots[label] = summary[-1]["snapshot_id"][:8]

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(["restic", "mount", str(mnt)], env=self.env)

    def mount_root(self, label: str, mnt: Path) -> Path:
        src = self.sources[label]
        return mnt / "ids" / self.snapshots.get(label, "ID") / src.relative_to(src.anchor)

    def restore(self, label: str, dest: Path) -> Command:
        return Command(["restic", "restore", self.snapshots.get(label, "ID"), "--target", str(dest)],
                       env=self.env)


class Borg(Tool):
    name = "borg"
    binaries = ("borg",)

    @property
    def env(self) -> dict[str, str]:
        return {"BORG_REPO": str(self.repo), "BORG_BASE_DIR": str(self.work / "base"),
                "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def version(self) -> str:
        return run(Command(["borg", "--version"])).strip()

    def setup(self) -> None:
        super().setup()
        run(Command(["borg", "init", "-e", "none"], env=self.env))

    def ingest(self, src: Path, label: str) -> Command:
        return Command(["borg", "create", f"::{label}", "."], cwd=src, env=self.env)

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(["borg", "mount", "-f", f"::{label}", str(mnt)], env=self.env)

    def restore(self, label: str, dest: Path) -> Command:
        return Command(["borg", "extract", f"::{label}"], cwd=dest, env=self.env)


class Squashfs(Tool):
    """One image per ingest: no dedup between images, so the next step costs a whole image.

    Compression is zstd level 3, not mksquashfs's default gzip level 9: on float32-like data
    gzip -9 runs at ~12 MB/s (2 cores) and zstd -3 at ~450 MB/s for the same image size.
    """

    name = "squashfs"
    binaries = ("mksquashfs", "squashfuse", "unsquashfs")

    def version(self) -> str:
        mk = run(Command(["mksquashfs", "-version"])).splitlines()[0]
        proc = run(Command(["sh", "-c", "squashfuse --help 2>&1 | head -1; true"])).strip()
        return f"{mk}; {proc}"

    def image(self, label: str) -> Path:
        return self.repo / f"{label}.sqfs"

    def setup(self) -> None:
        fresh_dir(self.repo)

    def ingest(self, src: Path, label: str) -> Command:
        return Command(["mksquashfs", str(src), str(self.image(label)), "-noappend", "-no-progress",
                        "-quiet", "-comp", "zstd", "-Xcompression-level", "3"])

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(["squashfuse", "-f", str(self.image(label)), str(mnt)])

    def restore(self, label: str, dest: Path) -> Command:
        return Command(["unsquashfs", "-no-progress", "-quiet", "-d", str(dest / "out"),
                        str(self.image(label))])


class Casync(Tool):
    name = "casync"
    binaries = ("casync",)

    def version(self) -> str:
        return run(Command(["casync", "--version"])).strip()

    def index(self, label: str) -> Path:
        return self.repo / f"{label}.caidx"

    def setup(self) -> None:
        fresh_dir(self.repo)

    def ingest(self, src: Path, label: str) -> Command:
        return Command(["casync", "make", f"--store={self.repo / 'store'}", str(self.index(label)),
                        str(src)])

    def mount_cmd(self, label: str, mnt: Path) -> Command:
        return Command(["casync", "mount", f"--store={self.repo / 'store'}", str(self.index(label)),
                        str(mnt)])

    def restore(self, label: str, dest: Path) -> Command:
        return Command(["casync", "extract", f"--store={self.repo / 'store'}", str(self.index(label)),
                        str(dest / "out")])


PEERS: tuple[type[Tool], ...] = (Native, Restic, Borg, Squashfs, Casync)


def locate(root: Path, relpath: str, depth: int = 12) -> Path | None:
    """The directory under `root` that contains `relpath` (restores nest paths differently)."""
    for _ in range(depth):
        if (root / relpath).exists():
            return root
        subdirs = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        if len(subdirs) != 1:
            return _search(root, relpath)
        root = subdirs[0]
    return None


def _search(root: Path, relpath: str) -> Path | None:
    first = relpath.split("/")[0]
    for candidate in root.rglob(first):
        if (candidate.parent / relpath).exists():
            return candidate.parent
    return None


def version_number(text: str) -> str:
    match = re.search(r"\d+(\.\d+)+", text)
    return match.group(0) if match else text
