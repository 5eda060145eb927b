"""Files that change while push reads them: read again, or stored as read and named.

The change is made at a chosen moment by wrapping the reads the ingest code makes (a large
file's `readinto`, a small file's `os.read`): right after the first read of an opening of a
chosen file, that file is rewritten in place (same inode, new bytes and size). A large
file's read then goes on into the new bytes (torn: old start, new rest); a small file's
read is whole but outdated. Real files, a real store; only the timing is arranged.

Files, symlinks and directories removed between the walk's listing and their first read
(`Vanisher`: removed for real, right after a listing or a stat of the walk) are left out
and named.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import trees
from trees import MiB

import c3fs.ingest as ingest
from c3fs.jobs.push import push_dir
from c3fs.objects.tree import file_digest
from c3fs.vfs import Vfs

LARGE = "ckpt\x1b.bin"  # (a control character: the warning must escape it)
SMALL = "metrics.json"


def large_version(k: int) -> bytes:
    """The large file's k-th content: over one READ_BLOCK, so its first read is partial."""
    return trees.rand_bytes(ingest.READ_BLOCK + (1 + k) * MiB + 7 * k, seed=100 + k)


def small_version(k: int) -> bytes:
    return b'{"step": %d, "loss": 0.5}\n' % k * (40 + 10 * k)


class Racer:
    """Rewrites chosen files right after the first read of an opening of theirs, while
    `changes(name, done)` says so (`done`: rewrites of that file so far); counts openings
    and reads of every file c3fs reads."""

    def __init__(self, src: Path, versions: dict[str, Callable[[int], bytes]],
                 changes: Callable[[str, int], bool]) -> None:
        self.src, self.versions, self.changes = src, versions, changes
        self.rewrites: Counter[str] = Counter()
        self.opens: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self._names = {self._key(os.stat(src / name)): name for name in versions}

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        racer, real_read = self, os.read

        class Watched(io.FileIO):  # what `open(fd, "rb", buffering=0)` gives, watched
            first = True

            def readinto(self, buffer) -> int | None:
                n = super().readinto(buffer)
                racer.after_read(self.fileno(), first=self.first)
                self.first = False
                return n

        def opener(fd: int, mode: str = "r", buffering: int = -1) -> io.FileIO:
            assert (mode, buffering) == ("rb", 0)
            racer.opened(fd)
            return Watched(fd, mode)

        def read(fd: int, n: int) -> bytes:
            data = real_read(fd, n)
            racer.after_read(fd, first=True)  # (a small file: one read an opening)
            return data

        monkeypatch.setattr(ingest, "open", opener, raising=False)
        monkeypatch.setattr(os, "read", read)

    def name_of(self, fd: int) -> str | None:
        return self._names.get(self._key(os.fstat(fd)))

    def opened(self, fd: int) -> None:
        self.opens[self.name_of(fd) or "?"] += 1

    def after_read(self, fd: int, first: bool) -> None:
        name = self.name_of(fd)
        if name is None:
            return
        self.reads[name] += 1
        if first and self.changes(name, self.rewrites[name]):
            self.rewrites[name] += 1
            with open(self.src / name, "r+b") as f:  # in place: the same inode
                f.write(self.versions[name](self.rewrites[name]))
                f.truncate()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / LARGE, large_version(0), mtime_ns=trees.BASE_NS)
    trees.write_file(src / SMALL, small_version(0), mtime_ns=trees.BASE_NS)
    trees.write_file(src / "steady.bin", trees.rand_bytes(ingest.READ_BLOCK + MiB, seed=7))
    return src


def racer(src: Path, monkeypatch: pytest.MonkeyPatch, changes: Callable[[str, int], bool]) -> Racer:
    racing = Racer(src, {LARGE: large_version, SMALL: small_version}, changes)
    racing.install(monkeypatch)
    return racing


def escaped(text: str) -> str:
    return text.replace("\x1b", "\\x1b")  # as `ls -b` and c3fs's messages show ESC


def push(run_cli, src: Path, job: str):
    result = run_cli(["push", str(src), "-p", "proj", "-j", job, "--json"])
    assert result.code == 0, result.err
    return result, json.loads(result.out)


