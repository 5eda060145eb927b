"""The ref change log (`changes/`, issue 16 item 4): a poll of a store with many refs and no
news lists the log only; jobs pushed or removed by another machine are learned from it; a
ref the log missed is learned by the periodic full listing; old stores list every ref."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import pytest

import c3fs.index as indexmod
from c3fs.index import Index
from c3fs.objects.job import DATASET, JOB, JobRecord, encode_record
from c3fs.store.local import LocalBackend
from c3fs.store.store import CHANGES, REF_PREFIX, Store


class Counting(LocalBackend):
    """A local backend that counts its list calls by prefix (the requests S3 would get)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lists: Counter[str] = Counter()

    def list(self, prefix: str, after: str | None = None):
        self.lists[prefix] += 1
        return super().list(prefix, after)


def record(name: str, kind: str = JOB) -> JobRecord:
    return JobRecord(id=name, kind=kind, project="p", created=1.0, root="ab" * 32)


def write_refs(backend: LocalBackend, count: int) -> None:
    """`count` job refs written directly (no push, no log entry): an existing store."""
    for n in range(count):
        backend.put(f"{REF_PREFIX[JOB]}job_{n:06d}", encode_record(record(f"job_{n:06d}")),
                    sync=False)


def machine(store_dir: Path, cache: Path) -> tuple[Store, Counting, Index]:
    """Another machine: its own backend object and its own index (cache dir)."""
    backend = Counting(store_dir)
    store = Store.open(backend)
    index = Index(cache / "index", store.config.store_id)
    if index.fresh:
        index.sync(store)
    backend.lists.clear()
    return store, backend, index


def test_a_new_store_has_the_log_and_pushes_note_changes(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "s"))
    assert store.config.ref_log == 1
    store.create_ref(record("job_a"))
    store.create_ref(record("imagenet", DATASET))
    store.delete_ref(JOB, "job_a")
    changes = store.changes(0)
    assert [(c.op, c.kind, c.name) for c in changes] == [
        ("add", JOB, "job_a"), ("add", DATASET, "imagenet"), ("rm", JOB, "job_a")]
    assert all(c.key.startswith(CHANGES) for c in changes)


def test_poll_without_news_lists_the_log_only(tmp_path: Path) -> None:
    Store.open(LocalBackend(tmp_path / "s"))
    write_refs(LocalBackend(tmp_path / "s"), 2500)
    store, backend, index = machine(tmp_path / "s", tmp_path / "m1")
    assert len(index.record_names(JOB)) == 2500  # the first sync of a new index is full
    for _ in range(3):
        index.sync(store)
    # one LIST of the log per poll, none of refs/ or packs/ (2500 refs: 3 pages on S3 each)
    assert backend.lists == Counter({CHANGES: 3})


def test_another_machine_push_and_rm_are_learned(tmp_path: Path) -> None:
    store1, backend1, index1 = machine(tmp_path / "s", tmp_path / "m1")
    store2, _, index2 = machine(tmp_path / "s", tmp_path / "m2")
    write_refs(LocalBackend(tmp_path / "s"), 50)  # unlogged: not seen by polls
    store2.create_ref(record("job_new"))
    store2.create_ref(record("ds", DATASET))
    index1.sync(store1)
    assert index1.record(JOB, "job_new") is not None
    assert index1.record(DATASET, "ds") is not None
    assert index1.record(JOB, "job_000001") is None
    store2.delete_ref(JOB, "job_new")
    index1.sync(store1)
    assert index1.record(JOB, "job_new") is None
    assert index1.record(DATASET, "ds") is not None
    index1.sync(store1)  # nothing new: the window's entries are not applied again
    assert backend1.lists == Counter({CHANGES: 3})
    # a new process on machine 1 (a new Index object, same LMDB) reads the same window
    index1.close()
    again = Index(tmp_path / "m1" / "index", store1.config.store_id)
    again.sync(store1)
    assert again.record(JOB, "job_new") is None and again.record(DATASET, "ds") is not None
    again.close()
    index2.close()


