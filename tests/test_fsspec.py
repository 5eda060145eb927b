"""The `c3fs://` fsspec filesystem: registered by entry point, read-only, the namespace's
paths; pandas and pyarrow reading through it with no mount; the OSError types fsspec users
catch."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fsspec import AbstractFileSystem
from trees import rand_bytes, write_file

import c3fs
from c3fs import api
from c3fs.filesystem import C3fsFileSystem
from c3fs.vfs import Vfs

MiB = 1024 * 1024
BIG = rand_bytes(2 * MiB, 5)
CSV = b"step,loss\n1,0.5\n2,0.25\n3,0.125\n"


@pytest.fixture(autouse=True)
def _fresh_instances() -> Iterator[None]:
    """fsspec keeps one filesystem per set of arguments; each test has its own store."""
    C3fsFileSystem.clear_instance_cache()
    yield
    for fs in list(C3fsFileSystem._cache.values()):
        fs.store.close()
    C3fsFileSystem.clear_instance_cache()
    for store in list(api._shared.values()):
        store.close()
    api._shared.clear()


@pytest.fixture
def job(store_env, tmp_path: Path) -> str:
    """A job with a csv, parquet parts in a folder and a big binary; its id."""
    src = tmp_path / "out"
    (src / "table").mkdir(parents=True)
    write_file(src / "m.csv", CSV)
    write_file(src / "big.bin", BIG)
    for part in range(3):
        table = pa.table({"step": list(range(part * 10, part * 10 + 10)),
                          "loss": [1.0 / (1 + i) for i in range(10)]})
        pq.write_table(table, src / "table" / f"part-{part}.parquet")
    with c3fs.Store(store_env.store, create=True) as store:
        return store.push(src, project="vision", job="job_f").id


@pytest.fixture
def fs(store_env, job: str) -> C3fsFileSystem:
    return fsspec.filesystem("c3fs", store=str(store_env.store))


def test_entry_point_registers_the_protocol(store_env, job: str) -> None:
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="fsspec.specs")}
    assert names.get("c3fs") == "c3fs.filesystem:C3fsFileSystem"
    code = ("import fsspec, sys; fs = fsspec.filesystem('c3fs'); "
            "print(type(fs).__module__, fs.cat_file('/jobs/job_f/m.csv', 0, 4).decode(), "
            "'c3fs.filesystem' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)  # a fresh process: fsspec found it by the entry point
    assert out.stdout.split() == ["c3fs.filesystem", "step", "True"]


def test_an_unknown_storage_option_is_a_typeerror_and_reading_makes_no_store(
        store_env, job: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt option is refused, naming it and the known ones (it read the default
    store, found no job, and made that store's directory); fsspec's own options pass."""
    default = Path(os.environ["XDG_DATA_HOME"]) / "c3fs" / "store"
    monkeypatch.delenv("C3FS_STORE")
    with pytest.raises(TypeError, match=r"'stor'.*'store'.*skip_instance_cache"):
        fsspec.filesystem("c3fs", stor=str(store_env.store))
    with pytest.raises(TypeError, match="'stor'"):
        pd.read_csv("c3fs:///jobs/job_f/m.csv", storage_options={"stor": str(store_env.store)})
    with pytest.raises(c3fs.errors.StoreError):
        fsspec.filesystem("c3fs")  # the default store is not there: read, not made
    assert not default.exists()
    fs = fsspec.filesystem("c3fs", store=str(store_env.store), skip_instance_cache=True,
                           use_listings_cache=False, listings_expiry_time=10, max_paths=5,
                           asynchronous=False, loop=None)
    assert fs.cat_file("/jobs/job_f/m.csv") == CSV
    assert pd.read_csv("c3fs:///jobs/job_f/m.csv", storage_options={
        "store": str(store_env.store), "use_listings_cache": False})["loss"].iloc[-1] == 0.125


