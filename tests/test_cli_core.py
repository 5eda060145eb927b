"""Bad input through the real CLI: a one-line `c3fs: error: ...`, exit code != 0, no
traceback, and nothing lost or registered. Also crafted stores whose trees try to escape.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import msgspec
import pytest
import trees
from conftest import CliResult
from crafted import craft_job

from c3fs.errors import AlreadyExists
from c3fs.ingest import IngestStats
from c3fs.jobs.push import record_for, register
from c3fs.objects.job import JOB, JobRecord
from c3fs.objects.pack import CHUNK, TREE
from c3fs.objects.tree import DIR, FILE, LINK, TREE_VERSION, Entry, Tree, encode_tree
from c3fs.store.local import LocalBackend
from c3fs.store.store import Store, StoreConfig

BAD_IDS = ["../x", "a/b", "", "-x", "a" * 129, ".x", "_x", "a b", "é", "x\ny", "..", "/"]
NOBODY = 65534


def refs(store_env) -> list[str]:
    root = store_env.store / "refs"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def packs(store_env) -> list[str]:
    root = store_env.store / "packs"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def small_src(tmp_path: Path, name: str = "src", body: bytes = b"hello") -> Path:
    src = tmp_path / name
    (src / "sub").mkdir(parents=True)
    trees.write_file(src / "a.txt", body, 0o644, trees.BASE_NS)
    trees.write_file(src / "sub" / "b.txt", body * 2, 0o600, trees.BASE_NS + 1)
    return src


def push_ok(run_cli, src: Path, job: str, project: str = "proj") -> dict:
    result = run_cli(["push", str(src), "-p", project, "-j", job, "--json"])
    assert result.code == 0, result.err
    return json.loads(result.out)


# ---- ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize("job_id", BAD_IDS, ids=repr)
def test_invalid_job_id(run_cli, store_env, tmp_path: Path, job_id: str) -> None:
    result = run_cli(["push", str(small_src(tmp_path)), "-p", "proj", f"--job={job_id}"])
    line = result.assert_one_line_error()
    assert "invalid job id" in line
    assert result.code == 2
    assert refs(store_env) == [] and packs(store_env) == []


def test_a_job_cannot_be_named_latest(run_cli, store_env, tmp_path: Path) -> None:
    """/projects/<p>/jobs/latest is the link to the project's newest job: a job of that name
    made it a loop (ls: too many levels of links), then was hidden behind it."""
    src = small_src(tmp_path)
    for argv in (["push", str(src), "-p", "proj", "-j", "latest"],
                 ["run", "-p", "proj", "-j", "latest", "-C", str(tmp_path), "--", "true"]):
        line = run_cli(argv).assert_one_line_error()
        assert "invalid job id 'latest'" in line, line
    assert refs(store_env) == []
    run_cli(["push", str(src), "-p", "proj", "-j", "latest1"]).ok()
    assert run_cli(["ls", "/projects/proj/jobs/latest"]).code == 0


def test_a_link_that_cannot_be_read_is_one_line(run_cli, store_env, tmp_path: Path,
                                                monkeypatch) -> None:
    """As /proc/<pid>/cwd to root: readlink denied. One line naming it, not a traceback."""
    src = small_src(tmp_path)
    os.symlink("elsewhere", src / "ln")
    real = os.readlink

    def denied(path, *args, **kwargs):
        if os.fsencode(path) == b"ln":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", denied)
    result = run_cli(["push", str(src), "-p", "proj", "-j", "j1"])
    line = result.assert_one_line_error()
    assert result.code == 4 and "ln: cannot read the link: Permission denied" in line, line
    assert refs(store_env) == []


def test_a_push_of_a_directory_holding_the_store_is_refused(run_cli, store_env,
                                                              tmp_path: Path) -> None:
    """`c3fs push /` or `push ~` with the store inside: refused before anything is stored."""
    run_cli(["push", str(small_src(tmp_path)), "-p", "proj", "-j", "j0"]).ok()  # (the store)
    for top in (tmp_path, store_env.store):
        line = run_cli(["push", str(top), "-p", "proj", "-j", "j1"]).assert_one_line_error()
        assert f"the store {store_env.store} is inside {top}" in line, line
    assert refs(store_env) == ["jobs/j0"]


@pytest.mark.parametrize("project", BAD_IDS, ids=repr)
def test_invalid_project_id(run_cli, store_env, tmp_path: Path, project: str) -> None:
    result = run_cli(["push", str(small_src(tmp_path)), f"--project={project}", "-j", "ok"])
    line = result.assert_one_line_error()
    assert "invalid project" in line
    assert refs(store_env) == [] and packs(store_env) == []


def test_job_id_that_already_exists(run_cli, store_env, tmp_path: Path) -> None:
    original = push_ok(run_cli, small_src(tmp_path, "one", b"first"), "job_1")
    before = packs(store_env)
    result = run_cli(["push", str(small_src(tmp_path, "two", b"second")), "-p", "other",
                      "-j", "job_1"])
    line = result.assert_one_line_error()
    assert "already exists" in line and result.code == 4
    assert refs(store_env) == ["jobs/job_1"] and packs(store_env) == before
    listed = json.loads(run_cli(["ls", "--json", "/jobs/"]).out)["entries"]
    assert [item["record"] for item in listed] == [original]
    assert run_cli(["cp", "-r", "/jobs/job_1", str(tmp_path / "back")]).code == 0
    assert (tmp_path / "back" / "a.txt").read_bytes() == b"first"


def test_register_race_loses_nothing(repo, tmp_path: Path) -> None:
    """Two pushes that both passed the early check: the second `register` is refused."""
    record = record_for(JOB, "job_1", "proj", b"\1" * 32, IngestStats(), 0.0)
    register(repo, record)
    with pytest.raises(AlreadyExists):
        register(repo, msgspec.structs.replace(record, root="22" * 32))
    assert repo.store.get_ref(JOB, "job_1") == record
    assert repo.index.record(JOB, "job_1") == record


# ---- sources --------------------------------------------------------------------------------
def test_missing_source_dir(run_cli, store_env, tmp_path: Path) -> None:
    result = run_cli(["push", str(tmp_path / "nope"), "-p", "proj", "-j", "j"])
    line = result.assert_one_line_error()
    assert "no such directory" in line
    assert refs(store_env) == []


def test_source_is_a_file(run_cli, store_env, tmp_path: Path) -> None:
    trees.write_file(tmp_path / "file", b"x")
    result = run_cli(["push", str(tmp_path / "file"), "-p", "proj", "-j", "j"])
    assert "is not a directory" in result.assert_one_line_error()
    assert result.code == 3  # no such directory
    assert refs(store_env) == []


def test_a_source_path_that_is_not_utf8_is_named_as_xnn(c3fs_bin, store_env,
                                                        tmp_path: Path) -> None:
    """The error line shows the byte 0xff of a local path as \\xff, as c3fs shows such a byte
    in every other message and in --json, not as Python's surrogate escape \\udcff."""
    missing = os.fsencode(tmp_path) + b"/out\xff"
    result = c3fs_bin("push", missing, "-p", "proj", "-j", "j1")
    assert result.assert_one_line_error() == f"c3fs: error: {tmp_path}/out\\xff: no such directory"
    assert result.code == 3


