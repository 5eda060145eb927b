"""Damage to a store and to its index: a flipped byte in a chunk (zstd and raw), a truncated
pack, a deleted pack, a damaged tree, a damaged job ref, a deleted / garbage / truncated /
foreign LMDB index.

For damaged data: `cp` of one file fails with one line naming the job and the path; `cp -r`
and `pull` of a whole job copy every file that can be read (directories with their modes and
mtimes), print one line per damaged file or directory and a summary, exit 6, and never write
wrong bytes or a partial file under a real name; `verify` names exactly the (job, path) pairs
the damage breaks, computed here from the trees before the damage; `index rebuild` relearns
the store; through a mount the damaged file is EIO while every other file reads right.
For a damaged index: the next command rebuilds it from the store, nothing is lost.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from reliability.relkit import (
    DirModel,
    MiB,
    Site,
    affected,
    all_blobs,
    copy_site,
    flip_byte,
    job_model,
    leftovers,
    make_local_store,
    mounted,
    reported,
    tree_digest,
    truncate,
)

JOBS = ("job-a", "job-b")


@dataclass
class Damage:
    site: Site
    sources: dict[str, Path]
    models: dict[str, DirModel]
    damaged: set[bytes]  # blobs the damage breaks, as the index sees them now
    after_rebuild: set[bytes]  # ... and once the index is rebuilt from the store


def build_site(root: Path, small_tree: Path) -> tuple[Site, dict[str, Path]]:
    """Two jobs sharing a big file and a whole directory (so one tree serves both)."""
    src_b = root / "src-b"
    src_b.mkdir(parents=True)
    os.link(small_tree / "weights-0.bin", src_b / "weights-0.bin")
    shutil.copytree(small_tree / "step-000", src_b / "step-000")
    shutil.copystat(small_tree / "step-000", src_b / "step-000")
    (src_b / "own.bin").write_bytes(random.Random(9).randbytes(MiB))
    site = Site(str(root / "store"), root / "cache")
    make_local_store(site.root, 512 * 1024)  # many packs: damage to one leaves the others
    sources = {"job-a": small_tree, "job-b": src_b}
    for job, src in sources.items():
        site.push(src, job)
    return site, sources


def locate(site: Site) -> tuple[dict[str, DirModel], dict]:
    with site.repo() as repo:
        models = {job: job_model(repo, job) for job in JOBS}
        blobs = {blob_id for model in models.values() for _, blob_id, _ in all_blobs(model)}
        return models, {blob_id: repo.index.lookup(blob_id) for blob_id in blobs}


def blob_at(models, where, kind: str, path: str, codec: int | None = None,
            job: str = "job-a") -> bytes:
    """The first blob of `kind` at `path`, but a chunk of zeros: a copy writes a hole for
    one of those (its id names its bytes) and never reads it, so its damage breaks no copy
    (verify still finds it)."""
    for blob_kind, blob_id, blob_path in all_blobs(models[job]):
        if blob_kind == kind and blob_path == path and (codec is None or where[blob_id].codec == codec) \
                and blob_id != blake3.blake3(bytes(where[blob_id].plain_len)).digest():
            return blob_id
    raise AssertionError(f"no {kind} at {path}")


def pack_of_chunks_only(models, where, path: str, job: str = "job-a") -> str:
    """A pack holding a chunk of `path` and no job's root tree, one holding no tree at all
    if there is one. Which blobs share a pack depends on the push's threads: a pack that
    also held a job's root tree made the damage that job's whole (every copy of it fails at
    its root), not the files' this test expects; a subdirectory's tree in it only adds that
    directory's files to what is broken (`affected` counts them), as for "damaged-tree"."""
    trees = {b: p for m in models.values() for kind, b, p in all_blobs(m) if kind == "tree"}
    roots = {b for b, p in trees.items() if p == "/"}
    packs = list(dict.fromkeys(where[blob_id].pack_id for kind, blob_id, blob_path
                               in all_blobs(models[job]) if kind == "chunk" and blob_path == path))
    for allowed in (set(), set(trees) - roots):
        for pack_id in packs:
            if not (in_pack(where, pack_id) & set(trees)) - allowed:
                return pack_id
    raise AssertionError(f"every pack holding a chunk of {path} holds a job's root tree too")


def in_pack(where: dict, pack_id: str, cut: int = 0) -> set[bytes]:
    return {b for b, loc in where.items() if loc.pack_id == pack_id and loc.offset + loc.length > cut}


@dataclass
class Base:
    site: Site
    sources: dict[str, Path]
    models: dict[str, DirModel]
    where: dict


@pytest.fixture(scope="module")
def base(tmp_path_factory, small_tree: Path) -> Base:
    """The two jobs, pushed once; each test damages a copy of this store and index."""
    site, sources = build_site(tmp_path_factory.mktemp("corruption-base"), small_tree)
    return Base(site, sources, *locate(site))


