"""Faults around the data (issue 21, items 1-3): the forked index, a hung S3 server, stale
locks. Each is injected through real processes: a chained `c3fs run` whose mount daemon is
started while `run` holds the index, SIGSTOP/SIGCONT of the S3 server process, and lock
holders killed -9 on another "host" (a UTS namespace with another hostname)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reliability.relkit import Site, needs_fuse


# 1. the forked index ----------------------------------------------------------------------
@needs_fuse
@pytest.mark.fuse
def test_pull_marks_survive_a_chained_run(site: Site, tmp_path: Path) -> None:
    """`run` holds the index open when it starts the mount daemon for a `datasets:` entry:
    the daemon must not inherit that LMDB environment (it took "already open" for damage and
    rebuilt the index, losing what `pull` had fetched)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.bin").write_bytes(b"w" * 5000)
    site.push(src, "job_base")
    dest = tmp_path / "pulled"
    assert "job_base" in site.run("pull", "-d", dest).ok().out
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text("project: rel\ndatasets:\n  - ref: /jobs/job_base\n    mount: data\n")
    ran = site.run("run", "-j", "job_next", "--", "cat", "data/weights.bin", cwd=work).ok()
    assert "w" * 5000 in ran.out
    logs = "".join(p.read_text() for p in (site.cache / "mounts").glob("*.log"))
    assert "damaged" not in logs and "already open" not in logs, logs
    pulled = site.run("pull", "-d", dest, "--json").ok()
    assert [item["job"] for item in json.loads(pulled.out)] == ["job_next"], pulled.out


def test_an_index_open_twice_is_not_damage(site: Site, tmp_path: Path) -> None:
    """Opening the index a second time in one process is refused in one line; the index and
    its pull marks stay (it used to be deleted and rebuilt as if damaged)."""
    from c3fs.index import Index, IndexUnavailable, environments_open

    path = tmp_path / "index"
    first = Index(path, "s1")
    try:
        first.local_put("pulled/job_a", b"{}")
        assert environments_open()
        with pytest.raises(IndexUnavailable, match="already open in this process"):
            Index(path, "s1")
        assert first.local_get("pulled/job_a") == b"{}"
    finally:
        first.close()
    again = Index(path, "s1")
    try:
        assert again.local_get("pulled/job_a") == b"{}"
    finally:
        again.close()