@pytest.fixture
def nobody_dirs(monkeypatch: pytest.MonkeyPatch):
    """A world-traversable work dir, with store and cache owned by `nobody` (we run as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run c3fs as another user")
    base = Path(tempfile.mkdtemp(prefix="c3fs-nobody-", dir="/tmp"))
    base.chmod(0o755)
    for name in ("store", "cache"):
        (base / name).mkdir()
        os.chown(base / name, NOBODY, NOBODY)
    monkeypatch.setenv("C3FS_STORE", str(base / "store"))
    monkeypatch.setenv("C3FS_CACHE_DIR", str(base / "cache"))
    yield base
    for dirpath, dirnames, _ in os.walk(base):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(base)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    """Run argv as uid/gid `nobody` with no supplementary groups and no capabilities."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root privileges")
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*drop, *argv], capture_output=True, text=True, errors="replace",
                          env=dict(os.environ), timeout=120)


def c3fs_as_nobody(*args: str):
    proc = as_nobody(str(Path(sys.executable).parent / "c3fs"), *args)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("what", ["file", "large file", "dir"])
def test_unreadable_source(nobody_dirs: Path, what: str) -> None:
    """Root reads everything, so the push runs as `nobody` over a root-owned mode-000 entry
    (a large file: read by a file task, cut into chunks). Refused is not gone: the push
    stops, where a file removed since it was listed is left out."""
    src = nobody_dirs / "src"
    (src / "deep").mkdir(parents=True)
    trees.write_file(src / "readable.txt", b"fine")
    trees.write_file(src / "deep" / "also-fine", trees.rand_bytes(200_000, 1))
    if what != "dir":
        trees.write_file(src / "deep" / "secret", b"top secret" if what == "file"
                         else trees.rand_bytes(300_000, 2), 0o000)
    else:
        (src / "deep" / "locked").mkdir(mode=0o000)
    for path in (src, src / "deep"):
        path.chmod(0o755)
    blocked = src / "deep" / ("locked" if what == "dir" else "secret")
    probe = as_nobody(sys.executable, "-c", f"import os; os.listdir({str(src)!r}); "
                      f"open({str(blocked)!r}) if {what != 'dir'} else os.listdir({str(blocked)!r})")
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"cannot make {blocked} unreadable here: {probe.stderr.strip()[-200:]}")
    result = c3fs_as_nobody("push", str(src), "-p", "proj", "-j", "j1")
    line = result.assert_one_line_error()
    assert line == f"c3fs: error: {blocked}: " + (
        "cannot read: Permission denied" if what != "dir"
        else "cannot open directory: Permission denied")
    assert result.code == 4  # a source that refused the read; 3 is "not found"
    assert not (nobody_dirs / "store" / "refs" / "jobs" / "j1").exists()
    uploaded = c3fs_as_nobody("cp", "-r", str(src), "/datasets/d1", "--project", "proj")
    assert uploaded.assert_one_line_error() == line and uploaded.code == 4
    listed = c3fs_as_nobody("ls", "/jobs/")
    assert listed.code == 0 and listed.out == "", listed.err


