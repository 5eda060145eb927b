"""`c3fs run`'s inputs and outputs kept apart: a dataset is never mounted where the job's
outputs are collected from (nor moved aside with the artifacts dir), and with --json or -q
stdout carries run's result alone, the command's stdout going to stderr (and its logs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fusehelp import force_unmount, mount, mounted


def mounts_within(path: Path) -> list[bytes]:
    """The mount points at or below `path`, per /proc/self/mountinfo (dead ones too)."""
    real = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as f:
        points = [line.split(b" ")[4] for line in f]
    return [p for p in points if p == real or p.startswith(real + b"/")]


@pytest.fixture
def work(c3fs_bin, store_env, tmp_path: Path, monkeypatch) -> Path:
    """A job `prev` (metrics.json) in the test's store, a private TMPDIR and a working dir
    whose .c3 collects `results`; returns the working dir. Nothing is left mounted."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "metrics.json").write_text('{"loss": 0.1}')
    c3fs_bin("push", str(src), "-p", "p", "-j", "prev").ok()
    work = tmp_path / "work"
    work.mkdir()
    yield work
    for point in reversed(mounts_within(work)):
        force_unmount(point)


@pytest.mark.fuse
@pytest.mark.parametrize(("place", "inside"), [
    ("artifacts/prev", "inside $C3_ARTIFACTS_DIR (artifacts/)"),
    ("artifacts", "inside $C3_ARTIFACTS_DIR (artifacts/)"),
    ("results/in", "inside output dir results"),
    ("{work}/results/deep/in", "inside output dir results"),
    (".", "$C3_ARTIFACTS_DIR (artifacts/) would be inside the read-only mount"),
])
def test_a_dataset_mounted_where_outputs_are_collected_is_refused(c3fs_bin, work: Path,
                                                                   place: str, inside: str) -> None:
    place = place.format(work=work)
    (work / ".c3").write_text(f"output: [results]\ndatasets:\n  - ref: /jobs/prev\n"
                              f"    mount: {place}\n")
    (work / "artifacts").mkdir()
    (work / "artifacts" / "old.txt").write_text("an earlier job's")
    res = c3fs_bin("run", "-j", "consumer", "--", "sh", "-c",
                   "cat artifacts/prev/metrics.json results/in/metrics.json; touch ran", cwd=work)
    line = res.one_line_error()
    assert res.code == 2 and f".c3 datasets entry /jobs/prev -> {place}: " in line, line
    assert inside in line
    assert not (work / "ran").exists() and mounts_within(work) == []
    assert (work / "artifacts" / "old.txt").exists() and not list(work.glob("artifacts.prev-*"))
    assert c3fs_bin("ls", "/jobs/consumer").code == 3


@pytest.mark.fuse
def test_a_dataset_mounted_beside_the_outputs_is_read(c3fs_bin, work: Path) -> None:
    (work / ".c3").write_text("output: [results]\ndatasets:\n  - ref: /jobs/prev\n"
                              "    mount: inputs/prev\n")
    (work / "artifacts").mkdir()
    (work / "artifacts" / "old.txt").write_text("an earlier job's")
    res = c3fs_bin("run", "-j", "consumer", "--", "sh", "-c",
                   "mkdir results; cp inputs/prev/metrics.json results/", cwd=work).ok()
    assert "could not unmount" not in res.err and mounts_within(work) == []
    assert c3fs_bin("ls", "/jobs/consumer/results").out.split() == ["metrics.json"]


@pytest.mark.fuse
def test_an_artifacts_dir_with_a_mount_inside_is_not_moved_aside(c3fs_bin, work: Path) -> None:
    """A mount the user made inside artifacts/: moved aside, it would stay mounted under
    artifacts.prev-*, and the job would not find it where it was."""
    with mount(dict(os.environ), work / "artifacts" / "prev", "/jobs/prev") as point:
        res = c3fs_bin("run", "-j", "consumer", "--", "touch", "ran", cwd=work)
        line = res.one_line_error()
        assert res.code == 4 and f"{point} is mounted inside it" in line, line
        assert mounted(point) and (point / "metrics.json").exists()
        assert not list(work.glob("artifacts.prev-*")) and not (work / "ran").exists()
    assert c3fs_bin("run", "-j", "after", "--", "touch", "ran", cwd=work).code == 0
    assert len(list(work.glob("artifacts.prev-*"))) == 1  # the empty mountpoint, moved aside


JOB = "echo from the job; echo to stderr >&2"


def test_run_json_stdout_is_the_record_alone(c3fs_bin, work: Path) -> None:
    res = c3fs_bin("run", "--json", "-j", "js", "--", "sh", "-c", JOB, cwd=work).ok()
    assert json.loads(res.out)["id"] == "js"  # one JSON document, nothing else
    assert "from the job\n" in res.err and "to stderr\n" in res.err
    assert c3fs_bin("logs", "js", "--stdout").out == "from the job\n"
    assert c3fs_bin("logs", "js", "--stderr").err == "to stderr\n"


def test_run_quiet_stdout_is_the_job_id_alone(c3fs_bin, work: Path) -> None:
    res = c3fs_bin("run", "-q", "-j", "quiet", "--", "sh", "-c", JOB, cwd=work).ok()
    assert res.out == "quiet\n" and "from the job\n" in res.err
    assert c3fs_bin("logs", "quiet", "--stdout").out == "from the job\n"
    res = c3fs_bin("run", "-j", "plain", "--", "sh", "-c", JOB, cwd=work).ok()
    assert res.out == "from the job\nplain\n"  # without them, as before: the command's first


def test_rerun_json_stdout_is_the_record_alone(c3fs_bin, work: Path) -> None:
    c3fs_bin("run", "-j", "first", "--", "sh", "-c", JOB, cwd=work).ok()
    res = c3fs_bin("rerun", "first", "-j", "again", "--json", cwd=work).ok()
    assert json.loads(res.out)["id"] == "again" and "from the job\n" in res.err
    res = c3fs_bin("rerun", "first", "-j", "third", "-q", cwd=work).ok()
    assert res.out == "third\n" and "from the job\n" in res.err
    assert c3fs_bin("logs", "third", "--stdout").out == "from the job\n"


def test_help_says_where_the_commands_stdout_goes(c3fs_bin) -> None:
    text = " ".join(c3fs_bin("run", "--help").ok().out.split())
    assert "the command's stdout goes to stderr instead" in text
