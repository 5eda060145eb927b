"""A store is untrusted input (issue 19): crafted refs, trees, records and names.

Each test writes what an attacker with write access to a store could (a ref file under
another name, a tree whose sizes lie, a setuid bit, shared subtrees, deep trees, odd files
under refs/jobs/, out-of-range record fields, escape sequences in names) and checks what
the user sees: the genuine data or a typed one-line error (exit 6 for damage), never a
traceback, wrong bytes or a write outside the destination; `verify` names each of them.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from c3fs.errors import FormatError
from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.job import JobRecord, decode_record, encode_record
from c3fs.objects.pack import CHUNK
from c3fs.objects.tree import DIR, FILE, LINK, Entry
from reliability.relkit import BIN, MiB, Site, daemon_of, mounted, run_peak_rss
from reliability.test_rel_hostile import craft_job, file_entry, put_pack, raw_tree


@pytest.fixture
def site(site: Site) -> Site:
    """Refs here are written around c3fs (no change log entry): every command lists every
    ref, as the periodic full listing does (what these tests check is what it then does)."""
    site.env_extra["C3FS_FULL_SYNC_EVERY"] = "0"
    return site


def put_ref(site: Site, key: str, data: bytes) -> None:
    """Write any bytes at any key of a local store (what an attacker with write access can)."""
    path = site.root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def record_bytes(job: str, root: bytes, **fields) -> bytes:
    return encode_record(JobRecord(id=job, project="rel", created=time.time(), root=root.hex(),
                                   **fields))


def no_traceback(*results) -> None:
    for result in results:
        assert "Traceback" not in result.err, result.err


# 1. a ref is checked against the id and kind inside it ---------------------------------------
def test_a_ref_cannot_impersonate_another_job(tmp_path: Path, site: Site) -> None:
    genuine, forged = b"genuine bytes\n", b"attacker bytes\n"
    craft_job(site, "base", [raw_tree([file_entry(b"f", genuine)])], [genuine])
    evil_root = raw_tree([file_entry(b"f", forged)])
    craft_job(site, "decoy", [evil_root], [forged])
    put_ref(site, "refs/jobs/zzz", record_bytes("base", blob_id(evil_root)))
    put_ref(site, "refs/datasets/base", record_bytes("base", blob_id(evil_root)))  # kind job
    for rebuild in (False, True):
        if rebuild:
            site.run("index", "rebuild").ok()
        copied = site.run("cp", "/jobs/base/f", tmp_path / f"f{rebuild}")
        no_traceback(copied)
        assert (tmp_path / f"f{rebuild}").read_bytes() == genuine
        listed = site.run("ls", "/jobs/")
        assert listed.code == 0 and listed.out.split() == ["base/", "decoy/"], listed
        assert "zzz" in listed.err  # named in a warning
        assert site.run("ls", "/datasets/").out.split() == []
    code, report = site.verify()
    assert code == 6
    refs = {where for p in report["problems"] if p["kind"] == "ref" for where in p["broken"]}
    assert refs == {"job zzz", "dataset base"}
    site.run("rm", "base").ok()
    assert site.jobs() == ["decoy"]


# 6. an odd file under refs/jobs/ is skipped with one warning, never hiding the other refs -----
ODD_REFS = ["refs/jobs/.DS_Store", "refs/jobs/bad name", "refs/jobs/sub/x"]


@pytest.fixture
def deep_cleanup(tmp_path: Path):
    """Remove what a test made deeper than pytest's own (recursive) clean-up can."""
    yield
    subprocess.run(["rm", "-rf", str(tmp_path)], check=False)


