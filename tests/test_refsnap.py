"""Ref snapshots (issue 16 item 4): a new machine on a store of many jobs reads one snapshot
object and the change log since it, instead of listing and fetching every ref; what changed
after the snapshot is learned from the log; a damaged, stale or deleted snapshot falls back
to the full listing; small stores get none; gc keeps the newest two."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

import c3fs.index as indexmod
from c3fs.index import Index
from c3fs.objects import refsnap
from c3fs.objects.job import DATASET, JOB, JobRecord, encode_record
from c3fs.store.local import LocalBackend
from c3fs.store.store import CHANGES, REF_PREFIX, SNAPSHOTS, Store


class Counting(LocalBackend):
    """A local backend that counts list and get calls by the first part of their key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lists: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()

    def list(self, prefix: str, after: str | None = None):
        self.lists[prefix] += 1
        return super().list(prefix, after)

    def get(self, key: str, offset: int = 0, length: int | None = None):
        self.gets[key.split("/")[0]] += 1
        return super().get(key, offset, length)


def record(name: str, kind: str = JOB) -> JobRecord:
    return JobRecord(id=name, kind=kind, project="p", created=1.0, root="ab" * 32)


def populated(root: Path, jobs: int) -> Store:
    """A store of `jobs` job refs (written directly) and one dataset."""
    store = Store.open(LocalBackend(root))
    for n in range(jobs):
        store.backend.put(f"{REF_PREFIX[JOB]}job_{n:05d}", encode_record(record(f"job_{n:05d}")),
                          sync=False)
    store.create_ref(record("imagenet", DATASET))
    return store


def new_machine(root: Path, cache: Path) -> tuple[Store, Counting, Index]:
    backend = Counting(root)
    store = Store.open(backend)
    backend.gets.clear()
    return store, backend, Index(cache / "index", store.config.store_id)


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(indexmod, "SNAPSHOT_MIN_REFS", 100)


def test_a_full_listing_stores_a_snapshot_a_new_machine_reads(tmp_path: Path,
                                                              small_threshold) -> None:
    populated(tmp_path / "s", 300)
    _, _, first = new_machine(tmp_path / "s", tmp_path / "m1")
    first.sync(Store.open(LocalBackend(tmp_path / "s")))  # a full listing: stores one
    snapshots = Store.open(LocalBackend(tmp_path / "s")).snapshots()
    assert len(snapshots) == 1
    assert Store.open(LocalBackend(tmp_path / "s")).config.ref_snapshots == 1

    store, backend, index = new_machine(tmp_path / "s", tmp_path / "m2")
    index.sync(store)
    assert index.record_names(JOB) == {f"job_{n:05d}" for n in range(300)}
    assert index.record(DATASET, "imagenet") is not None
    # no listing of refs/, no ref fetched: the snapshot, the log since it, and the packs
    assert backend.lists == Counter({SNAPSHOTS: 1, CHANGES: 1, "packs/": 1})
    assert backend.gets == Counter({"snapshots": 1})
    backend.lists.clear()
    index.sync(store)  # then it polls the log, as any machine
    assert backend.lists == Counter({CHANGES: 1})
    # it listed nothing in full, so it stores no snapshot of its own
    assert len(store.snapshots()) == 1
    first.close()
    index.close()


def test_what_changed_after_the_snapshot_comes_from_the_log(tmp_path: Path,
                                                            small_threshold) -> None:
    populated(tmp_path / "s", 200)
    _, _, first = new_machine(tmp_path / "s", tmp_path / "m1")
    first.sync(Store.open(LocalBackend(tmp_path / "s")))
    writer = Store.open(LocalBackend(tmp_path / "s"))
    writer.create_ref(record("job_after"))
    writer.delete_ref(DATASET, "imagenet")
    store, backend, index = new_machine(tmp_path / "s", tmp_path / "m2")
    index.sync(store)
    assert index.record(JOB, "job_after") is not None
    assert index.record(DATASET, "imagenet") is None
    assert backend.gets == Counter({"snapshots": 1, "refs": 1})  # only the new ref
    first.close()
    index.close()


