"""Issue 15: tags and latest, pins, lineage, diff, job logs, through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fusehelp import mount, run_c3fs
from memkit import traced_peak


def _push(run_cli, tmp_path: Path, job: str, files: dict[str, bytes], project: str = "p") -> str:
    src = tmp_path / f"src_{job}"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    for path in [*src.rglob("*"), src]:  # same names, same bytes: same tree ids
        os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)
    result = run_cli(["push", str(src), "-p", project, "-j", job])
    assert result.code == 0, result.err
    return job


def _store_record(store_env, job: str, **changes) -> None:
    """Rewrite a job's record in the store (a FAILED job, an input list) and drop the index."""
    import shutil

    import msgspec

    from c3fs.objects.job import JobRecord, encode_record

    key = store_env.store / "refs" / "jobs" / job
    record = msgspec.json.decode(key.read_bytes(), type=JobRecord)
    key.write_bytes(encode_record(msgspec.structs.replace(record, **changes)))
    shutil.rmtree(store_env.cache, ignore_errors=True)


# 1. tags and latest ----------------------------------------------------------------------------
def test_tag_resolves_everywhere_and_shows_as_a_symlink(run_cli, store_env, tmp_path) -> None:
    _push(run_cli, tmp_path, "a", {"x.txt": b"from a"})
    _push(run_cli, tmp_path, "b", {"x.txt": b"from b"})
    result = run_cli(["tag", "a", "best"])
    assert result.code == 0, result.err
    assert "/projects/p/tags/best -> a" in result.out

    listing = run_cli(["ls", "/projects/p/tags/"])
    assert listing.code == 0 and listing.out.split() == ["best"]
    long = run_cli(["ls", "-l", "/projects/p/tags/"])
    assert long.out.startswith("lrwxrwxrwx") and "best -> ../jobs/a" in long.out
    assert run_cli(["ls", "/projects/p/tags/best"]).out.split() == ["x.txt"]
    out = tmp_path / "out.txt"
    assert run_cli(["cp", "/projects/p/tags/best/x.txt", str(out)]).code == 0
    assert out.read_bytes() == b"from a"
    assert run_cli(["ls", "/projects/p/"]).out.split() == ["datasets/", "jobs/", "tags/"]

    moved = run_cli(["tag", "b", "best", "--json"])
    assert json.loads(moved.out) | {"created": 0} == {
        "project": "p", "name": "best", "job": "b", "generation": 2, "created": 0,
        "host": json.loads(moved.out)["host"], "previous": "a"}
    out = tmp_path / "out2.txt"  # (cp skips a file of the same size and mtime)
    assert run_cli(["cp", "/projects/p/tags/best/x.txt", str(out)]).code == 0
    assert out.read_bytes() == b"from b"
    tags = json.loads(run_cli(["tag", "--list", "--json"]).out)
    assert [(t["project"], t["name"], t["job"]) for t in tags] == [("p", "best", "b")]

    assert run_cli(["tag", "--rm", "best"]).code == 0
    gone = run_cli(["ls", "/projects/p/tags/best"])
    assert gone.code == 3 and "no such tag" in gone.err
    assert run_cli(["ls", "/projects/p/tags/"]).out == ""
    assert run_cli(["tag", "--rm", "best"]).code == 3
    assert run_cli(["tag", "a", "best"]).code == 0  # set again: generation 4
    keys = sorted(p.name for p in (store_env.store / "tags" / "p" / "best").iterdir())
    assert keys == ["00000001", "00000002", "00000003", "00000004"]


def test_latest_is_the_newest_succeeded_job(run_cli, store_env, tmp_path) -> None:
    _push(run_cli, tmp_path, "old", {"f": b"old"})
    _push(run_cli, tmp_path, "new", {"f": b"new"})
    _push(run_cli, tmp_path, "broken", {"f": b"broken"})
    _store_record(store_env, "broken", status="FAILED", ended=4e9)
    _store_record(store_env, "old", ended=1e9)
    _store_record(store_env, "new", ended=2e9)
    out = tmp_path / "f"
    assert run_cli(["cp", "/projects/p/jobs/latest/f", str(out)]).code == 0
    assert out.read_bytes() == b"new"
    long = run_cli(["ls", "-l", "/projects/p/jobs/"])
    assert long.code == 0 and "latest -> new" in long.out and "broken" in long.out
    assert "latest" in run_cli(["ls", "/projects/p/jobs/"]).out.split()
    assert run_cli(["tag", "/projects/p/jobs/latest", "release"]).code == 0
    tags = json.loads(run_cli(["tag", "--list", "--json", "-p", "p"]).out)
    assert tags[0]["job"] == "new"
    assert run_cli(["tag", "new", "latest"]).code == 1  # not a tag name