def test_a_destination_that_refuses_the_write_is_refused_too(nobody_dirs: Path) -> None:
    """The other side of an unreadable source: cp, cp -r and pull into a directory nobody
    may not write (root's, 0755) are one line naming it, exit 4, as a source that refused
    the read is."""
    src = nobody_dirs / "src"
    src.mkdir()
    trees.write_file(src / "a.txt", b"fine")
    assert c3fs_as_nobody("push", str(src), "-p", "proj", "-j", "j1").code == 0
    dest = nobody_dirs / "dest"
    dest.mkdir(mode=0o755)
    for args, where in ((["cp", "/jobs/j1/a.txt", str(dest / "a.txt")], dest / "a.txt"),
                        (["cp", "-r", "/jobs/j1", str(dest / "x")], dest / "x"),
                        (["pull", "j1", "-d", str(dest)], dest / "j1")):
        result = c3fs_as_nobody(*args)
        line = result.assert_one_line_error()
        assert line.startswith(f"c3fs: error: {where}: ") and "Permission denied" in line
        assert result.code == 4, args
    assert os.listdir(dest) == []


@pytest.mark.parametrize("what", ["mode 000", "directory"])
def test_a_job_config_that_cannot_be_read_is_one_line(nobody_dirs: Path, what: str) -> None:
    """A .c3 that refuses the read (root-owned mode 000, read by nobody) or is a directory:
    one line naming it, exit 2 as for a c3fs config file that cannot be read; nothing runs.
    (It was a traceback.)"""
    work = nobody_dirs / "work"
    work.mkdir(mode=0o777)
    config = work / ".c3"
    if what == "directory":
        config.mkdir()
    else:
        trees.write_file(config, b"project: vision\n", 0o000)
    result = c3fs_as_nobody("run", "-C", str(work), "--", "touch", str(work / "ran"))
    assert result.assert_one_line_error() == f"c3fs: error: {config}: cannot read the job " \
        f"config: {'Permission denied' if what == 'mode 000' else 'Is a directory'}"
    assert result.code == 2 and not (work / "ran").exists()


# ---- cp destinations ---------------------------------------------------------------------
def test_cp_of_a_dir_without_r(run_cli, tmp_path: Path) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    for src in ("/jobs/j1", "/jobs/j1/sub", "/projects/proj/jobs/j1"):  # j1/: a dir's copy
        result = run_cli(["cp", src, str(tmp_path / "dst")])
        line = result.assert_one_line_error()
        assert "cp -r" in line
    assert not (tmp_path / "dst").exists()


def test_cp_where_a_file_is_in_the_way(run_cli, tmp_path: Path) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    trees.write_file(tmp_path / "is-a-file", b"keep me")
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "is-a-file")])
    assert "not a directory" in result.assert_one_line_error()
    assert (tmp_path / "is-a-file").read_bytes() == b"keep me"

    (tmp_path / "dst").mkdir()
    trees.write_file(tmp_path / "dst" / "sub", b"keep me too")
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "dst")])
    assert "not a directory" in result.assert_one_line_error()
    assert (tmp_path / "dst" / "sub").read_bytes() == b"keep me too"

    (tmp_path / "dst2" / "a.txt").mkdir(parents=True)  # a directory where a file belongs
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "dst2")])
    assert "is a directory" in result.assert_one_line_error()
    assert os.listdir(tmp_path / "dst2" / "a.txt") == []

    result = run_cli(["cp", "/jobs/j1/a.txt", str(tmp_path / "no" / "such" / "dir" / "x")])
    assert "no such directory" in result.assert_one_line_error()