@pytest.mark.logs("skipping a damaged ref snapshot")
@pytest.mark.parametrize("damage", ["flipped", "truncated", "lying"])
def test_a_damaged_snapshot_is_skipped_and_every_ref_listed(tmp_path: Path, small_threshold,
                                                            damage: str) -> None:
    populated(tmp_path / "s", 150)
    backend = LocalBackend(tmp_path / "s")
    ms = int(time.time() * 1000)
    good = refsnap.encode(ms, [encode_record(record(f"job_{n:05d}")) for n in range(150)])
    if damage == "flipped":  # its content no longer matches its name
        data = bytearray(good)
        data[len(data) // 2] ^= 1
        key = f"{SNAPSHOTS}{ms:013d}-{refsnap.digest(good)}"
        backend.create(key, bytes(data))
    else:  # a writer's bug: named rightly, but cut short or naming a job that is not there
        records = [encode_record(record(f"job_{n:05d}")) for n in range(150)]
        if damage == "lying":
            records.append(encode_record(record("job_ghost")))
            data = refsnap.encode(ms, records)
        else:
            data = good[: len(good) - 8]
        backend.create(f"{SNAPSHOTS}{ms:013d}-{refsnap.digest(data)}", data)
    Store.open(backend).save_config(ref_snapshots=1)
    store, counting, index = new_machine(tmp_path / "s", tmp_path / "m")
    index.sync(store)
    names = index.record_names(JOB)
    if damage == "lying":  # well formed: the snapshot is believed (as a ref would be) ...
        assert "job_ghost" in names
        assert counting.lists[REF_PREFIX[JOB]] == 0
    else:  # ... damage is not: every ref is listed, nothing of the snapshot is kept
        assert names == {f"job_{n:05d}" for n in range(150)}
        assert counting.lists[REF_PREFIX[JOB]] == 1
    index.close()


def test_a_lying_snapshot_is_corrected_by_the_periodic_full_listing(
        tmp_path: Path, small_threshold, monkeypatch: pytest.MonkeyPatch) -> None:
    populated(tmp_path / "s", 120)
    ms = int(time.time() * 1000)
    data = refsnap.encode(ms, [encode_record(record("job_ghost"))]
                          + [encode_record(record(f"job_{n:05d}")) for n in range(120)])
    LocalBackend(tmp_path / "s").create(f"{SNAPSHOTS}{ms:013d}-{refsnap.digest(data)}", data)
    Store.open(LocalBackend(tmp_path / "s")).save_config(ref_snapshots=1)
    store, _, index = new_machine(tmp_path / "s", tmp_path / "m")
    index.sync(store)
    assert index.record(JOB, "job_ghost") is not None
    monkeypatch.setattr(indexmod, "FULL_EVERY", 0.0)
    index.sync(store)
    assert index.record(JOB, "job_ghost") is None
    index.close()


def test_a_stale_snapshot_is_not_read(tmp_path: Path, small_threshold) -> None:
    populated(tmp_path / "s", 120)
    old = int((time.time() - indexmod.SNAPSHOT_MAX_AGE - 60) * 1000)
    data = refsnap.encode(old, [encode_record(record(f"job_{n:05d}")) for n in range(120)])
    Store.open(LocalBackend(tmp_path / "s")).put_snapshot(old, data)
    Store.open(LocalBackend(tmp_path / "s")).save_config(ref_snapshots=1)
    store, backend, index = new_machine(tmp_path / "s", tmp_path / "m")
    index.sync(store)
    assert backend.gets["snapshots"] == 0 and backend.lists[REF_PREFIX[JOB]] == 1
    assert len(index.record_names(JOB)) == 120
    # the full listing found the newest too old and stored a new one
    assert [ms for ms, _, _ in store.snapshots()][0] == old and len(store.snapshots()) == 2
    index.close()


def test_small_stores_get_no_snapshot_and_new_machines_do_not_look(tmp_path: Path) -> None:
    populated(tmp_path / "s", 50)
    store, backend, index = new_machine(tmp_path / "s", tmp_path / "m")
    index.sync(store)
    assert store.snapshots() == [] and not store.config.ref_snapshots
    _, backend, other = new_machine(tmp_path / "s", tmp_path / "m2")
    other.sync(Store.open(backend))
    assert SNAPSHOTS not in backend.lists  # a mount's first byte waits for no such request
    index.close()
    other.close()


def test_a_new_snapshot_only_after_an_hour(tmp_path: Path, small_threshold,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    populated(tmp_path / "s", 120)
    store, _, index = new_machine(tmp_path / "s", tmp_path / "m")
    index.sync(store, full=True)
    index.sync(store, full=True)
    assert len(store.snapshots()) == 1
    monkeypatch.setattr(indexmod, "SNAPSHOT_EVERY", 0.0)
    time.sleep(0.002)
    index.sync(store, full=True)
    assert len(store.snapshots()) == 2
    index.close()


def test_gc_keeps_the_newest_two(tmp_path: Path, run_cli, store_env) -> None:
    store = Store.open(LocalBackend(store_env.store))
    now = int(time.time() * 1000)
    for n in range(4):
        store.put_snapshot(now - n * 1000, refsnap.encode(now - n * 1000, []))
    run_cli(["gc"]).ok()
    assert [ms for ms, _, _ in store.snapshots()] == [now - 1000, now]


@pytest.mark.s3
def test_a_new_machine_on_s3_makes_four_requests(s3_server, s3_url: str, tmp_path: Path,
                                                 small_threshold) -> None:
    """Counted on the server: a store of 250 refs; the second machine's first sync is three
    LISTs (packs, snapshots, the log since the snapshot) and one GET (the snapshot), where
    it would otherwise list every ref and GET each one."""
    from c3fs.store.store import open_backend

    store = Store.open(open_backend(s3_url))
    for n in range(250):
        store.backend.put(f"{REF_PREFIX[JOB]}job_{n:05d}", encode_record(record(f"job_{n:05d}")))
    first = Index(tmp_path / "m1", store.config.store_id)
    first.sync(store)
    assert len(store.snapshots()) == 1
    second_store = Store.open(open_backend(s3_url))
    log_start = s3_server.log_path.stat().st_size
    second = Index(tmp_path / "m2", store.config.store_id)
    second.sync(second_store)
    with open(s3_server.log_path, "rb") as log:
        log.seek(log_start)
        requests = [line for line in log if b'"GET /' in line or b'"HEAD /' in line]
    assert second.record_names(JOB) == {f"job_{n:05d}" for n in range(250)}
    lists = [line for line in requests if b"list-type" in line]
    assert len(lists) == 3 and len(requests) == 4, requests
    assert any(b"/snapshots/refs/" in line for line in requests), requests
    first.close()
    second.close()