def odd_refs(site: Site, depth: int = 1200) -> list[str]:
    """Odd files under refs/jobs/, and a deep folder tree there (a file at its bottom)."""
    for key in ODD_REFS:
        put_ref(site, key, b"{}")
    deep = site.root / "refs" / "jobs"
    fd = os.open(deep, os.O_PATH)
    try:  # deeper than PATH_MAX allows to name in one path
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("x", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    return ["DS_Store", "bad name", "sub/x"]


@pytest.mark.fuse
def test_odd_files_under_refs_are_skipped_with_one_warning(tmp_path: Path, site: Site,
                                                           deep_cleanup) -> None:
    content = b"kept\n"
    craft_job(site, "good", [raw_tree([file_entry(b"f", content)])], [content])
    names = odd_refs(site)
    results = {"ls": site.run("ls", "/jobs/"), "ls -l": site.run("ls", "-l", "/jobs/"),
               "verify": site.run("verify"), "gc": site.run("gc", "--dry-run"),
               "pull": site.run("pull", "--dest", tmp_path / "pulled")}
    for what, result in results.items():
        no_traceback(result)
        assert result.code == 0, (what, result)
        for name in names:
            assert sum(name in line for line in result.err_lines) == 1, (what, name, result.err)
    assert results["ls"].out.split() == ["good/"]
    assert (tmp_path / "pulled" / "good" / "f").read_bytes() == content
    with mounted(site, None, tmp_path / "mnt") as mnt:
        assert os.listdir(mnt / "jobs") == ["good"]
        assert (mnt / "jobs" / "good" / "f").read_bytes() == content


# 7. every field of a record is checked on decode -----------------------------------------------
BAD_FIELDS = {"created": 1e300, "ended": 1e20, "started": -5.0, "logical_bytes": -1,
              "files": -3, "stored_delta": 2**63, "exit_code": 2**40, "reason": "r" * 5000,
              "host": "h" * 5000, "command": ["x" * 1000] * 5000, "status": "PWNED",
              "inputs": [{"ref": "/jobs/a", "root": "zz"}]}


def record_json(job: str, root: bytes, **changes) -> bytes:
    fields = json.loads(record_bytes(job, root))
    fields.update(changes)
    return json.dumps(fields).encode()


@pytest.mark.parametrize("field", sorted(BAD_FIELDS))
def test_out_of_range_record_fields_are_refused(field: str) -> None:
    data = record_json("j", b"\1" * 32, **{field: BAD_FIELDS[field]})
    with pytest.raises(FormatError, match=field):
        decode_record(data)
    decode_record(record_json("j", b"\1" * 32))  # the same record, in range, decodes


@pytest.mark.fuse
def test_out_of_range_records_are_skipped_by_every_command(tmp_path: Path, site: Site) -> None:
    content = b"kept\n"
    root = raw_tree([file_entry(b"f", content)])
    craft_job(site, "good", [root], [content])
    for field in ("created", "ended"):
        put_ref(site, f"refs/jobs/bad-{field}", record_json(f"bad-{field}", blob_id(root),
                                                            **{field: BAD_FIELDS[field]}))
    for args in (("ls", "/jobs/"), ("ls", "-l", "/jobs/"), ("ls", "--json", "/jobs/"),
                 ("pull", "--dest", tmp_path / "pulled")):
        result = site.run(*args)
        no_traceback(result)
        assert result.code == 0, (args, result)
        assert "bad-created" in result.err and "bad-ended" in result.err, (args, result.err)
        assert "bad-" not in result.out
    result = site.run("ls", "/jobs/bad-ended")
    no_traceback(result)
    assert result.code == 6 and "job bad-ended" in result.err_lines[-1], result
    assert "field ended out of range" in result.err_lines[-1]
    code, report = site.verify()
    assert code == 6 and {w for p in report["problems"] for w in p["broken"]} == {
        "job bad-created", "job bad-ended"}
    with mounted(site, None, tmp_path / "mnt") as mnt:
        assert os.listdir(mnt / "jobs") == ["good"]


# 8. untrusted text is printed escaped, never as markup; --json stays exact ----------------------
TITLE, CLEAR = b"\x1b]0;pwned\x07", b"\x1b[2J"
EVIL_NAMES = {TITLE + b"title": "\\033]0;pwned\\atitle", CLEAR + b"clear": "\\033[2Jclear",
              b"two\nlines": "two\\nlines", b"tab\there": "tab\\there",
              b"back\\slash": "back\\\\slash", b"bad-\xff-utf8": "bad-\\377-utf8",
              b"[bold]markup[red]": "[bold]markup[red]"}


def test_untrusted_text_is_printed_escaped(site: Site) -> None:
    entries = [file_entry(name, b"x") for name in EVIL_NAMES]
    entries.append(Entry(b"link", LINK, 0o777, 0, 1, target=CLEAR + b"\n/etc"))
    craft_job(site, "evil", [raw_tree(sorted(entries, key=lambda e: e.name))], [b"x"])
    root = raw_tree([file_entry(b"f", b"x")])
    craft_job(site, "base", [root], [b"x"])
    put_ref(site, "refs/jobs/marked", record_json("marked", blob_id(root), status="FAILED",
                                                  reason="[/bold] \x1b[2J\nnext"))
    for args in (("ls", "/jobs/evil"), ("ls", "-l", "/jobs/evil"), ("ls", "-l", "/jobs/"),
                 ("ls", "/jobs/")):
        result = site.run(*args).ok()
        assert "\x1b" not in result.out + result.err and "\x07" not in result.out, args
        if args[-1] == "/jobs/evil":
            assert len(result.out.splitlines()) == len(EVIL_NAMES) + 1, result.out
            for shown in EVIL_NAMES.values():
                assert shown in result.out, (args, shown, result.out)
    long_jobs = site.run("ls", "-l", "/jobs/").out
    assert "[/bold] \\033[2J\\nnext" in long_jobs, long_jobs
    assert "-> \\033[2J\\n/etc" in site.run("ls", "-l", "/jobs/evil").out
    items = json.loads(site.run("ls", "--json", "/jobs/evil").out)["entries"]
    names = {item["name"] for item in items}
    assert TITLE.decode() + "title" in names and "two\nlines" in names
    assert next(i["target"] for i in items if i["name"] == "link") == (CLEAR + b"\n/etc").decode()
    record = json.loads(site.run("ls", "--json", "/jobs/").out)["entries"]
    assert next(i for i in record if i["name"] == "marked")["record"]["reason"] == \
        "[/bold] \x1b[2J\nnext"


# 3. cp and pull drop setuid, setgid and sticky bits unless asked to keep them ------------------
def test_setuid_setgid_and_sticky_bits_are_dropped(tmp_path: Path, site: Site) -> None:
    content = b"#!/bin/sh\nid\n"
    sub = raw_tree([Entry(b"tool", FILE, 0o6755, len(content), 1, chunks=blob_id(content),
                          sizes=[len(content)])])
    craft_job(site, "suid", [raw_tree([Entry(b"shared", DIR, 0o3777, 0, 1,
                                             target=blob_id(sub))]), sub], [content])
    site.run("cp", "-r", "/jobs/suid", tmp_path / "cp").ok()
    site.run("cp", "/jobs/suid/shared/tool", tmp_path / "one").ok()
    site.run("pull", "suid", "--dest", tmp_path / "pulled").ok()
    for tool in (tmp_path / "cp/shared/tool", tmp_path / "one", tmp_path / "pulled/suid/shared/tool"):
        assert stat.S_IMODE(tool.stat().st_mode) == 0o755, tool
    for shared in (tmp_path / "cp/shared", tmp_path / "pulled/suid/shared"):
        assert stat.S_IMODE(shared.stat().st_mode) == 0o777, shared
    site.run("cp", "-r", "--keep-setuid", "/jobs/suid", tmp_path / "kept").ok()
    site.run("pull", "suid", "--keep-setuid", "--dest", tmp_path / "kept-pull").ok()
    for kept in (tmp_path / "kept", tmp_path / "kept-pull/suid"):
        assert stat.S_IMODE((kept / "shared/tool").stat().st_mode) == 0o6755
        assert stat.S_IMODE((kept / "shared").stat().st_mode) == 0o3777
    assert "setuid" in site.run("cp", "--help").out and "setuid" in site.run("pull", "--help").out


# 2. a file's sizes in its tree are checked against its chunks ----------------------------------
@pytest.mark.fuse
def test_sizes_that_disagree_with_the_chunks_are_damage(tmp_path: Path, site: Site) -> None:
    ten, other, fine = b"0123456789", b"abcdefghij", b"fine\n"
    craft_job(site, "sizes", [raw_tree([
        Entry(b"claims-less", FILE, 0o644, 10, 1, chunks=blob_id(ten) + blob_id(other),
              sizes=[5, 5]),
        Entry(b"claims-more", FILE, 0o644, 100, 1, chunks=blob_id(ten), sizes=[100]),
        file_entry(b"fine", fine),
        Entry(b"lie\x1b[2J\nx", FILE, 0o644, 100, 1, chunks=blob_id(ten), sizes=[100])])],
        [ten, other, fine])
    for name in ("claims-more", "claims-less"):
        result = site.run("cp", f"/jobs/sizes/{name}", tmp_path / name)
        assert result.code == 6 and f"/jobs/sizes/{name}" in result.one_line_error(), result
        assert not (tmp_path / name).exists()
    for _ in range(2):
        result = site.run("cp", "-r", "/jobs/sizes", tmp_path / "all")
        no_traceback(result)
        assert result.code == 6 and "3 damaged files not copied" in result.err, result
    assert sorted(os.listdir(tmp_path / "all")) == ["fine"]
    code, report = site.verify()
    assert code == 6
    assert {w for p in report["problems"] for w in p["broken"]} == {
        "job sizes:/claims-more", "job sizes:/claims-less", "job sizes:/lie\x1b[2J\nx"}
    with mounted(site, None, tmp_path / "mnt") as mnt:
        for name in ("claims-more", "claims-less", "lie\x1b[2J\nx"):
            with pytest.raises(OSError) as info:
                (mnt / "jobs/sizes" / name).read_bytes()
            assert info.value.errno == errno.EIO
        assert (mnt / "jobs/sizes/fine").read_bytes() == fine
    log = "".join(p.read_text() for p in (site.cache / "mounts").glob("*.log"))
    assert "path /jobs/sizes/claims-more [offset 0" in log, log
    assert "\x1b" not in log and "/jobs/sizes/lie\\x1b[2J\\nx [offset 0" in log, log


# 4. verify reads each tree and chunk once, in bounded memory ------------------------------------
def shared_levels(site: Site, job: str, depth: int, content: bytes, store: bool = True) -> None:
    """`depth` levels of {a -> T, b -> T}: 2**depth paths to one file, depth + 1 trees."""
    tree = raw_tree([file_entry(b"f", content)])
    trees = [tree]
    for _ in range(depth):
        tree = raw_tree([Entry(name, DIR, 0o755, 0, 1, target=blob_id(tree)) for name in (b"a", b"b")])
        trees.append(tree)
    craft_job(site, job, trees[::-1], [content] if store else [])


def test_verify_reads_shared_subtrees_once(site: Site) -> None:
    shared_levels(site, "shared", 40, b"bottom\n")
    for args in (["verify", "--json"], ["gc", "--dry-run"]):
        code, err, peak = run_peak_rss([str(BIN), *args], site.env())
        assert code == 0 and "Traceback" not in err, err
        assert peak < 200 * MiB, f"{args[0]} peaked at {peak / MiB:.0f} MiB"
    code, report = site.verify()
    assert code == 0 and report["blobs"] == 42  # 41 trees, 1 chunk


def test_verify_names_damage_below_a_shared_subtree(site: Site) -> None:
    put_pack(site, [(CHUNK, blob_id(b"bottom\n"), codec.RAW, b"BOTTOM\n", 7)])  # corrupt
    shared_levels(site, "shared", 30, b"bottom\n", store=False)
    shared_levels(site, "shared2", 29, b"bottom\n", store=False)
    code, report = site.verify()
    assert code == 6 and report["blobs"] == 31  # 31 + 1 trees, and the chunk is damaged
    chunk = [p for p in report["problems"] if p["kind"] == "chunk"]
    assert len(chunk) == 1 and {w.split(":")[0] for w in chunk[0]["broken"]} == {
        "job shared", "job shared2"}


# 5. the mount daemon's memory does not grow with the square of the depth -------------------------
def nested(site: Site, job: str, depth: int, content: bytes) -> None:
    """`depth` directories, each holding the next (`d/d/d/...`), a file at the bottom."""
    tree = raw_tree([file_entry(b"f", content)])
    trees = [tree]
    for _ in range(depth):
        tree = raw_tree([Entry(b"d", DIR, 0o755, 0, 1, target=blob_id(tree))])
        trees.append(tree)
    craft_job(site, job, trees[::-1], [content])


@pytest.mark.fuse
def test_mount_memory_is_linear_in_depth(tmp_path: Path, site: Site) -> None:
    depth = 10_000
    nested(site, "deep", depth, b"bottom\n")
    with mounted(site, None, tmp_path / "mnt") as mnt:
        found = subprocess.run(["find", str(mnt / "jobs" / "deep")], capture_output=True,
                               timeout=600)
        assert found.returncode == 0, found.stderr[-500:]
        assert found.stdout.count(b"\n") == depth + 2  # the job, its dirs, the file
        rss = daemon_of(mnt).memory_info().rss
    assert rss < 150 * MiB, f"the daemon holds {rss / MiB:.0f} MiB"


def test_trees_deeper_than_the_recursion_limit_are_copied(tmp_path: Path, site: Site,
                                                          deep_cleanup) -> None:
    nested(site, "deep", 1500, b"bottom\n")
    site.run("cp", "-r", "/jobs/deep", tmp_path / "cp").ok()
    site.run("pull", "--dest", tmp_path / "pulled").ok()
    for top in (tmp_path / "cp", tmp_path / "pulled" / "deep"):
        fd = os.open(top, os.O_PATH)
        for _ in range(1500):
            inner = os.open("d", os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("f", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"bottom\n"
        os.close(fd)