def test_tag_bad_input(run_cli, store_env, tmp_path) -> None:
    _push(run_cli, tmp_path, "a", {"f": b"a"})
    assert run_cli(["tag", "nope", "best"]).code == 3
    _push(run_cli, tmp_path, "q1", {"f": b"q"}, project="q")
    assert run_cli(["tag", "a", "bad/name"]).code == 2
    assert run_cli(["tag", "a"]).code == 2
    assert run_cli(["tag", "a", "t", "-p", "q"]).code == 2
    assert run_cli(["ls", "/projects/p/tags/nope"]).code == 3
    # a tag naming a removed job: a clear error, not a crash
    assert run_cli(["tag", "a", "t"]).code == 0
    assert run_cli(["tag", "q1", "t"]).code == 0
    ambiguous = run_cli(["tag", "--rm", "t"])
    assert ambiguous.code == 1 and "several projects" in ambiguous.err
    _push(run_cli, tmp_path, "a2", {"f": b"a2"})
    assert run_cli(["rm", "a"]).code == 0
    dangling = run_cli(["ls", "/projects/p/tags/t/"])
    assert dangling.code == 3 and "/projects/p/tags/t -> ../jobs/a" in dangling.err
    assert run_cli(["ls", "/projects/q/tags/t/"]).code == 0
    # a record copied under another tag's key is refused (exit 6), never followed
    src = store_env.store / "tags" / "q" / "t" / "00000001"
    other = store_env.store / "tags" / "q" / "u"
    other.mkdir()
    (other / "00000001").write_bytes(src.read_bytes())
    damaged = run_cli(["ls", "/projects/q/tags/u"])
    assert damaged.code == 6 and "tag q/u" in damaged.err


def test_two_machines_moving_a_tag_one_wins(run_cli, store_env, tmp_path, monkeypatch) -> None:
    from c3fs.jobs import tags

    _push(run_cli, tmp_path, "a", {"f": b"a"})
    _push(run_cli, tmp_path, "b", {"f": b"b"})
    assert run_cli(["tag", "a", "best"]).code == 0
    real = tags._newest
    calls = []

    def stale(store, project, name):  # the other machine writes between our read and write
        seen = real(store, project, name)
        if not calls:
            calls.append(1)
            tags.set_tag(store, project, name, "b")
        return seen

    monkeypatch.setattr(tags, "_newest", stale)
    lost = run_cli(["tag", "a", "best"])
    assert lost.code == 4 and "changed by another process" in lost.err and "job b" in lost.err
    monkeypatch.setattr(tags, "_newest", real)
    assert json.loads(run_cli(["tag", "--list", "--json"]).out)[0]["job"] == "b"


def test_tag_help_has_examples(run_cli) -> None:
    result = run_cli(["tag", "--help"])
    assert result.code == 0 and "Examples:" in result.out and "--rm" in result.out