def damage(kind: str, root: Path, base: Base) -> Damage:
    site, sources, models, where = copy_site(base.site, root), base.sources, base.models, base.where
    if kind in ("flipped-zstd-chunk", "flipped-raw-chunk"):
        path, codec = ("/weights-0.bin", 1) if kind == "flipped-zstd-chunk" else ("/weights-1.bin", 0)
        blob = blob_at(models, where, "chunk", path, codec)
        loc = where[blob]
        flip_byte(site.pack_path(loc.pack_id), loc.offset + loc.length // 2)
        return Damage(site, sources, models, {blob}, {blob})
    if kind == "damaged-tree":
        blob = blob_at(models, where, "tree", "/step-000")
        loc = where[blob]
        flip_byte(site.pack_path(loc.pack_id), loc.offset + loc.length // 2)
        return Damage(site, sources, models, {blob}, {blob})
    pack_id = pack_of_chunks_only(models, where, "/weights-1.bin")
    whole = in_pack(where, pack_id)
    if kind == "truncated-pack":
        cut = site.pack_path(pack_id).stat().st_size // 2
        truncate(site.pack_path(pack_id), cut)
        return Damage(site, sources, models, in_pack(where, pack_id, cut), whole)
    assert kind == "deleted-pack"
    site.pack_path(pack_id).unlink()
    return Damage(site, sources, models, whole, whole)


DATA_DAMAGE = ["flipped-zstd-chunk", "flipped-raw-chunk", "truncated-pack", "deleted-pack",
               "damaged-tree"]


def file_paths(model: DirModel) -> dict[str, list[bytes]]:
    found = dict(model.files)
    for sub in model.subdirs:
        found.update(file_paths(sub))
    return found


def broken_files(d: Damage, job: str) -> set[str]:
    """Files of `job` that cannot be read: a damaged chunk, or below a damaged tree."""
    found = set()
    for job_name, path in affected(d.models, d.damaged):
        if job_name != job:
            continue
        files = file_paths(d.models[job])
        found |= {p for p in files if p == path or p.startswith(path.rstrip("/") + "/")}
    return found


@pytest.mark.parametrize("kind", DATA_DAMAGE)
def test_damaged_data(tmp_path: Path, base: Base, kind: str) -> None:
    d = damage(kind, tmp_path, base)
    expected = affected(d.models, d.damaged)
    assert expected, "the damage must break something"
    code, report = d.site.verify()
    assert code == 6 and reported(report) == expected

    for job in JOBS:
        broken = broken_files(d, job)
        for path in sorted(broken)[:2]:  # one file at a time: a clear error, nothing written
            dest = tmp_path / "one" / job / path.strip("/").replace("/", "_")
            dest.parent.mkdir(parents=True, exist_ok=True)
            error = d.site.run("cp", f"/jobs/{job}{path}", dest).one_line_error()
            named = {f"/jobs/{job}{where}" for j, where in expected if j == job and (
                where == path or path.startswith(where.rstrip("/") + "/"))}
            assert any(f"cannot read {where}:" in error for where in named), error
            assert not dest.exists() and leftovers(dest.parent) == []
        dest = tmp_path / "all" / job  # the whole job: all it can, one line per damaged file
        result = d.site.run("cp", "-r", f"/jobs/{job}", dest)
        lost = {where for j, where in expected if j == job}
        summaries = damage_lines(result, {f"/jobs/{job}{where}" for where in lost})
        assert len(summaries) == (1 if lost else 0), result.err
        assert all(job in line and "not copied" in line for line in summaries)
        assert_readable_copied(d.sources[job], dest, lost)
        assert leftovers(tmp_path / "all") == []

    pulled = tmp_path / "pulled"  # every job at once: the damaged ones do not stop the rest
    result = d.site.run("pull", "--dest", pulled)
    summaries = damage_lines(result, {f"/jobs/{j}{where}" for j, where in expected})
    assert len(summaries) == 1 and all(j in summaries[0] for j, _ in expected), result.err
    for job in JOBS:
        assert_readable_copied(d.sources[job], pulled / job, {w for j, w in expected if j == job})
    assert leftovers(pulled) == []
    again = d.site.run("pull", "--dest", pulled)  # only the jobs not pulled in full, again
    assert again.code == 6
    for job in JOBS:
        assert (job in again.err) == any(j == job for j, _ in expected), again.err

    d.site.run("index", "rebuild").ok()
    code, report = d.site.verify()
    assert code == 6 and reported(report) == affected(d.models, d.after_rebuild)


def damage_lines(result, named: set[str]) -> list[str]:
    """Checks `result`: exit 6 if anything is `named` (else 0), one line per named file or
    directory, nothing but `c3fs: error:` lines, no traceback. Returns the other lines."""
    if not named:
        result.ok()
        return []
    assert result.code == 6 and "Traceback" not in result.err, result.err
    assert all(line.startswith("c3fs: error: ") for line in result.err_lines), result.err
    found = [re.match(r"c3fs: error: cannot read (.*?): blob ", line) for line in result.err_lines]
    assert sorted(m.group(1) for m in found if m) == sorted(named), result.err
    return [line for line, m in zip(result.err_lines, found, strict=True) if not m]


def assert_readable_copied(source: Path, dest: Path, lost: set[str]) -> None:
    """Exactly the files `lost` leaves readable, byte-identical; every directory copied has
    the source's mode and mtime (not the 0700 it was written under)."""
    def readable(rel: str) -> bool:
        return not any(rel == where.strip("/") or rel.startswith(where.strip("/") + "/")
                       for where in lost)

    want = {rel: what for rel, what in tree_digest(source).items() if readable(rel)}
    assert tree_digest(dest) == want
    for rel, (kind, _) in want.items():
        if kind == "dir":
            got, src = os.stat(dest / rel), os.stat(source / rel)
            assert (got.st_mode, got.st_mtime_ns) == (src.st_mode, src.st_mtime_ns), rel


@pytest.mark.fuse
@pytest.mark.parametrize("kind", ["flipped-zstd-chunk", "deleted-pack", "damaged-tree"])
def test_damaged_data_through_the_mount(tmp_path: Path, base: Base, kind: str) -> None:
    d = damage(kind, tmp_path, base)
    with mounted(d.site, None, tmp_path / "mnt") as mnt:
        for job in JOBS:
            broken = broken_files(d, job)
            dirs = {path for j, path in affected(d.models, d.damaged) if j == job} - broken
            for path in broken:
                with pytest.raises(OSError) as info:
                    (mnt / "jobs" / job / path.strip("/")).read_bytes()
                assert info.value.errno == errno.EIO
            for path in dirs:
                with pytest.raises(OSError) as info:
                    os.listdir(mnt / "jobs" / job / path.strip("/"))
                assert info.value.errno == errno.EIO
            for path in set(file_paths(d.models[job])) - broken:
                got = (mnt / "jobs" / job / path.strip("/")).read_bytes()
                assert got == (d.sources[job] / path.strip("/")).read_bytes(), path


def test_damaged_job_ref(tmp_path: Path, base: Base) -> None:
    site, sources = copy_site(base.site, tmp_path), base.sources
    ref = site.root / "refs" / "jobs" / "job-b"
    ref.write_bytes(b'{"version": 1, "id": "job-b", "root": garbage')
    code, report = site.verify()
    assert code == 6 and reported(report) == {("job-b", "")}
    assert report["problems"][0]["kind"] == "ref"

    warm = site.run("cp", "-r", "/jobs/job-b", tmp_path / "warm")  # this machine's index
    if warm.code == 0:  # knew the record from before the damage: the right bytes, or nothing
        assert tree_digest(tmp_path / "warm") == tree_digest(sources["job-b"])
    else:
        assert "job-b" in warm.one_line_error()

    fresh = site.with_cache(tmp_path / "fresh-cache")  # another machine: only the store
    assert fresh.jobs() == ["job-a"]
    result = fresh.run("cp", "-r", "/jobs/job-b", tmp_path / "fresh")
    assert result.code != 0 and "Traceback" not in result.err
    assert all("job-b" in line for line in result.err_lines), result.err
    assert not (tmp_path / "fresh").exists()
    fresh.run("cp", "-r", "/jobs/job-a", tmp_path / "a").ok()
    assert tree_digest(tmp_path / "a") == tree_digest(sources["job-a"])

    site.run("index", "rebuild").ok()
    assert site.jobs() == ["job-a"]
    assert site.verify("job-a")[0] == 0


def garbage(path: Path, size: int) -> None:
    path.write_bytes(random.Random(5).randbytes(size))


INDEX_DAMAGE = {
    "deleted-dir": lambda index: shutil.rmtree(index),
    "garbage-data.mdb": lambda index: garbage(index / "data.mdb", 1 * MiB),
    "garbage-lock.mdb": lambda index: garbage(index / "lock.mdb", 8192),
    "truncated-data.mdb": lambda index: truncate(index / "data.mdb", 8192),
    "empty-data.mdb": lambda index: truncate(index / "data.mdb", 0),
}


@pytest.mark.parametrize("kind", sorted(INDEX_DAMAGE) + ["another-store's-index"])
def test_damaged_index_rebuilds_itself(tmp_path: Path, base: Base, small_tree: Path,
                                       kind: str) -> None:
    site = copy_site(base.site, tmp_path)
    (index,) = site.cache.glob("*/index")
    if kind == "another-store's-index":
        other = Site(str(tmp_path / "other-store"), tmp_path / "other-cache")
        other.push(small_tree / "step-001", "other-job")
        (other_index,) = other.cache.glob("*/index")
        shutil.rmtree(index)
        shutil.copytree(other_index, index)
    else:
        INDEX_DAMAGE[kind](index)
    result = site.run("ls", "/jobs/")
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert sorted(result.out.split()) == ["job-a/", "job-b/"]
    site.assert_verifies()
    site.run("cp", "-r", "/jobs/job-b", tmp_path / "copy").ok()
    assert tree_digest(tmp_path / "copy") == tree_digest(base.sources["job-b"])