def test_cp_never_writes_through_a_symlinked_dir(run_cli, tmp_path: Path) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "dst").mkdir()
    os.symlink(outside, tmp_path / "dst" / "sub")
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "dst")])
    assert "not a directory" in result.assert_one_line_error()
    assert os.listdir(outside) == []
    assert os.readlink(tmp_path / "dst" / "sub") == str(outside)


def test_cp_replaces_a_symlink_where_a_file_belongs(run_cli, tmp_path: Path) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    trees.write_file(tmp_path / "precious", b"do not overwrite")
    (tmp_path / "dst").mkdir()
    os.symlink(tmp_path / "precious", tmp_path / "dst" / "a.txt")
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "dst")])
    assert result.code == 0, result.err
    assert (tmp_path / "precious").read_bytes() == b"do not overwrite"
    assert not os.path.islink(tmp_path / "dst" / "a.txt")
    assert (tmp_path / "dst" / "a.txt").read_bytes() == b"hello"


@pytest.mark.logs("is corrupt")
def test_cp_leaves_no_temp_files_on_corrupt_data(run_cli, store_env, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    trees.write_file(src / "model.bin", trees.rand_bytes(600_000, 4))
    push_ok(run_cli, src, "j1")
    (pack,) = [p for p in (store_env.store / "packs").rglob("*") if p.is_file()]
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x55
    pack.write_bytes(bytes(data))
    (tmp_path / "dst").mkdir()
    result = run_cli(["cp", "-r", "/jobs/j1", str(tmp_path / "dst")])
    first, summary = error_lines(result)  # the damaged file, then what was (not) copied
    assert "model.bin" in first and "corrupt" in first and pack.name in first
    assert "1 damaged file not copied" in summary
    assert result.code == 6
    assert os.listdir(tmp_path / "dst") == []  # no half-written file, no temp file


def error_lines(result) -> list[str]:
    """The `c3fs: error:` lines of a failed command that printed nothing else."""
    assert result.code != 0 and "Traceback" not in result.err, result.err
    assert all(line.startswith("c3fs: error: ") for line in result.err_lines), result.err
    return result.err_lines


# ---- crafted trees that try to escape ------------------------------------------------------
def raw_tree(entries: list[Entry]) -> bytes:
    """Encode a tree without encode_tree's checks, as an attacker would."""
    return msgspec.msgpack.encode(Tree(TREE_VERSION, entries))


def evil_entries(add, name: bytes, kind: int) -> list[Entry]:
    payload = b"pwned"
    chunk = add(CHUNK, payload)
    if kind == FILE:
        return [Entry(name, FILE, 0o644, len(payload), 0, chunks=chunk, sizes=[len(payload)])]
    if kind == LINK:
        return [Entry(name, LINK, 0o777, 0, 0, target=b"/etc/passwd")]
    inner = add(TREE, encode_tree([Entry(b"evil", FILE, 0o644, len(payload), 0, chunks=chunk,
                                         sizes=[len(payload)])]))
    return [Entry(name, DIR, 0o755, 0, 0, target=inner)]


ESCAPES = [(b"..", DIR), (b"..", FILE), (b"..", LINK), (b".", DIR), (b"../evil", FILE),
           (b"../../evil", FILE), (b"/tmp/evil", FILE), (b"a/../../evil", DIR), (b"", FILE),
           (b"evil\0x", FILE)]


@pytest.mark.logs("unsafe name in tree")
@pytest.mark.parametrize("nested", [False, True], ids=["at-root", "in-subdir"])
@pytest.mark.parametrize(("name", "kind"), ESCAPES, ids=lambda v: repr(v))
def test_cp_of_a_crafted_escaping_tree_is_refused(run_cli, store_env, tmp_path: Path,
                                                  name: bytes, kind: int, nested: bool) -> None:
    def build(add) -> bytes:
        entries = [*evil_entries(add, name, kind),
                   Entry(b"zz-fine", FILE, 0o644, 0, 0)]
        tree_id = add(TREE, raw_tree(entries))
        if nested:
            tree_id = add(TREE, encode_tree([Entry(b"ok", DIR, 0o755, 0, 0, target=tree_id)]))
        return tree_id

    craft_job(store_env.store, "evil", build)
    box = tmp_path / "box"
    (box / "deeper").mkdir(parents=True)
    dst = box / "deeper" / "dst"
    result = run_cli(["cp", "-r", "/jobs/evil", str(dst)])
    lines = error_lines(result)  # nested: the unreadable dir, then the summary
    assert len(lines) == (2 if nested else 1) and "unsafe name" in lines[0], lines
    assert result.code == 6
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                     if not str(p).startswith(str(store_env.root / "store"))
                     and not str(p).startswith(str(store_env.root / "cache")))
    allowed = {"box", "box/deeper", "box/deeper/dst", "box/deeper/dst/ok", "store", "cache"}
    assert set(written) <= allowed, written
    assert not Path("/tmp/evil").exists()
    ls = run_cli(["ls", "/jobs/evil/ok" if nested else "/jobs/evil"])
    assert "unsafe name" in ls.assert_one_line_error()