@pytest.mark.fuse
def test_tags_and_latest_in_the_mount_and_the_installed_command(tmp_path) -> None:
    """The installed `c3fs`: tags and latest are symlinks in a mount of the namespace, and
    `c3fs mount` of a tag mounts the job it names."""
    env = dict(os.environ, C3FS_STORE=str(tmp_path / "store"), C3FS_CACHE_DIR=str(tmp_path / "c"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"tagged")
    run_c3fs("push", str(src), "-p", "p", "-j", "j1", env=env)
    assert run_c3fs("tag", "j1", "best", env=env).stdout.strip().endswith("best -> j1")
    with mount(env, tmp_path / "all") as m:
        link = m / "projects" / "p" / "tags" / "best"
        assert os.readlink(link) == "../jobs/j1"
        assert (link / "f.txt").read_bytes() == b"tagged"
        assert os.readlink(m / "projects" / "p" / "jobs" / "latest") == "j1"
        assert sorted(os.listdir(m / "projects" / "p")) == ["datasets", "jobs", "tags"]
    with mount(env, tmp_path / "one", "/projects/p/tags/best") as m:
        assert (m / "f.txt").read_bytes() == b"tagged"
    pulled = run_c3fs("pull", "/projects/p/jobs/latest", "-d", str(tmp_path / "pulled"), env=env)
    assert pulled.returncode == 0
    assert (tmp_path / "pulled" / "j1" / "f.txt").read_bytes() == b"tagged"


# 2. pins ------------------------------------------------------------------------------------
def _root(run_cli, job: str) -> str:
    return json.loads(run_cli(["ls", "--json", "/jobs/"]).out)["entries"][
        [i["name"] for i in json.loads(run_cli(["ls", "--json", "/jobs/"]).out)["entries"]].index(job)
    ]["record"]["root"]


def test_mount_expect_refuses_another_root_before_mounting(run_cli, store_env, tmp_path) -> None:
    _push(run_cli, tmp_path, "a", {"f": b"a"})
    _push(run_cli, tmp_path, "b", {"f": b"b"})
    root_a, root_b = _root(run_cli, "a"), _root(run_cli, "b")
    assert run_cli(["tag", "b", "best"]).code == 0
    mnt = tmp_path / "m"
    mnt.mkdir()
    refused = run_cli(["mount", "/projects/p/tags/best", str(mnt), "--expect", root_a])
    assert refused.code == 8, refused.err
    assert root_a in refused.err and root_b in refused.err and "/jobs/b" in refused.err
    assert not list(mnt.iterdir())
    bad = run_cli(["mount", "/jobs/a", str(mnt), "--expect", "xyz"])
    assert bad.code == 2 and "not a root id" in bad.err


def test_run_refuses_a_pinned_dataset_of_another_root(c3fs_bin, run_cli, store_env,
                                                       tmp_path) -> None:
    _push(run_cli, tmp_path, "a", {"f": b"a"})
    root_a = _root(run_cli, "a")
    _push(run_cli, tmp_path, "b", {"f": b"b"})
    _store_record(store_env, "a", ended=1e9)
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text(f"project: q\ndatasets:\n  - ref: /projects/p/jobs/latest\n"
                              f"    mount: in\n    digest: {root_a}\n")
    res = c3fs_bin("run", "--", "touch", "ran", cwd=work)
    assert res.code == 8 and root_a in res.err and _root(run_cli, "b") in res.err, res.err
    assert not (work / "ran").exists()
    (work / ".c3").write_text("project: q\ndatasets:\n  - ref: /jobs/a\n    mount: in\n"
                              "    digest: zz12\n")
    res = c3fs_bin("run", "--", "touch", "ran", cwd=work)
    assert res.code == 2 and "not a root id" in res.err and not (work / "ran").exists()


@pytest.mark.fuse
def test_run_records_what_latest_and_a_tag_resolved_to(c3fs_bin, run_cli, store_env,
                                                        tmp_path) -> None:
    _push(run_cli, tmp_path, "a", {"f": b"from a"})
    _push(run_cli, tmp_path, "b", {"f": b"from b"})
    _store_record(store_env, "a", ended=2e9)
    _store_record(store_env, "b", ended=1e9)
    assert run_cli(["tag", "b", "best"]).code == 0
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text(
        "project: q\ndatasets:\n  - ref: /projects/p/jobs/latest\n    mount: one\n"
        f"  - ref: /projects/p/tags/best\n    mount: two\n    digest: {_root(run_cli, 'b')}\n")
    res = c3fs_bin("run", "-j", "consumer", "--", "sh", "-c",
                   "mkdir -p artifacts && cat one/f two/f > artifacts/both", cwd=work)
    assert res.code == 0, res.err
    out = tmp_path / "both"
    assert run_cli(["cp", "/jobs/consumer/both", str(out)]).code == 0
    assert out.read_bytes() == b"from afrom b"
    record = json.loads(run_cli(["ls", "--json", "/jobs/"]).out)["entries"][-1]["record"]
    assert [(i["ref"], i["resolved"], i["root"]) for i in record["inputs"]] == [
        ("/projects/p/jobs/latest", "/jobs/a", _root(run_cli, "a")),
        ("/projects/p/tags/best", "/jobs/b", _root(run_cli, "b"))]


# 3. lineage -----------------------------------------------------------------------------------
def _chain(run_cli, store_env, tmp_path) -> dict[str, str]:
    """a -> b -> c (c read b through latest), d read c and itself (a damaged record), e read
    a job no longer in the store."""
    from c3fs.objects.job import Input

    for job in "abcde":
        _push(run_cli, tmp_path, job, {"f": job.encode()})
    roots = {job: _root(run_cli, job) for job in "abcde"}
    _store_record(store_env, "b", inputs=[Input("/jobs/a", roots["a"], "in")])
    _store_record(store_env, "c", inputs=[Input("/projects/p/jobs/latest", roots["b"], "in",
                                                "/jobs/b")])
    _store_record(store_env, "d", inputs=[Input("/jobs/c/f", roots["c"]),
                                          Input("/jobs/d", roots["d"])])
    _store_record(store_env, "e", inputs=[Input("/jobs/gone", roots["a"])])
    return roots


def test_lineage_up_down_json_dot(run_cli, store_env, tmp_path) -> None:
    roots = _chain(run_cli, store_env, tmp_path)
    data = json.loads(run_cli(["lineage", "b", "--json"]).out)
    found = {(n["id"], n["direction"], n["depth"]) for n in data["nodes"]}
    assert found == {("b", "self", 0), ("a", "up", 1), ("c", "down", 1), ("d", "down", 2)}
    edges = {(e["input"][1], e["consumer"][1]) for e in data["edges"]}
    assert edges == {("a", "b"), ("b", "c"), ("c", "d")}
    assert next(n for n in data["nodes"] if n["id"] == "a")["root"] == roots["a"]

    up = json.loads(run_cli(["lineage", "d", "--up", "--json"]).out)
    assert [n["id"] for n in up["nodes"]] == ["a", "b", "c", "d"]
    one = json.loads(run_cli(["lineage", "d", "--up", "--depth", "1", "--json"]).out)
    assert [n["id"] for n in one["nodes"]] == ["c", "d"]
    down = json.loads(run_cli(["lineage", "/jobs/a", "--down", "--json"]).out)
    assert [n["id"] for n in down["nodes"]] == ["a", "b", "c", "d"]

    text = run_cli(["lineage", "c"])
    assert text.code == 0 and "<- 1  b" in text.out and "-> 1  d" in text.out
    assert roots["b"][:16] in text.out and "SUCCEEDED" in text.out
    dot = run_cli(["lineage", "c", "--dot"]).out
    assert dot.startswith("digraph lineage {") and '"job:b" -> "job:c";' in dot

    missing = json.loads(run_cli(["lineage", "e", "--json"]).out)
    gone = next(n for n in missing["nodes"] if n["id"] == "gone")
    assert gone["in_store"] is False and gone["root"] == roots["a"]
    assert run_cli(["lineage", "nope"]).code == 3
    assert run_cli(["lineage", "c", "--json", "--dot"]).code == 2


def test_lineage_reads_the_records_it_shows(run_cli, store_env, tmp_path, monkeypatch) -> None:
    """The index keeps who read what (`by_input`): a lineage walk decodes the records it
    reaches, not the store's 200 others; a record replaced or removed takes its edges."""
    import msgspec

    import c3fs.index as indexmod
    from c3fs.objects.job import JobRecord
    from c3fs.repo import Repo
    from c3fs.store.local import LocalBackend
    from c3fs.store.store import Store

    roots = _chain(run_cli, store_env, tmp_path)
    store = Store.open(LocalBackend(store_env.store))
    for n in range(200):
        store.create_ref(JobRecord(id=f"other{n:03d}", project="q", root=roots["a"],
                                   created=1_000_000.0 + n))
    run_cli(["ls", "/jobs/"]).ok()  # the index learns them
    decoded = []
    real = indexmod.decode_record
    monkeypatch.setattr(indexmod, "decode_record", lambda raw: decoded.append(1) or real(raw))
    data = json.loads(run_cli(["lineage", "b", "--json"]).ok().out)
    assert {n["id"] for n in data["nodes"]} == {"a", "b", "c", "d"}
    assert len(decoded) <= 12, len(decoded)
    monkeypatch.setattr(indexmod, "decode_record", real)

    repo = Repo.open(str(store_env.store))
    try:
        assert [r.id for r in repo.consumers("job", "b")] == ["c"]
        assert [r.id for r in repo.consumers("job", "c")] == ["d"]
        c = repo.find_record("job", "c")
        repo.index.put_record(msgspec.structs.replace(c, inputs=[]))  # c re-created
        assert repo.consumers("job", "b") == []
        repo.index.remove_record("job", "d")
        assert repo.consumers("job", "c") == [] and repo.consumers("job", "d") == []
        assert [r.id for r in repo.consumers("job", "gone")] == ["e"]
    finally:
        repo.close()


def test_ls_l_of_a_job_shows_its_inputs(run_cli, store_env, tmp_path) -> None:
    roots = _chain(run_cli, store_env, tmp_path)
    out = run_cli(["ls", "-l", "/jobs/c"]).out.splitlines()
    assert out[0] == f"input in <- /projects/p/jobs/latest (/jobs/b) root {roots['b']}"
    assert out[1].endswith(" f")
    assert run_cli(["ls", "-l", "/jobs/a"]).out.splitlines()[0].endswith(" f")


@pytest.mark.fuse
def test_the_mount_shows_a_job_s_inputs_as_an_xattr_of_its_top(run_cli, store_env,
                                                                tmp_path) -> None:
    roots = _chain(run_cli, store_env, tmp_path)
    with mount(dict(os.environ), tmp_path / "m") as m:
        top = m / "jobs" / "c"
        assert "user.c3fs.inputs" in os.listxattr(top)
        inputs = json.loads(os.getxattr(top, "user.c3fs.inputs"))
        assert inputs == [{"ref": "/projects/p/jobs/latest", "root": roots["b"], "mount": "in",
                           "resolved": "/jobs/b"}]
        for place in (m / "jobs" / "a", top / "f", m / "jobs"):  # no inputs; not a job's top
            assert "user.c3fs.inputs" not in os.listxattr(place)
            with pytest.raises(OSError):
                os.getxattr(place, "user.c3fs.inputs")
    with mount(dict(os.environ), tmp_path / "one", "/jobs/c") as one:  # a mount of the job
        assert json.loads(os.getxattr(one, "user.c3fs.inputs")) == inputs


def test_lineage_help_has_examples(run_cli) -> None:
    result = run_cli(["lineage", "--help"])
    assert result.code == 0 and "Examples:" in result.out and "--dot" in result.out


# 4. diff ----------------------------------------------------------------------------------------
def test_diff_of_two_jobs(run_cli, store_env, tmp_path) -> None:
    import random

    rng = random.Random(1)
    big = rng.randbytes(3 * 1024 * 1024)
    base = {"same/x": b"x", "gone.txt": b"old", "big.bin": big, "d/e/f": b"f", "kind": b"file"}
    _push(run_cli, tmp_path, "a", base)
    changed = dict(base, **{"big.bin": big[:2 * 1024 * 1024] + rng.randbytes(1024 * 1024),
                            "new/sub/n.txt": b"new!", "kind/inner": b"i"})
    del changed["gone.txt"], changed["kind"]
    _push(run_cli, tmp_path, "b", changed)
    result = run_cli(["diff", "a", "b", "--json"])
    assert result.code == 1, result.err
    data = json.loads(result.out)
    assert [(c["path"], c["size_b"]) for c in data["added"]] == [("kind/inner", 1),
                                                                 ("new/sub/n.txt", 4)]
    assert [(c["path"], c["size_a"]) for c in data["removed"]] == [("gone.txt", 3), ("kind", 4)]
    [big_change] = data["changed"]
    assert big_change["path"] == "big.bin" and big_change["size_b"] == 3 * 1024 * 1024
    assert 1024 * 1024 <= big_change["shared"] < 3 * 1024 * 1024  # the first chunks are A's
    assert data["subtrees_skipped"] == 2 and not data["identical"]  # same/ and d/

    text = run_cli(["diff", "a", "b"])
    assert text.code == 1 and "+ new/sub/n.txt  4 B" in text.out and "- gone.txt" in text.out
    assert "M big.bin" in text.out and "2 added, 2 removed, 1 changed" in text.err
    same = run_cli(["diff", "a", "/projects/p/jobs/a", "--json"])
    assert same.code == 0 and json.loads(same.out)["trees_read"] == 0
    assert run_cli(["diff", "a", "b", "same"]).code == 0
    assert run_cli(["diff", "a", "b", "big.bin"]).code == 1
    assert run_cli(["diff", "a", "nope"]).code == 3
    assert run_cli(["diff", "a", "b", "missing/dir"]).code == 3


def test_diff_counts_an_empty_directory_only_one_side_has(run_cli, store_env, tmp_path) -> None:
    """A copy of either job makes its empty directories: one only B has is added ("path/",
    size 0), one only A has is removed; the jobs are not identical (exit 1)."""
    for name, empty in (("a", "gone"), ("b", "newempty")):
        src = tmp_path / name
        (src / "deep" / empty).mkdir(parents=True)
        (src / "x").write_bytes(b"same")
        assert run_cli(["push", str(src), "-p", "p", "-j", name]).code == 0
    result = run_cli(["diff", "a", "b", "--json"])
    assert result.code == 1, result.err
    data = json.loads(result.out)
    assert [(c["path"], c["size_b"]) for c in data["added"]] == [("deep/newempty/", 0)]
    assert [(c["path"], c["size_a"]) for c in data["removed"]] == [("deep/gone/", 0)]
    text = run_cli(["diff", "a", "b"])
    assert "+ deep/newempty/  0 B" in text.out and "1 added, 1 removed, 0 changed" in text.err


def test_diff_reads_only_the_trees_on_the_changed_path(run_cli, store_env, tmp_path) -> None:
    files = {f"d{i:02d}/s{j:02d}/f{k}": f"{i} {j} {k}".encode()
             for i in range(30) for j in range(10) for k in range(5)}
    _push(run_cli, tmp_path, "a", files)
    _push(run_cli, tmp_path, "b", dict(files, **{"d07/s03/f1": b"changed"}))
    data = json.loads(run_cli(["diff", "a", "b", "--json"]).out)
    assert [c["path"] for c in data["changed"]] == ["d07/s03/f1"]
    assert data["trees_read"] == 6  # root, d07, d07/s03 on each side, of 2 x 331 trees


def test_diff_of_many_changes_is_sorted_and_held_in_sorted_runs(run_cli, store_env, tmp_path,
                                                                monkeypatch) -> None:
    """Changes wait in sorted runs (here of 4) in temporary files and come out in the order
    of their paths, as when they were held in lists and sorted: text and JSON."""
    import c3fs.jobs.diff as diff_module

    monkeypatch.setattr(diff_module, "SORT_RUN", 4)
    a = {f"{d}/{n}": f"{d}{n}".encode() for d in ("x", "x.y", "z") for n in range(9)}
    b = {f"{d}/{n}": f"{d}{n}!".encode() for d in ("x", "x.y") for n in range(0, 9, 2)}
    b.update({f"w/{n}": b"w" for n in range(9)}, **{"x/5": b"x5", "x/6.txt": b"new"})
    _push(run_cli, tmp_path, "a", a)
    _push(run_cli, tmp_path, "b", b)
    data = json.loads(run_cli(["diff", "a", "b", "--json"]).out)
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    assert [c["path"] for c in data["added"]] == added and len(added) > 8
    assert [c["path"] for c in data["removed"]] == removed and len(removed) > 8
    assert [c["path"] for c in data["changed"]] == changed and len(changed) > 8
    assert all(c["size_a"] is None and c["size_b"] == len(b[c["path"]]) for c in data["added"])
    assert all(c["size_b"] is None and c["size_a"] == len(a[c["path"]])
               for c in data["removed"])
    text = run_cli(["diff", "a", "b"])
    assert text.out.splitlines() == ([f"+ {p}  {len(b[p])} B" for p in added]
                                     + [f"- {p}  {len(a[p])} B" for p in removed]
                                     + [f"M {p}  {len(a[p])} B -> {len(b[p])} B, 0 B shared"
                                        for p in changed])
    assert f"{len(added)} added, {len(removed)} removed, {len(changed)} changed" in text.err


def test_diff_of_trees_that_share_nothing_holds_no_list_of_changes(repo, tmp_path,
                                                                    monkeypatch) -> None:
    """Every file added, removed or changed, each tree read once (not kept in the cache):
    3,000 files of each kind take ~0.2 MB more Python memory than 300 (3 sorted runs of
    1,000 here); held in lists, they took 2 MB more."""

    import c3fs.jobs.diff as diff_module
    from c3fs.jobs.push import push_dir

    monkeypatch.setattr(diff_module, "SORT_RUN", 1000)  # 3,000 changes of a kind: 3 runs

    def peak(count: int) -> int:
        roots = []
        for side in "ab":
            src = tmp_path / f"{side}{count}"
            for n in range(count):
                folder = src / f"d{n // 100}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{side}{n}").write_bytes(b"%d" % n)
                (folder / f"same{n}").write_bytes(b"%s%d" % (side.encode(), n))
            roots.append(push_dir(repo, src, project="p", job_id=f"j{side}{count}").root_id)
        with traced_peak() as traced:
            report = diff_module.diff_trees(repo, *roots)
            seen = sum(1 for kind in (report.added, report.removed, report.changed)
                       for _ in kind)
        assert seen == 3 * count
        return traced.peak

    few, many = peak(300), peak(3_000)
    assert many - few < 600_000, (few, many)