def test_a_ref_the_log_missed_is_learned_by_the_full_listing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, backend, index = machine(tmp_path / "s", tmp_path / "m1")
    # a writer that crashed between ref and log entry, or an older c3fs: a ref, no entry
    LocalBackend(tmp_path / "s").create(f"{REF_PREFIX[JOB]}job_quiet",
                                        encode_record(record("job_quiet")))
    index.sync(store)
    assert index.record(JOB, "job_quiet") is None
    assert backend.lists == Counter({CHANGES: 1})
    monkeypatch.setattr(indexmod, "FULL_EVERY", 0.0)  # the periodic full listing is due
    index.sync(store)
    assert index.record(JOB, "job_quiet") is not None
    assert backend.lists[REF_PREFIX[JOB]] == 1 and backend.lists["packs/"] == 1
    monkeypatch.setattr(indexmod, "FULL_EVERY", 600.0)
    backend.lists.clear()
    index.sync(store)  # back to the log
    assert backend.lists == Counter({CHANGES: 1})
    backend.lists.clear()
    index.sync(store, full=True)  # asked for (gc, accounting)
    assert backend.lists[REF_PREFIX[JOB]] == 1


def test_an_old_store_without_the_log_lists_every_ref(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "s"))
    config = msgspec.json.decode(LocalBackend(tmp_path / "s").get("config"))
    del config["ref_log"]  # as written by c3fs before the log
    LocalBackend(tmp_path / "s").put("config", msgspec.json.encode(config))
    store, backend, index = machine(tmp_path / "s", tmp_path / "m1")
    assert store.config.ref_log == 0
    other = Store.open(LocalBackend(tmp_path / "s"))
    other.create_ref(record("job_x"))
    assert list(LocalBackend(tmp_path / "s").list(CHANGES)) == []  # no log is written
    index.sync(store)
    assert index.record(JOB, "job_x") is not None
    assert backend.lists[REF_PREFIX[JOB]] == 1 and CHANGES not in backend.lists


@pytest.mark.s3
def test_poll_on_s3_costs_one_list_request(s3_server, s3_url: str, tmp_path: Path) -> None:
    """Counted on the server: 1,200 refs are 2 pages, yet a poll that learns a new job is
    one LIST request (of the log) and one GET (of the new ref)."""
    from c3fs.store.store import open_backend

    store = Store.open(open_backend(s3_url))
    for n in range(1200):
        store.backend.put(f"{REF_PREFIX[JOB]}job_{n:06d}",
                          encode_record(record(f"job_{n:06d}")))
    index = Index(tmp_path / "index", store.config.store_id)
    index.sync(store)
    assert len(index.record_names(JOB)) == 1200
    Store.open(open_backend(s3_url)).create_ref(record("job_new"))
    log_start = s3_server.log_path.stat().st_size
    index.sync(store)
    with open(s3_server.log_path, "rb") as log:
        log.seek(log_start)
        requests = [line for line in log if b'"GET /' in line or b'"HEAD /' in line]
    assert index.record(JOB, "job_new") is not None
    lists = [line for line in requests if b"list-type" in line]
    assert len(lists) == 1 and b"start-after" in lists[0], requests
    assert len(requests) == 2, requests  # the LIST, and the GET of refs/jobs/job_new
    index.close()


def test_gc_prunes_old_log_entries(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "s"))
    store.create_ref(record("job_a"))
    store.create_ref(record("job_b"))
    assert store.prune_changes() == 0  # a day's entries are kept
    assert store.prune_changes(keep=-1) == 2
    assert store.changes(0) == []
    assert {name for name in store.list_refs(JOB)} == {"job_a", "job_b"}


def test_a_dataset_removed_and_made_again_between_polls_is_fetched_again(tmp_path: Path) -> None:
    store1, _, index1 = machine(tmp_path / "s", tmp_path / "m1")
    store2, _, _ = machine(tmp_path / "s", tmp_path / "m2")
    store2.create_ref(record("ds", DATASET))
    index1.sync(store1)
    assert index1.record(DATASET, "ds").root == "ab" * 32
    store2.delete_ref(DATASET, "ds")
    store2.create_ref(msgspec.structs.replace(record("ds", DATASET), root="cd" * 32))
    index1.sync(store1)
    assert index1.record(DATASET, "ds").root == "cd" * 32