def test_du_sums_the_sizes_find_lists_without_a_lookup_per_file(
        store_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`du` is fsspec's (the same sizes, a link counted as what it leads to) from one walk:
    fsspec's own looked every file up again (`info`), 18 s for 150,000 files."""
    src = tmp_path / "many"
    for i in range(300):
        (src / f"d{i % 7}").mkdir(parents=True, exist_ok=True)
        write_file(src / f"d{i % 7}" / f"f{i}.txt", b"x" * i)
    (src / "best.txt").symlink_to("d0/f7.txt")
    with c3fs.Store(store_env.store, create=True) as store:
        store.push(src, project="p", job="job_many")
    fs = fsspec.filesystem("c3fs", store=str(store_env.store))
    expected = AbstractFileSystem.du(fs, "/jobs/job_many", total=False, withdirs=True)
    lookups: list[str] = []
    resolve = Vfs.resolve  # (a path looked up from the root)
    monkeypatch.setattr(Vfs, "resolve",
                        lambda self, path: (lookups.append(path), resolve(self, path))[1])
    assert fs.du("/jobs/job_many", total=False, withdirs=True) == expected
    assert fs.du("/jobs/job_many") == sum(expected.values()) >= sum(range(300))
    assert len(lookups) <= 12, lookups  # a walk each, the link's info (was 300 a du)


def test_ls_info_find_glob(fs: C3fsFileSystem) -> None:
    assert fs.ls("c3fs:///jobs/", detail=False) == ["/jobs/job_f"]
    assert fs.ls("/jobs/job_f", detail=False) == [
        "/jobs/job_f/big.bin", "/jobs/job_f/m.csv", "/jobs/job_f/table"]
    detail = {e["name"]: e for e in fs.ls("c3fs:///projects/vision/jobs/job_f")}
    assert detail["/projects/vision/jobs/job_f/big.bin"]["size"] == len(BIG)
    assert detail["/projects/vision/jobs/job_f/table"]["type"] == "directory"
    info = fs.info("c3fs:///jobs/job_f/m.csv")
    assert (info["name"], info["type"], info["size"], info["mode"]) == (
        "/jobs/job_f/m.csv", "file", len(CSV), 0o644)
    latest = fs.info("/projects/vision/jobs/latest")  # followed, as fsspec's local fs does
    assert (latest["type"], latest["islink"], latest["destination"]) == (
        "directory", True, "job_f")
    assert fs.isdir("/projects/vision/jobs/latest") and not fs.isfile("/projects/vision/jobs/latest")
    assert fs.isdir("/jobs/job_f/table") and fs.isfile("/jobs/job_f/m.csv")
    assert not fs.exists("/jobs/job_nope") and fs.exists("/jobs/job_f")
    assert fs.find("/jobs/job_f/table") == [f"/jobs/job_f/table/part-{i}.parquet" for i in range(3)]
    assert fs.find("/jobs", maxdepth=1, withdirs=True) == ["/jobs", "/jobs/job_f"]
    assert fs.find("/jobs/job_f/m.csv") == ["/jobs/job_f/m.csv"]
    assert fs.find("/jobs/job_nope") == [] and fs.glob("/jobs/job_nope/*.csv") == []
    assert fs.glob("c3fs:///projects/*/jobs/*/*.csv") == ["/projects/vision/jobs/job_f/m.csv"]
    assert fs.glob("/jobs/job_f/**/*.parquet") == [
        f"/jobs/job_f/table/part-{i}.parquet" for i in range(3)]
    assert fs.du("/jobs/job_f") == len(BIG) + len(CSV) + sum(
        fs.size(p) for p in fs.find("/jobs/job_f/table"))
    assert fs.modified("/jobs/job_f/m.csv").tzinfo is not None
    assert fs.ls("c3fs://jobs/job_f", detail=False)[1] == "/jobs/job_f/m.csv"  # no third /


def test_open_and_cat_file_ranges(fs: C3fsFileSystem) -> None:
    assert fs.cat_file("/jobs/job_f/m.csv") == CSV
    assert fs.cat_file("c3fs:///jobs/job_f/big.bin", MiB - 3, MiB + 5) == BIG[MiB - 3:MiB + 5]
    assert fs.cat_file("/jobs/job_f/big.bin", -10) == BIG[-10:]
    assert fs.cat_file("/jobs/job_f/big.bin", 5, -5) == BIG[5:-5]
    assert fs.cat_file("/jobs/job_f/m.csv", 100, 200) == b""
    assert fs.cat(["/jobs/job_f/m.csv"]) == {"/jobs/job_f/m.csv": CSV}
    assert fs.read_block("/jobs/job_f/big.bin", 1000, 64) == BIG[1000:1064]
    with fs.open("c3fs:///jobs/job_f/big.bin", block_size=4096, cache_type="readahead") as f:
        assert f.size == len(BIG)
        f.seek(3 * len(BIG) // 4)
        assert f.read(100) == BIG[3 * len(BIG) // 4:][:100]
    with fs.open("/jobs/job_f/m.csv", "r") as text:  # text mode: fsspec's wrapper
        assert text.readline() == "step,loss\n"
    with fsspec.open("c3fs:///jobs/job_f/m.csv", store=fs.store.url) as f:
        assert f.read() == CSV


def test_errors_are_the_oserrors_fsspec_users_expect(fs: C3fsFileSystem) -> None:
    cases = [(fs.open, "/jobs/job_nope/m.csv", FileNotFoundError),
             (fs.info, "/jobs/job_f/nope.csv", FileNotFoundError),
             (fs.cat_file, "/jobs/job_f/../../etc/passwd", FileNotFoundError),
             (fs.ls, "/etc", FileNotFoundError),
             (fs.open, "/jobs/job_f/table", IsADirectoryError),
             (fs.ls, "/jobs/job_f/m.csv/x", NotADirectoryError)]
    for call, path, error in cases:
        with pytest.raises(error):
            call(path)
    for write in (lambda: fs.open("/jobs/job_f/new.csv", "wb"), lambda: fs.rm("/jobs/job_f"),
                  lambda: fs.pipe_file("/jobs/job_f/x", b"x"), lambda: fs.mkdir("/jobs/x")):
        with pytest.raises(OSError) as caught:
            write()
        assert caught.value.errno == errno.EROFS


@pytest.mark.logs("blob .* is corrupt")
def test_damaged_data_is_an_eio(fs: C3fsFileSystem, store_env) -> None:
    pack = max((store_env.store / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    for at in range(0, len(data), 4096):
        data[at] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(OSError) as caught:
        fs.cat_file("/jobs/job_f/big.bin")
    assert caught.value.errno == errno.EIO
    assert isinstance(caught.value.__cause__, c3fs.errors.DataError)


def test_pandas_reads_through_c3fs_urls(fs: C3fsFileSystem, store_env) -> None:
    options = {"store": str(store_env.store)}
    frame = pd.read_csv("c3fs:///jobs/job_f/m.csv", storage_options=options)
    assert frame["loss"].tolist() == [0.5, 0.25, 0.125]
    latest = pd.read_csv("c3fs:///projects/vision/jobs/latest/m.csv", storage_options=options)
    assert latest.equals(frame)
    part = pd.read_parquet("c3fs:///jobs/job_f/table/part-1.parquet", storage_options=options)
    assert part["step"].tolist() == list(range(10, 20))
    assert pd.read_csv("c3fs:///jobs/job_f/m.csv").equals(frame)  # the default store: $C3FS_STORE


def test_pyarrow_reads_a_dataset_through_c3fs(fs: C3fsFileSystem) -> None:
    table = pq.read_table("/jobs/job_f/table/part-2.parquet", filesystem=fs)
    assert table.column("step").to_pylist() == list(range(20, 30))
    dataset = ds.dataset("/jobs/job_f/table", filesystem=fs, format="parquet")
    assert sorted(dataset.files) == [f"/jobs/job_f/table/part-{i}.parquet" for i in range(3)]
    latest = ds.dataset("/projects/vision/jobs/latest/table", filesystem=fs, format="parquet")
    assert latest.to_table().num_rows == 30  # through the link
    assert len(pd.read_parquet("c3fs:///projects/vision/jobs/latest/table",
                               storage_options={"store": fs.store})) == 30
    whole = dataset.to_table()
    assert whole.num_rows == 30 and sorted(whole.column("step").to_pylist()) == list(range(30))
    filtered = dataset.to_table(filter=ds.field("step") >= 25)
    assert sorted(filtered.column("step").to_pylist()) == list(range(25, 30))


_parent_fs: C3fsFileSystem | None = None  # inherited by forked workers (a global: see test_api)


def _worker_reads(path: str) -> tuple[bytes, list[float]]:
    """In a forked worker: the parent's filesystem object, and pandas making its own."""
    assert _parent_fs is not None
    head = _parent_fs.cat_file(path, 0, 9)
    frame = pd.read_csv(f"c3fs://{path}", storage_options={"store": _parent_fs.store.url})
    return head, frame["loss"].tolist()


def test_forked_workers_read_through_fsspec(fs: C3fsFileSystem) -> None:
    global _parent_fs
    _parent_fs = fs
    assert fs.cat_file("/jobs/job_f/m.csv", 0, 4) == b"step"  # the parent has read
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_worker_reads, ["/jobs/job_f/m.csv"] * 4)
    finally:
        _parent_fs = None
    assert results == [(b"step,loss", [0.5, 0.25, 0.125])] * 4
    assert fs.cat_file("/jobs/job_f/m.csv", 0, 4) == b"step"


def test_a_filesystem_pickles_for_workers(fs: C3fsFileSystem) -> None:
    import pickle

    again = pickle.loads(pickle.dumps(fs))
    assert again.cat_file("/jobs/job_f/m.csv") == CSV
    assert json.loads(json.dumps(again.info("/jobs/job_f/m.csv")))["size"] == len(CSV)