def test_crafted_tree_with_unsorted_names_is_refused(run_cli, store_env, tmp_path: Path) -> None:
    def build(add) -> bytes:
        chunk = add(CHUNK, b"x")
        files = [Entry(n, FILE, 0o644, 1, 0, chunks=chunk, sizes=[1]) for n in (b"b", b"a")]
        return add(TREE, raw_tree(files))

    craft_job(store_env.store, "unsorted", build)
    result = run_cli(["cp", "-r", "/jobs/unsorted", str(tmp_path / "dst")])
    assert "out of order" in result.assert_one_line_error()


# ---- ls and stores -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/j1/nope", "/nope", "/projects/nope/jobs/",
                                  "/projects/proj/jobs/nope", "/jobs/j1/a.txt/child",
                                  "/jobs/j1/../j1", "/projects/other/jobs/j1"])
def test_ls_of_a_missing_path(run_cli, tmp_path: Path, path: str) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    result = run_cli(["ls", path])
    result.assert_one_line_error()
    assert result.code == 3


@pytest.mark.parametrize(("path", "said"), [("/jobs/*/", "no job '*'"),
                                            ("/jobs/a b", "no job 'a b'"),
                                            ("/projects/proj/jobs/a b", "no job 'a b'"),
                                            ("/datasets/x\ny", "no dataset 'x\\ny'"),
                                            ("/jobs/nope", "no job 'nope'")])
def test_a_name_that_is_no_id_is_named_as_a_missing_one_is(run_cli, tmp_path: Path, path: str,
                                                            said: str) -> None:
    push_ok(run_cli, small_src(tmp_path), "j1")
    result = run_cli(["ls", path])
    assert result.assert_one_line_error() == f"c3fs: error: {said}"  # no b'...' (bytes repr)
    assert result.code == 3


def write_config(store_dir: Path, **changes) -> bytes:
    config = msgspec.to_builtins(StoreConfig(store_id="s1", created=1.0))
    config.update(changes)
    raw = json.dumps(config).encode()
    LocalBackend(store_dir).put("config", raw)
    return raw


@pytest.mark.parametrize("argv", [["ls", "/"], ["ls", "/jobs/"], ["index", "rebuild"],
                                  ["cp", "-r", "/jobs/x", "{tmp}/out"], ["push", "{tmp}", "-p", "p"]])
def test_store_of_another_format_version(run_cli, store_env, argv: list[str]) -> None:
    raw = write_config(store_env.store, version=2)
    (store_env.root / "src").mkdir()
    result = run_cli([arg.replace("{tmp}", str(store_env.root / "src")) for arg in argv])
    line = result.assert_one_line_error()
    assert "format version 2" in line and "reads version 1" in line
    assert result.code == 5
    assert (store_env.store / "config").read_bytes() == raw
    assert refs(store_env) == [] and packs(store_env) == []


def test_store_of_another_version_through_the_installed_command(c3fs_bin, store_env) -> None:
    write_config(store_env.store, version=7)
    result = c3fs_bin("ls", "/jobs/")
    assert "format version 7" in result.assert_one_line_error()


def test_damaged_config_and_store_path_that_is_a_file(run_cli, store_env, tmp_path) -> None:
    store_env.store.mkdir()
    (store_env.store / "config").write_bytes(b"\x00garbage")
    assert "damaged" in run_cli(["ls", "/"]).assert_one_line_error()
    trees.write_file(tmp_path / "a-file", b"x")
    src = small_src(tmp_path)
    for argv in (["ls", "/"], ["push", str(src), "-p", "p"]):  # the same error, both
        line = run_cli(["--store", str(tmp_path / "a-file"), *argv]).assert_one_line_error()
        assert "a-file is not a directory" in line and "creates it" not in line, line
    assert (tmp_path / "a-file").read_bytes() == b"x"