# 5. job logs --------------------------------------------------------------------------------
LOUD = ("import sys\nfor i in range(3000):\n    print(f'out {i}')\n"
        "print('err line', file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n")


@pytest.mark.parametrize("code, status", [(0, "SUCCEEDED"), (3, "FAILED")])
def test_run_keeps_stdout_and_stderr_with_the_job(c3fs_bin, run_cli, store_env, tmp_path,
                                                   code, status) -> None:
    import sys

    work = tmp_path / "work"
    work.mkdir()
    (work / "loud.py").write_text(LOUD)
    res = c3fs_bin("run", "-p", "p", "-j", "loud", "--", sys.executable, "loud.py", str(code),
                   cwd=work)
    assert res.code == code, res.err
    assert "out 2999" in res.out and "err line" in res.err  # still shown live
    record = json.loads(run_cli(["ls", "--json", "/jobs/"]).out)["entries"][0]["record"]
    assert record["status"] == status and len(record["logs"]) == 64
    assert run_cli(["ls", "/jobs/loud"]).out == ""  # not among the artifacts
    full = c3fs_bin("logs", "loud")
    assert full.code == 0 and full.out == "".join(f"out {i}\n" for i in range(3000))
    assert full.err == "err line\n"
    tail = run_cli(["logs", "/projects/p/jobs/latest" if code == 0 else "loud", "--tail", "2",
                    "--stdout"])
    assert tail.code == 0 and tail.out == "out 2998\nout 2999\n" and tail.err == ""
    assert run_cli(["logs", "loud", "-n", "0"]).out == ""
    verify = run_cli(["verify", "loud"])
    assert verify.code == 0, verify.err
    # gc keeps the logs: they are still readable after it
    assert run_cli(["gc"]).code == 0
    assert c3fs_bin("logs", "loud", "--stderr").err == "err line\n"


