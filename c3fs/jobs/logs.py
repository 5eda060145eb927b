"""Job logs: the command's stdout and stderr, captured by `c3fs run` while still shown live,
stored with the job as a tree of two files (`stdout`, `stderr`), content-addressed like the
artifacts but outside them: the record's `logs` names that tree, so `cp`, `pull` and the
mount never see it, and gc and verify follow it like the artifacts.

The command writes to pipes (not the terminal): a program that colors or line-buffers only
on a terminal behaves as under a CI runner. c3fs writes only what the command wrote; it
never logs the environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from pathlib import Path

from c3fs.errors import NotFound
from c3fs.fsutil import write_all
from c3fs.objects.job import JobRecord
from c3fs.objects.tree import FILE
from c3fs.reader import FileReader
from c3fs.repo import Repo

log = logging.getLogger(__name__)
STREAMS = ("stdout", "stderr")
READ = 64 * 1024
DRAIN = 5.0  # seconds to wait for the pipes to close after the command ended


class Tee:
    """Copies a child's stdout and stderr to our own (fds 1 and 2; its stdout to
    `stdout_fd`) and to files in `dir`."""

    def __init__(self, directory: Path, stdout_fd: int = 1) -> None:
        self.dir = directory
        self.stdout_fd = stdout_fd
        self.dir.mkdir(parents=True, exist_ok=True)
        self._threads: list[threading.Thread] = []

    def start(self, proc: subprocess.Popen) -> None:
        for name, pipe, fd in (("stdout", proc.stdout, self.stdout_fd),
                               ("stderr", proc.stderr, 2)):
            thread = threading.Thread(target=self._copy, args=(pipe, fd, self.dir / name),
                                      name=f"c3fs-tee-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        """Wait for what the command wrote (a background child keeping a pipe open is not
        waited for beyond DRAIN seconds)."""
        for thread in self._threads:
            thread.join(DRAIN)
            if thread.is_alive():
                log.warning("a process of the job still holds its %s open; the log stops "
                            "here", thread.name.rpartition("-")[2])

    @staticmethod
    def _copy(pipe, fd: int, path: Path) -> None:
        with open(path, "wb") as out:
            while True:
                try:
                    data = os.read(pipe.fileno(), READ)
                except OSError:
                    break
                if not data:
                    break
                out.write(data)
                out.flush()
                _write_all(fd, data)
        pipe.close()


def _write_all(fd: int, data: bytes) -> None:
    try:
        write_all(fd, data)
    except OSError:  # our terminal went away: the log file still gets everything
        pass


def keep_locally(logs: Path, workdir: Path, job_id: str) -> Path | None:
    """Copy the logs of a job whose upload failed next to its kept artifacts dir."""
    if not logs.is_dir():
        return None
    target = workdir / "c3fs-logs" / job_id
    try:
        shutil.copytree(logs, target, dirs_exist_ok=True)
    except OSError as exc:
        log.error("could not keep the job's logs in %s: %s", target, exc)
        return None
    return target


def read_log(repo: Repo, record: JobRecord, stream: str, tail: int | None = None) -> bytes:
    """The bytes the job wrote to `stream`; with `tail`, its last `tail` lines."""
    if not record.logs:
        raise NotFound(f"{record.kind} {record.id} has no logs (pushed, not run, or run by a "
                       "c3fs before logs were kept)")
    tree = repo.tree(bytes.fromhex(record.logs))
    entry = next((e for e in tree.entries if e.name == stream.encode() and e.kind == FILE), None)
    if entry is None:
        return b""
    reader = FileReader(repo.blobs, entry)
    if tail is None:
        return reader.read(0, entry.size)
    return _tail(reader, entry.size, tail)


def _tail(reader: FileReader, size: int, lines: int) -> bytes:
    """The last `lines` lines, read backwards a block at a time (a huge log stays unread)."""
    if lines <= 0:
        return b""
    data, end = b"", size
    while end > 0 and data.count(b"\n", 0, len(data) - 1 if data.endswith(b"\n") else None) < lines:
        start = max(0, end - READ)
        data = reader.read(start, end - start) + data
        end = start
    kept = data.split(b"\n")
    trailing = data.endswith(b"\n")
    body = kept[:-1] if trailing else kept
    return b"\n".join(body[-lines:]) + (b"\n" if trailing else b"")