def test_a_mistyped_store_is_an_error_not_a_new_store(run_cli, store_env, tmp_path) -> None:
    """Reading commands never create a store at an explicit --store / C3FS_STORE (a typo
    would look like an empty store); writing ones do, but never in someone's folder."""
    typo = tmp_path / "typo"
    for argv in (["ls", "/jobs/"], ["balance"], ["verify"], ["pull"], ["gc"]):
        line = run_cli(["--store", str(typo), *argv]).assert_one_line_error()
        assert f"no c3fs store at {typo}" in line, line
    assert not typo.exists()
    folder = tmp_path / "my-files"
    folder.mkdir()
    trees.write_file(folder / "notes.txt", b"mine")
    src = small_src(tmp_path)
    result = run_cli(["--store", str(folder), "push", str(src), "-p", "proj"])
    assert "not a c3fs store, and not empty" in result.assert_one_line_error()
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    new = tmp_path / "new-store"
    assert run_cli(["--store", str(new), "push", str(src), "-p", "p"]).code == 0
    assert run_cli(["--store", str(new), "ls", "/jobs/"]).out.strip()


def test_the_default_store_is_created_by_any_command(run_cli, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("C3FS_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    result = run_cli(["ls", "/jobs/"])
    assert result.code == 0 and result.out == "", result.err
    assert (tmp_path / "data" / "c3fs" / "store" / "config").exists()


def test_cp_from_a_local_path_is_a_usage_error(run_cli, tmp_path: Path) -> None:
    result = run_cli(["cp", str(tmp_path), str(tmp_path / "x")])
    assert "not a c3fs path" in result.assert_one_line_error()


def test_errors_through_the_installed_command(c3fs_bin, store_env, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    for argv in (["push", str(tmp_path), "-p", "proj", "--job=../x"],
                 ["push", str(tmp_path / "missing"), "-p", "proj"],
                 ["push", str(tmp_path / "a-file" / "x"), "-p", "proj"],  # a file on the way
                 ["ls", "/jobs/nope"], ["cp", "-r", "/jobs/nope", str(tmp_path / "d")]):
        result = c3fs_bin(*argv)
        result.assert_one_line_error()
    assert refs(store_env) == []


def test_help_works_for_every_command(run_cli) -> None:
    for argv in (["--help"], ["push", "--help"], ["ls", "--help"], ["cp", "--help"],
                 ["index", "rebuild", "--help"]):
        result = run_cli(argv)
        assert result.code == 0 and "Usage:" in result.out, result.err


def test_push_prints_the_job_id_and_a_summary(run_cli, tmp_path: Path) -> None:
    result = run_cli(["push", str(small_src(tmp_path)), "-p", "proj"])
    assert result.code == 0, result.err
    job_id = result.out.strip()
    assert job_id.startswith("job_") and len(result.out.splitlines()) == 1
    assert "2 files" in result.err and "newly stored" in result.err
    assert stat.S_ISDIR(os.stat(tmp_path / "src").st_mode)
    assert run_cli(["ls", "/jobs/"]).out.split() == [job_id + "/"]


@pytest.mark.parametrize("dst", ["/jobs/c3fs-test-copy", "/projects/p/datasets/c3fs-test"])
def test_cp_from_the_store_to_a_store_path_is_refused(c3fs_bin, store_env, tmp_path: Path,
                                                      dst: str) -> None:
    """It used to write a local /jobs/... (or /projects/...) at this machine's root."""
    job = c3fs_bin("push", str(small_src(tmp_path)), "-p", "proj").ok().out.strip()
    top = Path("/" + dst.split("/")[1])
    existed = top.exists()
    try:
        line = c3fs_bin("cp", "-r", f"/jobs/{job}/", dst).assert_one_line_error()
        assert "immutable" in line and f".{dst}" in line, line
        assert not Path(dst).exists()
    finally:
        if not existed:
            shutil.rmtree(top, ignore_errors=True)


def test_ls_l_into_a_pipe_keeps_one_row_per_job(c3fs_bin, store_env, tmp_path: Path) -> None:
    """A pipe gets COLUMNS=80 or nothing: the table is not folded, so ids can be grepped."""
    src = small_src(tmp_path)
    ids = [c3fs_bin("push", str(src), "-p", "a-rather-long-project-name").ok().out.strip()
           for _ in range(2)]
    failed = c3fs_bin("run", "-p", "a-rather-long-project-name", "--", "false")
    assert failed.code != 0
    rows = c3fs_bin("ls", "-l", "/jobs/").ok().out.splitlines()
    assert len(rows) == 4 and all(len(row) > 80 for row in rows[1:]), rows
    assert [row.split()[0] for row in rows[1:3]] == ids
    assert "(SCRIPT_ERROR)" in rows[3]


def test_ls_chooses_jobs_by_project_status_age_and_count(run_cli, store_env, tmp_path: Path) -> None:
    import time

    from c3fs.objects import job as jobfmt

    root = push_ok(run_cli, small_src(tmp_path), "j0", project="vision")["root"]
    now = time.time()
    for n, (project, status, age_days) in enumerate([("vision", "FAILED", 10), ("nlp", "SUCCEEDED", 3),
                                                     ("nlp", "FAILED", 1), ("vision", "TIMEOUT", 0)], 1):
        Store.open(LocalBackend(store_env.store)).create_ref(JobRecord(
            id=f"j{n}", project=project, status=status, root=root, created=now - age_days * 86400))

    def names(*argv: str) -> list[str]:
        result = run_cli(["ls", *argv])
        assert result.code == 0, result.err
        return [line.rstrip("/") for line in result.out.split()]

    assert names("/jobs/", "--project", "nlp") == ["j2", "j3"]
    assert names("/jobs/", "--status", "failed") == ["j1", "j3"]
    assert names("/jobs/", "--since", "2d") == ["j0", "j3", "j4"]
    assert names("/jobs/", "--since", time.strftime("%Y-%m-%d", time.localtime(now - 5 * 86400))) \
        == ["j0", "j2", "j3", "j4"]
    assert names("/jobs/", "--limit", "2") == ["j0", "j4"]  # the 2 most recent, oldest first
    assert names("/projects/vision/jobs/", "--status", "timeout") == ["j4"]
    long = run_cli(["ls", "-l", "/jobs/", "--project", "nlp"]).out.splitlines()
    assert [row.split()[0] for row in long] == ["ID", "j2", "j3"]
    assert [r["name"] for r in json.loads(run_cli(["ls", "--json", "/jobs/", "--limit", "1"]).out)["entries"]] \
        == ["j4"]
    for argv in (["/jobs/j0", "--limit", "1"], ["/", "--project", "x"], ["/jobs/", "--since", "2x"]):
        run_cli(["ls", *argv]).assert_one_line_error()
    assert set(jobfmt.STATUSES) == {"SUCCEEDED", "FAILED", "TIMEOUT", "CANCELED"}  # cli's copy


def test_ls_limit_reads_only_the_newest_records(run_cli, store_env, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`--limit N` walks the index's order of creation: N records decoded, not all."""
    import c3fs.index as indexmod

    root = push_ok(run_cli, small_src(tmp_path), "seed")["root"]
    store = Store.open(LocalBackend(store_env.store))
    for n in range(300):
        store.create_ref(JobRecord(id=f"job{n:03d}", project=f"p{n % 3}", root=root,
                                   created=1_000_000.0 + n))
    run_cli(["ls", "/jobs/"]).ok()  # the index learns them
    decoded = []
    real = indexmod.decode_record
    monkeypatch.setattr(indexmod, "decode_record", lambda raw: decoded.append(1) or real(raw))
    out = run_cli(["ls", "/jobs/", "--limit", "3", "--project", "p1"]).ok().out.split()
    assert out == ["job292/", "job295/", "job298/"]  # p1's newest three, oldest first
    assert len(decoded) <= 10, len(decoded)  # the seed's and p1's newest, a p0 and p2 between
    import c3fs.vfs as vfsmod

    made = []  # `ls -l` of a /jobs/-like directory prints records: no node for each
    real_root = vfsmod.Vfs.ref_root
    monkeypatch.setattr(vfsmod.Vfs, "ref_root", lambda self, r: made.append(1) or real_root(self, r))
    rows = run_cli(["ls", "-l", "/projects/p1/jobs/"]).ok().out.splitlines()
    assert [row.split()[0] for row in rows] == ["ID", *(f"job{n:03d}" for n in range(1, 300, 3)),
                                                "latest"], rows
    assert rows[-1].split()[:3] == ["latest", "->", "job298"], rows[-1]
    rows = run_cli(["ls", "-l", "/jobs/", "--project", "p2", "--status", "succeeded"]).ok().out
    assert [row.split()[0] for row in rows.splitlines()] == ["ID", *(f"job{n:03d}" for n in range(2, 300, 3))]
    assert made == [], len(made)


def test_ls_of_jobs_streams_its_records(run_cli, store_env, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`ls`, `ls -l` and `ls --json` of a /jobs/-like directory read its records a batch at a
    time and hold no more rows than a small spill: listing 1,600 jobs takes the Python
    memory that listing 200 does (held, they were ~1.3 KB a record). The batches' seams do
    not show in what is printed."""
    import contextlib
    import tracemalloc

    from c3fs_cli import output
    from c3fs_cli.main import main

    import c3fs.repo as repomod

    monkeypatch.setattr(repomod, "RECORD_BATCH", 50)
    monkeypatch.setattr(output, "SPILL", 16 * 1024)
    monkeypatch.setattr(output, "ROWS", 64)
    monkeypatch.setattr(output, "JSON_BATCH", 16)
    root = push_ok(run_cli, small_src(tmp_path), "seed", project="p0")["root"]
    store = Store.open(LocalBackend(store_env.store))
    listings = (["ls", "/jobs/"], ["ls", "-l", "/jobs/"], ["ls", "--json", "/jobs/"],
                ["ls", "-l", "/projects/p1/jobs/"], ["ls", "/jobs/", "--status", "succeeded"])

    made = 0

    def peaks(jobs: int) -> list[int]:
        nonlocal made
        for n in range(made, jobs):
            store.create_ref(JobRecord(id=f"job{n:04d}", project=f"p{n % 3}", root=root,
                                       created=2_000_000.0 - n))  # the newest has the lowest id
        made = jobs
        run_cli(["ls", "/jobs/"]).ok()  # the index learns them (each new one: the sync's cost)
        found = []
        refresh = repomod.Repo.refresh  # (measured apart: the listing, not the sync)
        monkeypatch.setattr(repomod.Repo, "refresh", lambda self, force=False, full=False: None)
        for argv in listings:
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
                tracemalloc.start()
                with contextlib.suppress(SystemExit):
                    main(list(argv))
                found.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
        monkeypatch.setattr(repomod.Repo, "refresh", refresh)
        return found

    few, many = peaks(200), peaks(1_600)
    grown = [m - f for f, m in zip(few, many, strict=True)]
    assert max(grown) < 400_000, list(zip(listings, few, many, strict=True))

    rows = run_cli(["ls", "-l", "/jobs/"]).ok().out.splitlines()  # the oldest first
    assert [row.split()[0] for row in rows[1:]] == [f"job{n:04d}" for n in range(1_599, -1, -1)] + ["seed"]
    assert {row[7:10] for row in rows[1:]} == {"  p"}  # one width: the seed's row too
    rows = run_cli(["ls", "-l", "/jobs/", "--since", "1970-01-24T03:16:40+00:00"]).ok().out
    assert [row.split()[0] for row in rows.splitlines()[1:]] == [  # created 1,999,000 on
        f"job{n:04d}" for n in range(1_000, -1, -1)] + ["seed"]
    listed = json.loads(run_cli(["ls", "--json", "/jobs/"]).ok().out)["entries"]
    assert [e["name"] for e in listed] == [f"job{n:04d}" for n in range(1_600)] + ["seed"]
    assert listed[7]["record"]["project"] == "p1"
    rows = run_cli(["ls", "/projects/p1/jobs/"]).ok().out.split()
    assert rows == [f"job{n:04d}/" for n in range(1, 1_600, 3)] + ["latest"]


def test_ls_escapes_names_in_long_and_plain_listings(run_cli, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a\x1b[2Jb").write_bytes(b"x")
    push_ok(run_cli, src, "j1")
    for argv in (["ls", "/jobs/j1"], ["ls", "-l", "/jobs/j1"]):
        out = run_cli(argv).out
        assert "\x1b" not in out and "a\\033[2Jb" in out


HEAVY = {"rich", "trio", "pyfuse3", "obstore", "zstandard", "lmdb", "msgspec", "yaml", "blake3"}
PRINT_IMPORTED = """
import sys
from c3fs_cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("imported:", *sorted({name.split(".")[0] for name in sys.modules}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["mount", "--help"], ["push", "--help"],
                                  ["run", "--help"], ["index", "rebuild", "--help"]])
def test_help_imports_none_of_the_heavy_modules(argv: list[str], tmp_path: Path) -> None:
    """The commands import the library where they use it, so `c3fs --help` and the start of
    `c3fs mount` (timed to the first byte) stay quick: no trio, rich, obstore, ... Twice: on
    a machine where c3fs never ran (the run records its read-ahead list, `c3fs.preload`) and
    once the list exists."""
    env = dict(os.environ, C3FS_CACHE_DIR=str(tmp_path / "cache"))
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", PRINT_IMPORTED, *argv], capture_output=True,
                              text=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "Usage: c3fs" in proc.stdout
        imported = set(proc.stdout.splitlines()[-1].split()[1:])
        assert not imported & HEAVY


def test_usage_errors_are_one_line_naming_the_help(run_cli) -> None:
    """click's usage errors ("Usage: ...", "Try ...", "Error: ...") are one line, as every
    other c3fs error, with the command whose --help says more; exit 2."""
    for argv, said, help_of in (
            (["push", ".", "--dataset", "x"], "no such option '--dataset'", "c3fs push"),
            (["ls", "/jobs/", "--limit", "0"], "invalid value for '--limit'", "c3fs ls"),
            (["rm"], "missing argument 'JOBS...'", "c3fs rm"),
            (["nosuchcmd"], "no such command 'nosuchcmd'", "c3fs")):
        result = run_cli(argv)
        line = result.assert_one_line_error()
        assert result.code == 2 and said in line and line.endswith(f"({help_of} --help)"), line