def test_logs_of_a_pushed_job_and_of_a_timeout(c3fs_bin, run_cli, store_env, tmp_path) -> None:
    _push(run_cli, tmp_path, "pushed", {"f": b"x"})
    none = run_cli(["logs", "pushed"])
    assert none.code == 3 and "has no logs" in none.err
    assert run_cli(["logs", "nope"]).code == 3
    work = tmp_path / "work"
    work.mkdir()
    res = c3fs_bin("run", "-p", "p", "-j", "slow", "--timeout", "1", "--", "sh", "-c",
                   "echo started; sleep 30", cwd=work)
    assert res.code == 124
    assert c3fs_bin("logs", "slow").out == "started\n"


def test_logs_help_has_examples(run_cli) -> None:
    result = run_cli(["logs", "--help"])
    assert result.code == 0 and "Examples:" in result.out and "--tail" in result.out


@pytest.mark.logs("kept in")
def test_upload_error_keeps_the_logs_in_the_working_dir(run_cli, store_env, tmp_path,
                                                        monkeypatch) -> None:
    from c3fs.errors import StoreError
    from c3fs.jobs import run

    (tmp_path / "first").mkdir()
    assert run_cli(["push", str(tmp_path / "first"), "-p", "p", "-j", "first"]).code == 0  # a store

    def broken(*args, **kwargs):
        raise StoreError("injected: the store went away")

    monkeypatch.setattr(run, "collect", broken)
    work = tmp_path / "work"
    work.mkdir()
    res = run_cli(["run", "-p", "p", "-j", "up", "-C", str(work), "--", "sh", "-c",
                   "echo to-out; echo to-err >&2"])
    assert res.code == 74, res.err
    kept = work / "c3fs-logs" / "up"
    assert f"stdout and stderr are kept in {kept}" in res.err
    assert (kept / "stdout").read_bytes() == b"to-out\n"
    assert (kept / "stderr").read_bytes() == b"to-err\n"


