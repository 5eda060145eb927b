"""Store (config, versions, refs) and the LMDB index: sync, rebuild, recovery.

Real LocalBackend, real LMDB. Two processes sharing a store are modelled by two Store/Index
instances over the same directory, each with its own index directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import msgspec
import pytest
from memkit import traced_peak
from trees import rand_bytes, write_file

from c3fs import index as index_module
from c3fs.errors import (
    BlobCorrupt,
    BlobMissing,
    FormatError,
    InvalidId,
    NotFound,
    StoreError,
    StoreVersionError,
)
from c3fs.index import Index, index_path, open_index
from c3fs.jobs.push import push_dir
from c3fs.objects.job import DATASET, JOB, JobRecord
from c3fs.objects.pack import PackBuilder
from c3fs.reader import BlobSource
from c3fs.repo import Repo
from c3fs.store.backend import KeyExists, KeyMissing
from c3fs.store.local import LocalBackend
from c3fs.store.store import FORMAT_VERSION, Store, StoreConfig
from c3fs.vfs import Vfs

KiB = 1024


def index_contents(index: Index) -> dict[str, dict[bytes, bytes]]:
    tables = {"blobs": index.blobs, "packs": index.packs, "jobs": index.jobs,
              "datasets": index.datasets}
    with index.env.begin() as txn:
        return {name: {bytes(k): bytes(v) for k, v in txn.cursor(db=db)}
                for name, db in tables.items()}


def snapshot_index(store_dir: Path) -> dict[str, dict[bytes, bytes]]:
    store = Store.open(LocalBackend(store_dir), create=False)
    index = Index(index_path(store.config.store_id), store.config.store_id)
    try:
        return index_contents(index)
    finally:
        index.close()


def make_src(root: Path, tag: str, size: int = 300 * KiB) -> Path:
    root.mkdir(parents=True)
    write_file(root / "weights.bin", rand_bytes(size, zlib.crc32(tag.encode())))
    write_file(root / "metrics.json", json.dumps({"tag": tag}).encode())
    (root / "sub").mkdir()
    write_file(root / "sub" / "log.txt", f"log of {tag}\n".encode() * 100)
    return root


def record(name: str = "job_1", **changes) -> JobRecord:
    fields = dict(id=name, project="vision", created=1.0, root="ab" * 32)
    fields.update(changes)
    return JobRecord(**fields)


# ---- store config ----------------------------------------------------------------------------
def test_open_creates_config_once(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "store")
    store = Store.open(backend)
    config = msgspec.json.decode(backend.get("config"))
    assert config["format"] == "c3fs" and config["version"] == FORMAT_VERSION
    assert config["store_id"] == store.config.store_id
    again = Store.open(LocalBackend(tmp_path / "store"))
    assert again.config == store.config
    assert oct((tmp_path / "store").stat().st_mode & 0o777) == oct(0o700)


def test_open_without_create_on_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no c3fs store"):
        Store.open(LocalBackend(tmp_path / "empty"), create=False)


@pytest.mark.parametrize("version", [0, 2, 99, None, "1"])
def test_other_format_version_is_refused_clearly(tmp_path: Path, version) -> None:
    backend = LocalBackend(tmp_path / "store")
    config = msgspec.to_builtins(StoreConfig(store_id="s1", created=1.0))
    config["version"] = version
    backend.put("config", json.dumps(config).encode())
    with pytest.raises(StoreVersionError) as info:
        Store.open(backend)
    message = str(info.value)
    assert f"format version {version}" in message
    assert f"reads version {FORMAT_VERSION}" in message
    assert str(backend.root) in message and "\n" not in message
    assert backend.get("config") == json.dumps(config).encode()  # not "upgraded" in place


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"\xff\xfe", b'{"format": "\xff"}',
                                 b'{"format": "restic", "version": 1}',
                                 json.dumps({"format": "c3fs", "version": 1}).encode(),
                                 json.dumps({"format": "c3fs", "version": 1, "store_id": 5,
                                             "created": 1}).encode()],
                         ids=["empty", "truncated", "list", "binary", "bad-utf8", "other-format",
                              "missing-fields", "wrong-types"])
def test_damaged_or_foreign_config_is_store_error(tmp_path: Path, raw: bytes) -> None:
    backend = LocalBackend(tmp_path / "store")
    backend.put("config", raw)
    with pytest.raises(StoreError) as info:
        Store.open(backend)
    assert not isinstance(info.value, StoreVersionError)
    assert "\n" not in str(info.value)


# ---- refs -------------------------------------------------------------------------------------
def test_create_ref_twice_is_key_exists(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "store"))
    first = record(root="11" * 32)
    store.create_ref(first)
    with pytest.raises(KeyExists):
        store.create_ref(record(root="22" * 32))
    assert store.get_ref(JOB, "job_1") == first
    assert sorted(store.list_refs(JOB)) == ["job_1"]
    assert list(store.list_refs(DATASET)) == []


def test_ref_names_are_checked(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "store"))
    for bad in ("../config", "a/b", "", "-x"):
        with pytest.raises(InvalidId):
            store.get_ref(JOB, bad)
        with pytest.raises(InvalidId):
            store.create_ref(msgspec.structs.replace(record(), id=bad))
    assert list(store.backend.list("refs/")) == []


def test_missing_and_damaged_refs(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "store"))
    with pytest.raises(NotFound):
        store.get_ref(JOB, "nope")
    with pytest.raises(NotFound):
        store.delete_ref(JOB, "nope")
    store.backend.put("refs/jobs/broken", b'{"id": "broken", "\xff')
    with pytest.raises(FormatError, match="job broken"):
        store.get_ref(JOB, "broken")


def test_datasets_and_jobs_are_separate_namespaces(tmp_path: Path) -> None:
    store = Store.open(LocalBackend(tmp_path / "store"))
    store.create_ref(record("same"))
    store.create_ref(record("same", kind=DATASET))
    assert store.get_ref(DATASET, "same").kind == DATASET
    store.delete_ref(JOB, "same")
    assert list(store.list_refs(JOB)) == [] and list(store.list_refs(DATASET)) == ["same"]


# ---- index sync between two instances ---------------------------------------------------------
def test_index_learns_and_forgets_what_another_instance_did(repo: Repo, tmp_path: Path) -> None:
    """A pushes; B (another process: own Store object, own LMDB) syncs and sees it all."""
    other_store = Store.open(LocalBackend(repo.store.url), create=False)
    other = Index(tmp_path / "other-index", other_store.config.store_id)
    try:
        assert other.fresh
        first = push_dir(repo, make_src(tmp_path / "a", "a"), "vision", "job_a")
        other.sync(other_store)
        assert other.record(JOB, "job_a") == first
        assert index_contents(other) == index_contents(repo.index)

        second = push_dir(repo, make_src(tmp_path / "b", "b"), "nlp", "job_b")
        ds = push_dir(repo, make_src(tmp_path / "c", "c"), "nlp", "set_c", kind=DATASET)
        other.sync(other_store)  # refs, from the store's change log
        other.sync(other_store, refs=False)  # packs, as a reader does when a blob is missing
        assert other.record(JOB, "job_b") == second
        assert other.record(DATASET, "set_c") == ds
        assert index_contents(other) == index_contents(repo.index)

        # job_b's content lives in packs of its own: delete them and its ref
        packs_before = set(other.pack_sizes())
        root_b = second.root_id
        b_packs = [p for p in packs_before if root_b in other.pack_blob_ids(p)]
        assert b_packs
        for pack_id in b_packs:
            repo.store.delete_pack(pack_id)
        repo.store.delete_ref(JOB, "job_b")
        other.sync(other_store)
        assert other.record(JOB, "job_b") is None
        other.sync(other_store, refs=False)
        assert other.record(JOB, "job_b") is None
        assert other.lookup(root_b) is None
        assert set(other.pack_sizes()) == packs_before - set(b_packs)
        assert other.record(JOB, "job_a") == first
        assert other.lookup(first.root_id) is not None
    finally:
        other.close()


def test_a_new_machine_learns_many_refs_in_few_transactions(tmp_path: Path, monkeypatch) -> None:
    """Refs are recorded a batch to a write transaction (each commit is an fsync: one per ref
    made a new machine's first `ls` of 2,000 jobs take 10 s), and so are forgotten ones."""
    import c3fs.index as index_module

    store = Store.open(LocalBackend(tmp_path / "store"))
    names = [f"job_{n:05d}" for n in range(2500)]
    for name in names:
        store.create_ref(record(name, created=float(len(name))))
    index = Index(tmp_path / "index", store.config.store_id)
    writes = []
    real_write = Index._write
    monkeypatch.setattr(Index, "_write", lambda self: writes.append(1) or real_write(self))
    try:
        index.sync(store)
        assert index.record_names(JOB) == set(names)
        assert len(writes) <= 2500 // index_module.REF_BATCH + 5
        for name in names[:1500]:
            store.delete_ref(JOB, name)
        writes.clear()
        index.sync(store)
        assert index.record_names(JOB) == set(names[1500:])
        assert len(writes) <= 1500 // index_module.REF_BATCH + 5
    finally:
        index.close()


@pytest.mark.parametrize("seed", range(6))
def test_a_full_sync_walks_the_store_beside_the_index(tmp_path: Path, monkeypatch,
                                                      seed: int) -> None:
    """The store's names and the index's are walked side by side a few at a time (here 3):
    whatever the two hold, a full sync leaves the index holding exactly the store's refs,
    and records it already had are not fetched again."""
    import random

    monkeypatch.setattr(index_module, "REF_BATCH", 3)
    rng = random.Random(seed)
    universe = [f"job_{n:03d}" for n in range(rng.choice((0, 1, 7, 40, 41)))]
    in_store = {name for name in universe if rng.random() < 0.6}
    in_index = {name for name in universe if rng.random() < 0.5}
    store = Store.open(LocalBackend(tmp_path / "store"))
    for name in sorted(in_store):
        store.create_ref(record(name))
    index = Index(tmp_path / "index", store.config.store_id)
    fetched = []
    real_fetch = Index._fetch_ref
    monkeypatch.setattr(Index, "_fetch_ref", lambda self, st, kind, name:
                        fetched.append(name) or real_fetch(self, st, kind, name))
    try:
        index.put_records([record(name) for name in sorted(in_index)])
        index.sync(store, full=True)
        assert index.record_names(JOB) == in_store
        assert sorted(fetched) == sorted(in_store - in_index)
        assert [r.id for r in index.records(JOB)] == sorted(in_store)
    finally:
        index.close()


def test_a_full_sync_holds_no_set_of_every_ref(tmp_path: Path, monkeypatch) -> None:
    """A full sync of a store whose refs the index already knows (the periodic one, gc,
    verify) holds a batch of names, not the store's and the index's whole (100,000 refs
    were two sets of ~20 MB): 1,000 refs take the Python memory of 100 (they took ~230 KB
    more)."""

    monkeypatch.setattr(index_module, "REF_BATCH", 25)
    monkeypatch.setattr(index_module, "REF_SORT_RUN", 250)  # 1,000 names: 4 sorted runs

    def peak(count: int) -> int:
        root = tmp_path / str(count)
        store = Store.open(LocalBackend(root / "store"))
        names = [f"job_{n:05d}" for n in range(count)]
        for name in names:
            store.create_ref(record(name))
        index = Index(root / "index", store.config.store_id)
        try:
            index.sync(store, full=True)
            with traced_peak() as traced:
                index.sync(store, full=True)
            assert index.record_names(JOB) == set(names)
        finally:
            index.close()
        return traced.peak

    few, many = peak(100), peak(1_000)
    assert many - few < 60_000, (few, many)


def test_a_pack_another_writer_has_not_made_durable_is_fsynced_before_it_is_indexed(
        repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push writes packs unsynced and fsyncs them in batches, before its own ref. Another
    process that syncs its index in between may dedup against such a pack; after a power loss
    its job would name a pack that is gone. So the pack is fsynced before its blobs are indexed.
    (fsync is spied on: a power loss is the one fault nothing real here can produce.)"""
    builder = PackBuilder()
    builder.add(0, b"\x07" * 32, 0, b"chunk", 5)
    pack_id, parts = builder.finish_parts()
    repo.store.put_pack(pack_id, parts, sync=False)  # writer A, before its batch fsync
    pack_file = os.path.realpath(Path(repo.store.url) / repo.store.pack_key(pack_id))

    events: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    other_store = Store.open(LocalBackend(repo.store.url), create=False)
    other = Index(tmp_path / "other-index", other_store.config.store_id)
    add_pack = other.add_pack
    monkeypatch.setattr(other, "add_pack", lambda pid, *a, **k: (events.append(f"index {pid}"),
                                                                 add_pack(pid, *a, **k)))
    try:
        other.sync(other_store)
        assert other.lookup(b"\x07" * 32) is not None
    finally:
        other.close()
    assert f"index {pack_id}" in events
    assert f"fsync {pack_file}" in events[: events.index(f"index {pack_id}")]


def test_a_pack_deleted_while_it_is_being_learned_is_skipped(
        repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gc may delete a pack between the trailer read and the fsync: the others are learned."""
    ids = []
    for n in (1, 2, 3):
        builder = PackBuilder()
        builder.add(0, bytes([n]) * 32, 0, b"chunk", 5)
        pack_id, parts = builder.finish_parts()
        repo.store.put_pack(pack_id, parts, sync=False)
        ids.append(pack_id)
    other_store = Store.open(LocalBackend(repo.store.url), create=False)
    pack_entries = other_store.pack_entries

    def entries_then_gc(pack_id: str, size: int | None = None):
        entries = pack_entries(pack_id, size)
        if pack_id == ids[1]:
            repo.store.delete_pack(pack_id)
        return entries

    monkeypatch.setattr(other_store, "pack_entries", entries_then_gc)
    other = Index(tmp_path / "other-index", other_store.config.store_id)
    try:
        other.sync(other_store)
        assert set(other.pack_sizes()) == {ids[0], ids[2]}
        assert other.lookup(bytes([2]) * 32) is None
        assert other.lookup(bytes([3]) * 32) is not None
    finally:
        other.close()


def test_a_pack_is_indexed_in_transactions_of_a_bounded_number_of_blobs(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write transaction keeps a copy of every page it changes (LMDB keeps them for reuse)
    and moves them in the file: a pack's blobs go in id order, INDEX_BATCH at a time."""
    builder = PackBuilder()
    for n in range(10):
        builder.add(0, bytes([9 - n]) * 32, 0, b"chunk %d" % n, 7)
    pack_id, parts = builder.finish_parts()
    repo.store.put_pack(pack_id, parts)
    writes: list[int] = []
    write = repo.index._write
    monkeypatch.setattr(index_module, "INDEX_BATCH", 3)
    monkeypatch.setattr(repo.index, "_write", lambda: (writes.append(1), write())[1])
    repo.index.add_pack(pack_id, 100, builder.entries)
    assert len(writes) == 4
    assert repo.index._half_added() == set()
    for entry in builder.entries:
        assert repo.index.lookup(entry.id) == (pack_id, entry.offset, entry.length,
                                               entry.plain_len, entry.codec, entry.kind)
    assert repo.index.pack_blob_ids(pack_id) == sorted(e.id for e in builder.entries)
    repo.index.remove_pack(pack_id)
    assert len(writes) == 4 + 4 + 1  # ids checked and removed 3 at a time, then the pack
    assert all(repo.index.lookup(e.id) is None for e in builder.entries)
    assert repo.index.pack_sizes().get(pack_id) is None


@pytest.mark.parametrize("gone", [False, True])
def test_a_pack_half_added_when_the_process_died_is_completed_or_removed_by_the_next_sync(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, gone: bool) -> None:
    """A crash between two of a pack's transactions leaves its record (first) and some of
    its blobs: the next sync adds the rest, or forgets them all if the pack is gone."""
    builder = PackBuilder()
    for n in range(10):
        builder.add(0, bytes([n + 1]) * 32, 0, b"chunk %d" % n, 7)
    pack_id, parts = builder.finish_parts()
    repo.store.put_pack(pack_id, parts)
    write = repo.index._write
    calls = iter(range(100))

    def dies_at_the_third() -> object:
        if next(calls) == 2:
            raise KeyboardInterrupt  # the process stops here
        return write()

    monkeypatch.setattr(index_module, "INDEX_BATCH", 3)
    monkeypatch.setattr(repo.index, "_write", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        repo.index.add_pack(pack_id, 100, builder.entries)
    monkeypatch.setattr(repo.index, "_write", write)
    assert repo.index._half_added() == {pack_id}
    assert sum(repo.index.lookup(e.id) is not None for e in builder.entries) == 6
    if gone:
        repo.store.delete_pack(pack_id)
    repo.index.sync(repo.store, refs=False)
    assert repo.index._half_added() == set()
    found = [repo.index.lookup(e.id) for e in builder.entries]
    if gone:
        assert found == [None] * 10 and pack_id not in repo.index.pack_sizes()
    else:
        assert [loc.pack_id for loc in found] == [pack_id] * 10


def test_flush_of_a_missing_key_is_key_missing(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s")
    backend.put("packs/ab/x", b"1", sync=False)
    with pytest.raises(KeyMissing):
        backend.flush(["packs/ab/x", "packs/ab/gone"])


def test_reader_follows_blobs_moved_to_another_pack(repo: Repo, tmp_path: Path) -> None:
    """Another process repacks (as gc would): a stale index finds the blobs by syncing."""
    src = make_src(tmp_path / "a", "a", size=2 * 1024 * KiB)
    push_dir(repo, src, "vision", "job_a")
    old_packs = list(repo.store.list_packs())
    builder = PackBuilder()
    for blob_id, loc in repo.index.iter_blobs():
        stored = repo.store.read(loc.pack_id, loc.offset, loc.length)
        builder.add(loc.kind, blob_id, loc.codec, stored, loc.plain_len)
    new_id, data = builder.finish()
    repo.store.put_pack(new_id, data)
    for pack_id, _ in old_packs:
        repo.store.delete_pack(pack_id)

    fresh_blobs = BlobSource(repo.store, repo.index)  # empty cache: must fetch
    vfs = Vfs(Repo(repo.store, repo.index, fresh_blobs))
    node = vfs.resolve("/jobs/job_a/weights.bin")
    assert vfs.open(node).read(0, node.size) == (src / "weights.bin").read_bytes()
    assert set(repo.index.pack_sizes()) == {new_id}
    fresh_blobs.close()


def test_missing_and_corrupt_blobs_are_typed_errors(repo: Repo, tmp_path: Path) -> None:
    src = make_src(tmp_path / "a", "a")
    push_dir(repo, src, "vision", "job_a")
    (pack_id, size), = repo.store.list_packs()
    key = repo.store.backend.root / Store.pack_key(pack_id)
    data = bytearray(key.read_bytes())
    node = Vfs(repo).resolve("/jobs/job_a/weights.bin")
    loc = repo.index.lookup(node.entry.chunk_ids()[0])
    data[loc.offset + loc.length // 2] ^= 0xFF
    key.chmod(0o600)
    key.write_bytes(bytes(data))
    repo.store.backend.close()  # drop the cached fd of the old file

    blobs = BlobSource(repo.store, repo.index)
    with pytest.raises(BlobCorrupt) as info:
        blobs.get(node.entry.chunk_ids()[0])
    assert info.value.pack_id == pack_id and pack_id in str(info.value)
    with pytest.raises(BlobMissing):
        blobs.get(b"\7" * 32)
    blobs.close()


def test_a_ref_removed_between_list_and_get_is_skipped(repo: Repo, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's `rm` between the sync's listing and its read of a ref: the sync
    learns the other jobs and leaves that one out (`Store.get_ref` says NotFound)."""
    first = push_dir(repo, make_src(tmp_path / "a", "a"), "vision", "job_a")
    push_dir(repo, make_src(tmp_path / "b", "b"), "vision", "job_b")
    other_store = Store.open(LocalBackend(repo.store.url), create=False)
    listed = other_store.list_refs

    def list_then_removed(kind: str):
        names = list(listed(kind))
        if kind == JOB:
            repo.store.delete_ref(JOB, "job_b")
        return iter(names)

    monkeypatch.setattr(other_store, "list_refs", list_then_removed)
    other = Index(tmp_path / "other-index", other_store.config.store_id)
    try:
        other.sync(other_store)
        assert other.record_names(JOB) == {"job_a"}
        assert other.record(JOB, "job_a") == first
    finally:
        other.close()


def test_index_skips_damaged_packs_and_refs(repo: Repo, tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    push_dir(repo, make_src(tmp_path / "a", "a"), "vision", "job_a")
    bogus = "ab" * 32
    repo.store.backend.put(Store.pack_key(bogus), b"C3PACK1\n" + b"\0" * 100)
    repo.store.backend.put("refs/jobs/broken", b"{not json")
    repo.store.backend.put("refs/jobs/badutf8", b'{"id": "\xc3"}')
    caplog.set_level(logging.ERROR)
    repo.index.rebuild(repo.store)
    assert repo.index.record_names(JOB) == {"job_a"}
    assert bogus not in repo.index.pack_sizes()
    logged = caplog.text
    assert bogus in logged and "broken" in logged and "badutf8" in logged


def test_index_of_another_store_is_reset(repo: Repo, tmp_path: Path) -> None:
    push_dir(repo, make_src(tmp_path / "a", "a"), "vision", "job_a")
    path = repo.index.path
    repo.index.close()
    foreign = Index(path, "another-store")
    try:
        assert foreign.fresh
        assert all(not table for table in index_contents(foreign).values())
    finally:
        foreign.close()
    repo.index = Index(path, repo.store.config.store_id)  # the fixture closes it
    assert repo.index.fresh


# ---- rebuild and recovery, through the CLI -----------------------------------------------
def push_three(run_cli, tmp_path: Path) -> None:
    for tag, extra in (("a", []), ("b", []), ("c", ["-j", "job_c"])):
        result = run_cli(["push", str(make_src(tmp_path / tag, tag)), "-p", "vision", *extra])
        assert result.code == 0, result.err
    result = run_cli(["cp", "-r", str(tmp_path / "a"), "/projects/vision/datasets/set_a"])
    assert result.code == 0, result.err


def test_index_rebuild_equals_the_original(run_cli, store_env, tmp_path: Path) -> None:
    push_three(run_cli, tmp_path)
    before = snapshot_index(store_env.store)
    assert len(before["jobs"]) == 3 and len(before["datasets"]) == 1 and before["blobs"]
    result = run_cli(["index", "rebuild"])
    assert result.code == 0, result.err
    assert "3 jobs, 1 dataset" in result.err
    assert snapshot_index(store_env.store) == before


def test_deleted_index_is_rebuilt_on_open(run_cli, store_env, tmp_path: Path) -> None:
    push_three(run_cli, tmp_path)
    before = snapshot_index(store_env.store)
    shutil.rmtree(store_env.cache)
    result = run_cli(["ls", "/jobs/job_c/sub"])
    assert result.code == 0, result.err
    assert result.out.split() == ["log.txt"]
    assert snapshot_index(store_env.store) == before
    result = run_cli(["cp", "-r", "/jobs/job_c", str(tmp_path / "out")])
    assert result.code == 0, result.err
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (tmp_path / "c" / "weights.bin").read_bytes()


@pytest.mark.logs("is damaged .*rebuilding it")
@pytest.mark.parametrize("damage", ["garbage", "zeros", "empty", "lock-garbage"])
def test_damaged_lmdb_file_is_replaced_and_rebuilt(run_cli, store_env, tmp_path: Path,
                                                   damage: str) -> None:
    push_three(run_cli, tmp_path)
    before = snapshot_index(store_env.store)
    store_id = Store.open(LocalBackend(store_env.store), create=False).config.store_id
    data_file = index_path(store_id) / "data.mdb"
    size = max(data_file.stat().st_size, 64 * KiB)
    if damage == "garbage":
        data_file.write_bytes(rand_bytes(size, 7))
    elif damage == "zeros":
        data_file.write_bytes(b"\0" * size)
    elif damage == "empty":
        data_file.write_bytes(b"")
    else:
        (index_path(store_id) / "lock.mdb").write_bytes(rand_bytes(8 * KiB, 8))
    result = run_cli(["ls", "/jobs/"])
    assert result.code == 0, result.err
    assert "job_c/" in result.out.split()
    if damage in ("garbage", "zeros"):
        assert "rebuilding it from the store" in result.err
    assert snapshot_index(store_env.store) == before


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("damage", ["page", "bytes"])
def test_damage_inside_the_index_is_repaired_as_it_is_met(
        run_cli, c3fs_bin, store_env, tmp_path: Path, damage: str) -> None:
    """LMDB keeps no checksums: a damaged page is only found when a walk meets it, maybe in the
    middle of a command. Every page in turn (or 16 flipped bytes, 8 times): each command gives
    the right answer at once (the index is replaced and refilled from the store as it goes)."""
    push_three(run_cli, tmp_path)
    job_a = run_cli(["push", str(tmp_path / "a"), "-p", "vision"]).out.strip()  # a's data again
    store_id = Store.open(LocalBackend(store_env.store), create=False).config.store_id
    data_file = index_path(store_id) / "data.mdb"
    good = data_file.read_bytes()
    pages = len(good) // 4096
    cases = range(2, pages) if damage == "page" else range(8)  # pages 0 and 1: LMDB's meta
    for case in cases:
        data = bytearray(good)
        if damage == "page":
            data[case * 4096 : (case + 1) * 4096] = rand_bytes(4096, case)
        else:
            for offset in rand_bytes(64, case)[::4]:
                at = 8192 + offset * (len(data) - 8192) // 256
                data[at] ^= 0xFF
        shutil.rmtree(data_file.parent, ignore_errors=True)
        data_file.parent.mkdir(parents=True)
        data_file.write_bytes(data)
        out = tmp_path / f"out{case}"
        for argv in (["ls", "/jobs/"], ["cp", "-r", f"/jobs/{job_a}/", str(out)]):
            result = c3fs_bin(*argv)
            assert result.code == 0, (case, argv, result.err)
            assert "Traceback" not in result.err
            if argv[0] == "ls":
                assert len(result.out.split()) == 4, (case, result.out)
        assert tree_bytes(out) == tree_bytes(tmp_path / "a"), case
    assert "damage" not in c3fs_bin("index", "rebuild").err


def test_open_index_syncs_a_fresh_index(repo: Repo, tmp_path: Path) -> None:
    push_dir(repo, make_src(tmp_path / "a", "a"), "vision", "job_a")
    want = index_contents(repo.index)
    path = repo.index.path
    repo.index.close()
    shutil.rmtree(path)
    repo.index = open_index(repo.store)
    assert index_contents(repo.index) == want
    assert os.path.isdir(path)


@pytest.mark.logs("is damaged .*rebuilding it")
def test_threads_reading_while_a_damaged_index_is_replaced_see_only_retries(tmp_path) -> None:
    """The first thread to meet damage swaps in a new environment while others may be inside
    the old one, or between reading the environment and its table handles: they get
    IndexDamaged (which callers retry), never a raw lmdb error. (Damage is injected.)"""
    import threading

    import lmdb

    from c3fs.index import IndexDamaged

    index = Index(tmp_path / "index", "s1")
    builder = PackBuilder()
    ids = [bytes([n]) * 32 for n in range(64)]
    for blob in ids:
        builder.add(0, blob, 0, b"x", 1)
    pack_id, _ = builder.finish_parts()
    index.add_pack(pack_id, 100, builder.entries)
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for blob in ids:
                try:
                    index.lookup(blob)
                    index.pack_sizes()
                except IndexDamaged:
                    pass
                except BaseException as exc:  # noqa: BLE001 - what the test looks for
                    unexpected.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(40):
            with pytest.raises(IndexDamaged):
                index._damaged(lmdb.CorruptedError("injected"), index.env)
            index.add_pack(pack_id, 100, builder.entries)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        index.close()
    assert not unexpected, unexpected[:3]


def test_the_local_table_survives_when_damage_elsewhere_replaces_the_index(tmp_path) -> None:
    """What `pull` fetched is this machine's own, not in the store: carried over to the new
    index when the damage is in another table. (Damage is injected.)"""
    import lmdb

    from c3fs.index import IndexDamaged

    index = Index(tmp_path / "index", "s1")
    try:
        index.local_put("pulled/job_a", b'{"root": "ab"}')
        with pytest.raises(IndexDamaged):
            index._damaged(lmdb.CorruptedError("injected"), index.env)
        assert index.local_get("pulled/job_a") == b'{"root": "ab"}'
        assert index.fresh  # the rest is relearned from the store
    finally:
        index.close()


def _mapped_kib(path: Path) -> int:
    """KiB of `path` this process has mapped in memory (its maps' Rss in /proc/self/smaps)."""
    total, current = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if "-" in line.split(" ", 1)[0]:  # a mapping's header line
                current = line.rstrip("\n").endswith(str(path))
            elif current and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_lookups_keep_few_index_pages_mapped(tmp_path: Path, monkeypatch) -> None:
    """LMDB reads through a map of its file and never unmaps a page: a million lookups
    held the whole blob table in the process's RSS. The index lets go of its pages once the
    process maps MAPPED_BUDGET more file pages than after the last release."""
    import random

    from c3fs import index as index_module
    from c3fs.objects.pack import PackEntry

    monkeypatch.setattr(index_module, "MAPPED_BUDGET", 256 * KiB)
    monkeypatch.setattr(index_module, "CHECK_EVERY", 16)
    index = Index(tmp_path / "index", "s" * 16)
    try:
        ids = [os.urandom(32) for _ in range(80_000)]
        for pack in range(8):
            part = ids[pack * 10_000 : (pack + 1) * 10_000]
            index.add_pack(f"{pack:064x}", 1 << 20, [
                PackEntry(0, blob, i, 100, 100, 0) for i, blob in enumerate(part)])
        data = tmp_path / "index" / "data.mdb"
        assert os.path.getsize(data) > 8 * 1024 * KiB  # far more than the budget
        random.Random(1).shuffle(ids)
        assert _mapped_kib(data) > 2048  # (writing read its pages)
        most = 0
        for n, blob in enumerate(ids, 1):
            location = index.lookup(blob)
            assert location is not None and location.length == 100
            if n % 1000 == 0:
                most = max(most, _mapped_kib(data))
        # the budget, 64 KiB a lookup between looks, and slack: the budget counts every file
        # the process maps, and other files' pages may leave meanwhile (a busy machine)
        assert 0 < most < 4 * 1024, f"{most} KiB of the index mapped"
    finally:
        index.close()


def test_stored_bytes_is_kept_with_each_pack_added_or_removed(tmp_path: Path) -> None:
    """statfs's sum of pack sizes is a running total: it reads no pack's record (each maps
    the pack's whole list of blob ids), unless its count of packs disagrees with the table."""
    index = Index(tmp_path / "index", "store")
    try:
        ids = [bytes([n]) * 32 for n in range(4)]
        for n, pack in enumerate(ids):
            index.add_pack(pack.hex(), 1000 * (n + 1), [])
        assert index.stored_bytes() == sum(index.pack_sizes().values()) == 10_000
        index.remove_pack(ids[1].hex())
        index.add_pack(ids[3].hex(), 4000, [])  # added again: its record replaced
        assert index.stored_bytes() == sum(index.pack_sizes().values()) == 8000
        index.remove_pack(b"\x77".hex() * 32)  # unknown: nothing changes
        with index.env.begin(write=True) as txn:  # a total other than the table's sum, kept
            txn.put(index_module._STORED, index_module._STORED_VALUE.pack(3, 12_345),
                    db=index.stored)
        assert index.stored_bytes() == 12_345  # (so the table's records were not read)
        with index.env.begin(write=True) as txn:  # a count that disagrees: summed again
            txn.put(index_module._STORED, index_module._STORED_VALUE.pack(7, 1), db=index.stored)
        assert index.stored_bytes() == 8000
        with index.env.begin() as txn:  # ... and kept again
            assert index_module._STORED_VALUE.unpack(txn.get(index_module._STORED,
                                                             db=index.stored)) == (3, 8000)
    finally:
        index.close()