def copied(run_cli, job: str, tmp_path: Path) -> Path:
    result = run_cli(["cp", "-r", f"/jobs/{job}", str(tmp_path / job)])
    assert result.code == 0, result.err
    return tmp_path / job


def test_a_file_changed_once_while_read_is_read_again(run_cli, src: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read of each is spoiled (the large one torn), the second is steady: what is
    stored is each file's content now, with no warning."""
    racing = racer(src, monkeypatch, lambda name, done: done == 0)
    result, record = push(run_cli, src, "job_once")
    assert racing.rewrites == {LARGE: 1, SMALL: 1}
    assert "warning" not in result.err and "changed" not in record
    back = copied(run_cli, "job_once", tmp_path)
    assert (back / LARGE).read_bytes() == large_version(1)
    assert (back / SMALL).read_bytes() == small_version(1)
    assert racing.opens[LARGE] == 2 and racing.opens["?"] == 1  # (steady.bin: once)


@pytest.mark.logs("changed while it was read")
def test_a_file_that_keeps_changing_is_stored_as_read_and_named(
        run_cli, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 3 reads is spoiled: the last one is stored, exactly as read, the push
    succeeds and says which files (stderr, --json), and the store agrees with itself."""
    racing = racer(src, monkeypatch, lambda name, done: True)
    result, record = push(run_cli, src, "job_torn")
    assert racing.rewrites == {LARGE: 3, SMALL: 3}
    paths = sorted(str(src / name) for name in (LARGE, SMALL))
    assert sorted(c["path"] for c in record["changed"]) == paths
    warnings = [line for line in result.err_lines if line.startswith("c3fs: warning: ")]
    assert "\x1b" not in result.err
    assert sorted(warnings) == sorted(
        f"c3fs: warning: {escaped(path)} changed while it was read (3 attempts): stored as read"
        for path in paths), result.err
    # the third read: the start of version 2, then (the file rewritten) the rest of version 3
    torn = large_version(2)[: ingest.READ_BLOCK] + large_version(3)[ingest.READ_BLOCK :]
    back = copied(run_cli, "job_torn", tmp_path)
    assert (back / LARGE).read_bytes() == torn
    assert (back / SMALL).read_bytes() == small_version(2)  # read whole, then changed
    listing = run_cli(["ls", "--json", "/jobs/job_torn"])
    sizes = {item["name"]: item["size"] for item in json.loads(listing.out)["entries"]}
    assert sizes[LARGE] == len(torn)  # (--json is exact)
    assert sizes[SMALL] == len(small_version(2))
    verify = run_cli(["verify"])
    assert verify.code == 0, verify.out + verify.err  # chunks against the files' digests


@pytest.mark.logs("changed while it was read")
def test_a_file_stored_as_read_is_one_consistent_entry(repo, src: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry of a file stored as read: its size, chunk sizes and digest all describe the
    bytes that come back (through the reader the mount and `cp` use)."""
    racer(src, monkeypatch, lambda name, done: True)
    changed: list[str] = []
    record = push_dir(repo, src, "proj", "job_entry", changed=changed)
    assert sorted(changed) == sorted(str(src / name) for name in (LARGE, SMALL))
    vfs = Vfs(repo)
    for name in (LARGE, SMALL):
        node = vfs.resolve(f"/jobs/{record.id}/{name}")
        data = vfs.open(node).read(0, node.entry.size + 1)
        assert len(data) == node.entry.size == sum(node.entry.sizes), name
        assert file_digest(node.entry) == blake3.blake3(data).digest(), name
    assert record.logical_bytes == sum(
        vfs.resolve(f"/jobs/{record.id}/{name}").entry.size for name in os.listdir(src))


def test_an_unchanging_push_reads_each_file_once(run_cli, src: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    racing = racer(src, monkeypatch, lambda name, done: False)
    result, record = push(run_cli, src, "job_still")
    assert "warning" not in result.err and "changed" not in record
    assert racing.opens[LARGE] == 1 and racing.opens["?"] == 1  # steady.bin
    assert racing.reads[SMALL] == 1
    # READ_BLOCK at a time, then the read that finds the end
    assert racing.reads[LARGE] == -(-len(large_version(0)) // ingest.READ_BLOCK) + 1
    back = copied(run_cli, "job_still", tmp_path)
    assert (back / LARGE).read_bytes() == large_version(0)
    assert (back / SMALL).read_bytes() == small_version(0)


class Mover(Racer):
    """Removes the large file, and moves the small one to another directory, right after
    the first read of each (a rotated checkpoint, a temp file renamed into place)."""

    def after_read(self, fd: int, first: bool) -> None:
        name = self.name_of(fd)
        if name is None:
            return
        self.reads[name] += 1
        if first and not self.rewrites[name]:
            self.rewrites[name] += 1
            if name == LARGE:
                os.unlink(self.src / name)
            else:
                os.rename(self.src / name, self.src.parent / "moved")


@pytest.mark.logs("changed while it was read")
def test_a_file_removed_or_renamed_while_read_is_stored_as_read(
        run_cli, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its read was whole (the open file outlives its name), but its ctime moved: read
    again, the name no longer opens it, so the read made stands, named in a warning. The
    push goes on (exit 0), as before the check existed: it failed, 'No such file'."""
    moving = Mover(src, {LARGE: large_version, SMALL: small_version}, lambda name, done: False)
    moving.install(monkeypatch)
    result, record = push(run_cli, src, "job_moved")
    assert moving.rewrites == {LARGE: 1, SMALL: 1}
    assert sorted(c["path"] for c in record["changed"]) == sorted(str(src / n)
                                                                  for n in (LARGE, SMALL))
    assert result.err.count("changed while it was read (2 attempts): stored as read") == 2
    back = copied(run_cli, "job_moved", tmp_path)
    assert (back / LARGE).read_bytes() == large_version(0)
    assert (back / SMALL).read_bytes() == small_version(0)


def _results(tmp_path: Path) -> Path:
    """A run's working dir whose `output:` dir `results` holds the two files that change
    (files left there before the job are collected with it, as the platform does)."""
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    (work / ".c3").write_text("project: proj\noutput: [results]\n")
    trees.write_file(work / "results" / LARGE, large_version(0), mtime_ns=trees.BASE_NS)
    trees.write_file(work / "results" / SMALL, small_version(0), mtime_ns=trees.BASE_NS)
    return work


@pytest.mark.logs("changed while it was read", "already holds")
def test_run_json_names_the_files_that_kept_changing(run_cli, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """run --json (and rerun's, the same code) has push's `changed`: a {path} each, the
    job SUCCEEDED and exit 0; the summary counts them."""
    work = _results(tmp_path)
    racing = racer(work / "results", monkeypatch, lambda name, done: done < 3)
    result = run_cli(["run", "-C", str(work), "-j", "job_run", "--json", "--", "true"])
    assert result.code == 0, result.err
    assert racing.rewrites == {LARGE: 3, SMALL: 3}
    record = json.loads(result.out)
    assert (record["id"], record["status"]) == ("job_run", "SUCCEEDED")
    assert sorted(record["changed"], key=lambda c: c["path"]) == [
        {"path": str(work / "results" / name)} for name in sorted((LARGE, SMALL))]
    assert "2 files changed while read" in result.err
    quiet = run_cli(["run", "-C", str(work), "-j", "job_still", "--json", "--", "true"])
    assert "changed" not in json.loads(quiet.out)  # (the racer: 3 rewrites a file, done)


@pytest.mark.logs("changed while it was read")
def test_the_api_push_result_names_the_files_that_kept_changing(
        store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """c3fs.push's result is the job's record with `changed`: each path as given, a str
    that os.fsencode turns into the exact name (here below a directory not UTF-8)."""
    import c3fs

    # the warnings name src\xff (a str with a surrogate, which pytest-xdist cannot send from
    # a worker): seen by the check of c3fs's warnings (on the "c3fs" logger), not by root's
    monkeypatch.setattr(logging.getLogger("c3fs"), "propagate", False)
    src = tmp_path / os.fsdecode(b"src\xff")
    src.mkdir()
    trees.write_file(src / LARGE, large_version(0), mtime_ns=trees.BASE_NS)
    trees.write_file(src / SMALL, small_version(0), mtime_ns=trees.BASE_NS)
    racer(src, monkeypatch, lambda name, done: done < 3)
    with c3fs.Store(store_env.store, create=True) as store:
        pushed = store.push(src, project="proj", job="job_api")
        assert isinstance(pushed, c3fs.Pushed) and pushed.id == "job_api"
        assert sorted(map(os.fsencode, pushed.changed)) == sorted(
            os.fsencode(tmp_path) + b"/src\xff/" + name.encode() for name in (LARGE, SMALL))
        stored = store.record("job_api")
        assert (pushed.root, pushed.files, pushed.logical_bytes) == (
            stored.root, stored.files, stored.logical_bytes)
        steady = store.push(src, project="proj", job="job_steady")  # (3 rewrites: done)
        assert steady.changed == []


# removed after the walk listed it, before its first read: skipped and named ------------------
class Vanisher:
    """Removes chosen entries for real (a directory with all it holds) at a chosen moment of
    the walk, as a job rotating its logs and checkpoints may at any moment: right after the
    walk lists a chosen directory (`on_listing`: the doomed entry's stat then finds it gone,
    or, a directory listed itself, what it holds), or right after the walk's stat of the
    entry (`on_stat`: its open or readlink then does). Only the moment is arranged, by
    wrapping the listing (`ingest.sorted_names`) and `os.stat`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.removed: list[Path] = []
        # (directory, name or None: at its listing) -> [(what to do first, entry to remove)]
        self._due: dict[tuple[int, int, bytes | None],
                        list[tuple[Callable[[], None], Path | None]]] = {}
        real_list, real_stat = ingest.sorted_names, os.stat

        def listed(fd: int, run: int):
            names = real_list(fd, run)
            self._fire(os.fstat(fd), None)
            return names

        def stat_(path, *, dir_fd: int | None = None, follow_symlinks: bool = True):
            st = real_stat(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
            if dir_fd is not None and self._due:
                self._fire(os.fstat(dir_fd), os.fsencode(path))
            return st

        monkeypatch.setattr(ingest, "sorted_names", listed)
        monkeypatch.setattr(os, "stat", stat_)

    def on_listing(self, listed: Path, doomed: Path | None,
                   first: Callable[[], None] = lambda: None) -> None:
        """Once `listed` is listed: call `first`, then remove `doomed` (None: nothing)."""
        self._due.setdefault(self._key(listed, None), []).append((first, doomed))

    def on_stat(self, doomed: Path) -> None:
        self._due.setdefault(self._key(doomed.parent, os.fsencode(doomed.name)), []).append(
            (lambda: None, doomed))

    @staticmethod
    def _key(directory: Path, name: bytes | None) -> tuple[int, int, bytes | None]:
        st = os.lstat(directory)
        return st.st_dev, st.st_ino, name

    def _fire(self, st: os.stat_result, name: bytes | None) -> None:
        for first, doomed in self._due.pop((st.st_dev, st.st_ino, name), []):
            first()
            if doomed is None:
                continue
            if doomed.is_dir() and not doomed.is_symlink():
                shutil.rmtree(doomed)
            else:
                doomed.unlink()
            self.removed.append(doomed)


GONE = ("gone.log", LARGE, "gone-link", "gone-dir", "sub/gone.json")  # (LARGE: a chunked file)


def _live_tree(src: Path) -> None:
    """Files of every kind that stay, beside the GONE ones: a small file, a large one (cut
    into chunks), a symlink and a directory holding both, in the top and one level down."""
    for top in (src, src / "sub"):
        top.mkdir(exist_ok=True)
        trees.write_file(top / "keep.txt", small_version(3), mtime_ns=trees.BASE_NS)
        trees.write_file(top / "keep.bin", large_version(2), mtime_ns=trees.BASE_NS)
        trees.make_symlink("keep.bin", top / "keep-link")
    trees.write_file(src / "gone.log", small_version(1))
    trees.write_file(src / LARGE, large_version(0))
    trees.make_symlink("keep.txt", src / "gone-link")
    (src / "gone-dir" / "deeper").mkdir(parents=True)
    trees.write_file(src / "gone-dir" / "x.txt", small_version(2))
    trees.write_file(src / "gone-dir" / "deeper" / "y.bin", large_version(1))
    trees.write_file(src / "sub" / "gone.json", small_version(4))
    (src / "kept-empty").mkdir()
    trees.set_dir_mtimes(src)


def _without(snap: dict[bytes, trees.Meta], gone: list[Path], src: Path) -> dict[bytes, trees.Meta]:
    """`snap` of `src` without the `gone` entries and what they held."""
    rels = [os.fsencode(path.relative_to(src)) for path in gone]
    return {rel: meta for rel, meta in snap.items()
            if not any(rel == g or rel.startswith(g + b"/") for g in rels)}


def _assert_stored_exactly(run_cli, job: str, record: dict, expected: dict[bytes, trees.Meta],
                           tmp_path: Path) -> None:
    """The job holds `expected` (a snapshot) and nothing else, byte for byte, its record
    counts those files and bytes, and `verify` passes."""
    back = copied(run_cli, job, tmp_path)
    assert trees.diff(trees.as_copied(expected), trees.snapshot(back)) == []
    files = [meta for meta in expected.values() if meta.kind == "file"]
    assert (record["files"], record["logical_bytes"]) == (len(files),
                                                          sum(m.size for m in files))
    verify = run_cli(["verify"])
    assert verify.code == 0, verify.out + verify.err


def _warned(result, paths: list[Path]) -> None:
    warnings = [line for line in result.err_lines if line.startswith("c3fs: warning: ")]
    assert sorted(warnings) == [f"c3fs: warning: {escaped(str(path))} removed before it was "
                                "read: not stored" for path in sorted(paths)], result.err


@pytest.mark.logs("removed before it was read")
@pytest.mark.parametrize("moment", ["listed", "stat"])
def test_what_is_removed_before_it_is_read_is_left_out_and_named(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    """A small file, a large one, a symlink and a directory (with what it holds), removed
    right after the walk listed them (their stat finds them gone) or right after their stat
    (their open, readlink or listing does): each is one warning and one `vanished` path,
    the rest is stored exactly, the push exits 0. Before, the push failed, exit 3."""
    src = tmp_path / "src"
    _live_tree(src)
    expected = trees.snapshot(src)
    doomed = [src / name for name in GONE]
    vanisher = Vanisher(monkeypatch)
    for path in doomed:
        if moment == "listed":
            vanisher.on_listing(path.parent, path)
        else:
            vanisher.on_stat(path)
    result, record = push(run_cli, src, "job_gone")
    assert sorted(vanisher.removed) == sorted(doomed)
    _warned(result, doomed)
    assert sorted(record["vanished"], key=lambda v: v["path"]) == [
        {"path": str(path)} for path in sorted(doomed)]
    assert "changed" not in record and record["status"] == "SUCCEEDED"
    _assert_stored_exactly(run_cli, "job_gone", record, _without(expected, doomed, src),
                           tmp_path)


@pytest.mark.logs("removed before it was read")
def test_a_directory_removed_while_it_is_walked_is_one_warning(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`rm -rf` of a directory the walk is in, once some of its files are read (a batch of
    small ones, a large one, a subdirectory stored whole) and others not yet: the directory
    is left out whole, named once (not each file in it), and the job's record counts none
    of its files."""
    src = tmp_path / "src"
    _live_tree(src)
    rotated = src / "rotated"
    (rotated / "sub").mkdir(parents=True)
    (rotated / "zz").mkdir()
    for i in range(ingest.SMALL_BATCH + 6):  # a batch read while the walk goes on, 6 not
        trees.write_file(rotated / f"m{i:03}.json", small_version(i))
    trees.write_file(rotated / "big.bin", large_version(3))
    trees.make_symlink("big.bin", rotated / "link")
    trees.write_file(rotated / "sub" / "s.txt", small_version(1))
    trees.write_file(rotated / "sub" / "s.bin", large_version(4))
    trees.write_file(rotated / "zz" / "last.txt", small_version(2))
    expected = _without(trees.snapshot(src), [rotated], src)
    tasks: list = []  # the file tasks of `rotated` and of its subdirectories
    real_queue = ingest.Ingester._queue

    def queue(self, into, task) -> None:
        if into.display().startswith(str(rotated)):
            tasks.append(task)
        real_queue(self, into, task)

    monkeypatch.setattr(ingest.Ingester, "_queue", queue)
    vanisher = Vanisher(monkeypatch)
    vanisher.on_listing(rotated / "zz", rotated,
                        first=lambda: [task.result(timeout=120) for task in tasks])
    result, record = push(run_cli, src, "job_rotated")
    assert vanisher.removed == [rotated] and len(tasks) >= 4  # (a batch, 2 large, sub's small)
    _warned(result, [rotated])
    assert record["vanished"] == [{"path": str(rotated)}]
    _assert_stored_exactly(run_cli, "job_rotated", record, expected, tmp_path)


def test_the_pushed_directory_removed_while_it_is_walked_is_an_error(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own removal is not left out: one error line naming it, exit 3, no job."""
    src = tmp_path / "src"
    _live_tree(src)
    Vanisher(monkeypatch).on_listing(src, src)
    result = run_cli(["push", str(src), "-p", "proj", "-j", "job_none"])
    assert result.assert_one_line_error() == (
        f"c3fs: error: {src}: removed while it was being stored")
    assert result.code == 3
    assert run_cli(["ls", "/jobs/"]).out == ""


@pytest.mark.parametrize("replaced", ["walked", "its parent"])
def test_a_directory_replaced_while_it_is_walked_still_stops_the_push(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replaced: str) -> None:
    """The directory the walk is in (or its parent) moved to another place, a new one made
    in its place: the rest of the parent's listing would be looked for in another directory
    than the one listed (a mix of two), so the push stops, one line naming it, exit 3, as
    before: moved is not removed."""
    src = tmp_path / "src"
    _live_tree(src)
    walked = src / "gone-dir" / "deeper"
    moved = walked if replaced == "walked" else walked.parent

    def replace() -> None:
        os.rename(moved, src / "sub" / "moved")
        moved.mkdir()
        trees.write_file(moved / "new.txt", b"another directory")

    Vanisher(monkeypatch).on_listing(walked, None, first=replace)
    result = run_cli(["push", str(src), "-p", "proj", "-j", "job_mixed"])
    assert result.assert_one_line_error() == (
        f"c3fs: error: {moved}: moved while it was being stored")
    assert result.code == 3
    assert run_cli(["ls", "/jobs/"]).out == ""


@pytest.mark.logs("removed before it was read", "already holds")
def test_run_json_names_what_was_removed_before_it_was_read(
        run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run --json (and rerun's, the same code) has push's `vanished`: a {path} each, the
    job SUCCEEDED and exit 0; the summary counts them."""
    work = _results(tmp_path)
    Vanisher(monkeypatch).on_listing(work / "results", work / "results" / SMALL)
    result = run_cli(["run", "-C", str(work), "-j", "job_run", "--json", "--", "true"])
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert (record["id"], record["status"]) == ("job_run", "SUCCEEDED")
    assert record["vanished"] == [{"path": str(work / "results" / SMALL)}]
    assert "changed" not in record
    assert "1 removed before read" in result.err
    assert record["files"] == 1  # (LARGE)


@pytest.mark.logs("removed before it was read")
def test_the_api_push_result_names_what_was_removed_before_it_was_read(
        store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """c3fs.push's result has `vanished` as it has `changed`: each path a str that
    os.fsencode turns into the exact name (here below a directory not UTF-8)."""
    import c3fs

    monkeypatch.setattr(logging.getLogger("c3fs"), "propagate", False)  # (as above)
    src = tmp_path / os.fsdecode(b"src\xff")
    src.mkdir()
    trees.write_file(src / LARGE, large_version(0))
    trees.write_file(src / SMALL, small_version(0))
    Vanisher(monkeypatch).on_stat(src / LARGE)
    with c3fs.Store(store_env.store, create=True) as store:
        pushed = store.push(src, project="proj", job="job_api")
        assert list(map(os.fsencode, pushed.vanished)) == [
            os.fsencode(tmp_path) + b"/src\xff/" + LARGE.encode()]
        assert pushed.changed == [] and pushed.files == 1
        steady = store.push(src, project="proj", job="job_steady")
        assert steady.vanished == []