# 6. rerun -----------------------------------------------------------------------------------
def test_rerun_runs_the_same_command_as_a_new_job(c3fs_bin, run_cli, store_env, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    first = c3fs_bin("run", "-p", "p", "-j", "one", "--json", "--", "sh", "-c",
                     "echo again >> $C3_ARTIFACTS_DIR/out; echo said", cwd=work)
    assert first.code == 0, first.err
    again = c3fs_bin("rerun", "one", "--json", cwd=work)
    assert again.code == 0, again.err
    record = json.loads(again.out)  # the command's "said" went to stderr
    assert record["id"] != "one" and record["project"] == "p"
    assert record["command"] == ["sh", "-c", "echo again >> $C3_ARTIFACTS_DIR/out; echo said"]
    assert c3fs_bin("logs", record["id"]).out == "said\n"
    assert run_cli(["rerun", "nope"]).code == 3
    _push(run_cli, tmp_path, "pushed", {"f": b"x"})
    refused = run_cli(["rerun", "pushed"])
    assert refused.code == 2 and "no command" in refused.err


def test_rerun_refuses_an_input_whose_root_changed(c3fs_bin, run_cli, store_env, tmp_path) -> None:
    from c3fs.objects.job import Input

    _push(run_cli, tmp_path, "a", {"f": b"a"})
    _push(run_cli, tmp_path, "b", {"f": b"b"})
    _push(run_cli, tmp_path, "c", {"f": b"c"})
    root_b = _root(run_cli, "b")  # c read "a" when a had b's content (since re-created)
    _store_record(store_env, "c", command=["touch", "ran"],
                  inputs=[Input("/projects/p/jobs/latest", root_b, "in", "/jobs/a")])
    work = tmp_path / "work"
    work.mkdir()
    res = c3fs_bin("rerun", "c", cwd=work)
    assert res.code == 8 and root_b in res.err and _root(run_cli, "a") in res.err, res.err
    assert not (work / "ran").exists()


def test_rerun_of_an_input_since_removed_names_the_recorded_input(c3fs_bin, run_cli, store_env,
                                                                  tmp_path) -> None:
    """rerun takes its inputs from the record, not from .c3: the error says so."""
    from c3fs.objects.job import Input

    _push(run_cli, tmp_path, "a", {"f": b"a"})
    _push(run_cli, tmp_path, "c", {"f": b"c"})
    _store_record(store_env, "c", command=["touch", "ran"],
                  inputs=[Input("/projects/p/jobs/latest", _root(run_cli, "a"), "in", "/jobs/a")])
    assert run_cli(["rm", "a"]).code == 0
    work = tmp_path / "work"
    work.mkdir()
    res = c3fs_bin("rerun", "c", cwd=work)
    line = res.one_line_error()
    assert res.code == 3 and "rerun of c: its recorded input /jobs/a -> in: " in line, line
    assert ".c3" not in line and not (work / "ran").exists()


@pytest.mark.fuse
def test_rerun_mounts_what_the_job_read_not_what_latest_is_now(c3fs_bin, run_cli, store_env,
                                                                 tmp_path) -> None:
    _push(run_cli, tmp_path, "v1", {"f": b"version 1"})
    work = tmp_path / "work"
    work.mkdir()
    (work / ".c3").write_text("datasets:\n  - ref: /projects/p/jobs/latest\n    mount: in\n")
    cmd = ("sh", "-c", "cat in/f > $C3_ARTIFACTS_DIR/seen")
    assert c3fs_bin("run", "-p", "q", "-j", "first", "--", *cmd, cwd=work).code == 0
    _push(run_cli, tmp_path, "v2", {"f": b"version 2"})
    _store_record(store_env, "v2", ended=9e9)  # latest is v2 now
    again = c3fs_bin("rerun", "first", "-j", "second", cwd=work)
    assert again.code == 0, again.err
    seen = tmp_path / "seen"
    assert run_cli(["cp", "/jobs/second/seen", str(seen)]).code == 0
    assert seen.read_bytes() == b"version 1"
    inputs = json.loads(run_cli(["ls", "--json", "/projects/q/jobs/"]).out)["entries"][-1]["record"]["inputs"]
    assert [(i["ref"], i["resolved"]) for i in inputs] == [("/jobs/v1", "/jobs/v1")]


@pytest.mark.parametrize("command", ["diff", "rerun", "mount"])
def test_help_has_examples(run_cli, command) -> None:
    result = run_cli([command, "--help"])
    assert result.code == 0 and "Examples:" in result.out
