"""Access traces (learned prefetch, c3fs/reader/trace.py): recorded per job by any mount, and
removed with their job by `rm`, or by `gc` once the job is gone. On a local store here (a
trace is an object like any other); the mounts that record and replay them on a remote
store are in test_remote_read.py."""

from __future__ import annotations

import json
from pathlib import Path

import trees

from c3fs.objects.job import DATASET, JOB
from c3fs.reader import trace
from c3fs.store.local import LocalBackend
from c3fs.store.store import Store

IDS = [bytes([i]) * 32 for i in range(10)]


def test_traces_keep_one_recorder_per_job_bounded_in_jobs_and_ids() -> None:
    firsts = []
    traces = trace.Traces(first=firsts.append, limit=5, jobs=2)
    traces.add((JOB, "a"), [IDS[0], IDS[1]])
    traces.add((DATASET, "d"), [IDS[2]])
    traces.add((JOB, "a"), [IDS[1], IDS[3]])
    traces.add(None, [IDS[4]])  # not in a job (the namespace's own directories)
    traces.add((JOB, "c"), [IDS[5]])  # a third job: past `jobs`, not recorded
    assert firsts == [(JOB, "a"), (DATASET, "d")]  # once each, when first read
    assert set(traces.recorders) == {(JOB, "a"), (DATASET, "d")}
    assert traces.recorders[(JOB, "a")]._order == [IDS[0], IDS[1], IDS[3]]
    traces.add((DATASET, "d"), IDS[6:])  # 4 ids recorded of 5: one more fits, then no more
    traces.add((JOB, "a"), [IDS[9]])
    assert sum(len(r) for r in traces.recorders.values()) == 5
    assert traces.start((JOB, "a")) is traces.recorders[(JOB, "a")]


def _push(run_cli, src: Path, job: str) -> None:
    assert run_cli(["push", str(src), "-p", "p", "-j", job]).code == 0


def _store_trace(store: Store, kind: str, name: str, chunk: bytes) -> str:
    recorder = trace.Recorder()
    recorder.add([chunk])
    key = trace.save(store, kind, name, recorder)
    assert key is not None
    return key


def _trace_keys(store: Store) -> set[str]:
    return {key for key, _ in store.backend.list(trace.ROOT)}


def test_rm_removes_the_jobs_traces_and_no_others(run_cli, store_env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / "a.txt", b"a" * 100)
    _push(run_cli, src, "j1")
    _push(run_cli, src, "j2")
    store = Store.open(LocalBackend(store_env.store))
    _store_trace(store, JOB, "j1", IDS[0])
    _store_trace(store, JOB, "j1", IDS[1])
    kept = _store_trace(store, JOB, "j2", IDS[0])
    assert run_cli(["rm", "j1"]).code == 0
    assert _trace_keys(store) == {kept}


def test_gc_removes_the_traces_of_jobs_that_are_gone(run_cli, store_env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / "a.txt", b"a" * 100)
    _push(run_cli, src, "j1")
    store = Store.open(LocalBackend(store_env.store))
    kept = _store_trace(store, JOB, "j1", IDS[0])
    _store_trace(store, JOB, "gone", IDS[1])  # a mount stored it after `rm gone`
    _store_trace(store, DATASET, "j1", IDS[2])  # a dataset of the same name: none exists
    store.backend.put(trace.ROOT + "odd-key", b"x")  # not a trace's shape: not gc's to judge
    dry = run_cli(["gc", "--dry-run", "--json"])
    assert dry.code == 0 and json.loads(dry.out)["traces_deleted"] == 2
    assert len(_trace_keys(store)) == 4
    done = run_cli(["gc", "--json"])
    assert done.code == 0 and json.loads(done.out)["traces_deleted"] == 2
    assert _trace_keys(store) == {kept, trace.ROOT + "odd-key"}
