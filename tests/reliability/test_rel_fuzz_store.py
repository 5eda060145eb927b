"""The fuzz tier of issue 19 (slow): hostile stores built from a grammar, every command run.

Hypothesis draws a whole store: chunks stored honestly, flipped, with a lying plain length or
not at all; trees whose entries have hostile names (`..`, `a/b`, escape sequences, newlines,
bytes that are not UTF-8), unknown kinds, setuid modes, sizes that lie, chunk ids and subtree
ids that are missing, links out of the destination; subtrees shared level after level, and a
chain of directories deeper than the recursion limit; refs under odd file names, naming
other jobs, of the wrong kind, with out-of-range fields, or not JSON at all.

On each store it runs `ls -l`, `cp -r`, `pull`, `verify`, `gc --dry-run` and a mount with
`find` and `cat`, and asserts: exit 0 or one typed `c3fs: error:` line (no traceback), no
write outside the destination, each command within a generous time and RSS bound, and a mount
daemon that still answers (with no "unexpected error" in its log).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.pack import CHUNK, TREE, PackBuilder
from c3fs.objects.tree import DIR, FILE, LINK, Entry, Tree
from reliability.relkit import (
    BIN,
    MiB,
    Site,
    daemon_of,
    make_local_store,
    mounted,
    run_peak_rss,
)

pytestmark = [pytest.mark.slow, pytest.mark.fuse]

EXAMPLES = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
TIMEOUT = 120  # seconds any one command may take (a hang, not a slow run, fails it)
PEAK = 300 * MiB  # peak RSS of any one command
OUTSIDE = os.fsencode(tempfile.gettempdir()) + b"/c3fs-fuzz-outside"  # must stay empty
NAMES = [b"a", b"b", b"f.txt", b"weights.bin", b"..", b".", b"a/b", b"", b"x" * 256,
         b"\x1b]0;pwned\x07", b"\x1b[2J", b"new\nline", b"\xff\xfe", b"[bold]x", b"a\0b",
         b"-rf", b".hidden"]
TARGETS = [OUTSIDE, OUTSIDE + b"/file", b"../../../../outside", b"/etc/passwd",
           b"\x1b[2J\n", b"a" * 5000, b"f.txt"]
REF_FILES = ["job-a", "job-b", "ds-a", ".DS_Store", "bad name", "sub/x"]


@dataclass
class Hostile:
    """A store to write: blobs (kind, id, codec, stored bytes, claimed length) and refs."""

    blobs: list[tuple[int, bytes, int, bytes, int]] = field(default_factory=list)
    trees: list[bytes] = field(default_factory=list)  # ids of the trees drawn so far
    refs: dict[str, bytes] = field(default_factory=dict)  # key under refs/ -> bytes
    tops: list[bytes] = field(default_factory=list)  # trees worth a job's root


@st.composite
def chunks(draw, store: Hostile) -> list[bytes]:
    """Chunk contents, each stored honestly, flipped, with a lying length, or not at all."""
    contents = draw(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=4,
                             unique=True))
    for content in contents:
        fault = draw(st.sampled_from(["ok", "ok", "ok", "flip", "length", "missing"]))
        stored = bytes([content[0] ^ 1]) + content[1:] if fault == "flip" else content
        claimed = len(content) + (draw(st.integers(1, 100)) if fault == "length" else 0)
        if fault != "missing":
            store.blobs.append((CHUNK, blob_id(content), codec.RAW, stored, claimed))
    return contents


@st.composite
def entries(draw, store: Hostile, contents: list[bytes]) -> Entry:
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from([FILE, FILE, DIR, DIR, LINK, 3]))
    mode = draw(st.sampled_from([0o644, 0o755, 0o6755, 0o1777, 0]))
    mtime = draw(st.sampled_from([1, -1, 2**62, 1_700_000_000_000_000_000]))
    if kind == DIR:
        targets = store.trees + [b"\7" * 32]  # a subtree, or one that is not there
        return Entry(name, DIR, mode, 0, mtime, target=draw(st.sampled_from(targets)))
    if kind == LINK:
        return Entry(name, LINK, mode, 0, mtime, target=draw(st.sampled_from(TARGETS)))
    picked = draw(st.lists(st.sampled_from(contents), max_size=3))
    sizes = [len(c) + draw(st.sampled_from([0, 0, 0, 5, -1])) for c in picked]
    sizes = [max(size, 1) for size in sizes]
    return Entry(name, kind, mode, sum(sizes), mtime, chunks=b"".join(map(blob_id, picked)),
                 sizes=sizes)


def add_tree(store: Hostile, entries: list[Entry]) -> bytes:
    data = msgspec.msgpack.encode(Tree(1, entries))
    store.blobs.append((TREE, blob_id(data), codec.RAW, data, len(data)))
    store.trees.append(blob_id(data))
    return blob_id(data)


def chain(store: Hostile, bottom: bytes, depth: int, names: tuple[bytes, ...]) -> bytes:
    """`depth` levels above `bottom`, each naming the level below under every one of `names`
    (one name: a deep chain; two: 2**depth paths through shared subtrees)."""
    tree_id = bottom
    for _ in range(depth):
        tree_id = add_tree(store, [Entry(n, DIR, 0o755, 0, 1, target=tree_id) for n in names])
    return tree_id


def mostly(good: object, *bad: object) -> st.SearchStrategy:
    """`good` four times in five, else one of `bad`: most refs get far enough to be used."""
    return st.sampled_from([good] * 4 * len(bad) + list(bad))


@st.composite
def records(draw, store: Hostile) -> None:
    """One sound job (`job-ok`, with a hostile tree), then refs of every sort."""
    store.refs["jobs/job-ok"] = json.dumps({
        "id": "job-ok", "project": "fuzz", "created": time.time(),
        "root": draw(st.sampled_from(store.tops)).hex()}).encode()
    for key in draw(st.lists(st.sampled_from(REF_FILES), max_size=4, unique=True)):
        kind = "dataset" if key.startswith("ds") else "job"
        garbage = draw(mostly(None, b"{}", b"\xff", b"[" * 5000))
        now = time.time()
        root = draw(st.one_of(st.sampled_from(store.tops), st.sampled_from(store.trees),
                              st.just(b"\7" * 32)))
        fields = {"id": draw(mostly(key, "job-a")), "project": "fuzz",
                  "kind": draw(mostly(kind, "job" if kind == "dataset" else "dataset")),
                  "root": root.hex(), "created": draw(mostly(now, 1e300, -1.0)),
                  "ended": draw(mostly(now, None, 1e20)), "status": draw(mostly(
                      "SUCCEEDED", "FAILED", "PWNED")),
                  "reason": draw(mostly("", "[/bold] x", "\x1b[2J\nnext"))}
        folder = "datasets" if kind == "dataset" else "jobs"
        store.refs[f"{folder}/{key}"] = garbage or json.dumps(fields).encode()


@st.composite
def hostile_stores(draw) -> Hostile:
    store = Hostile()
    contents = draw(chunks(store))
    for _ in range(draw(st.integers(1, 4))):
        drawn = draw(st.lists(entries(store, contents), max_size=5))
        if draw(st.booleans()):  # mostly sorted and unique, as decode wants
            drawn = sorted({e.name: e for e in drawn}.values(), key=lambda e: e.name)
        add_tree(store, drawn)
    top = store.trees[-1]
    store.tops = [chain(store, top, 1200, (b"d",)), chain(store, top, 8, (b"a", b"b")), top]
    # (cp and find expand shared levels: 2**8 paths here; verify's own test has 40)
    draw(records(store))
    return store


def write_store(store: Hostile, root: Path) -> None:
    make_local_store(root, 1 * MiB)
    builder = PackBuilder()
    for blob in store.blobs:
        builder.add(*blob)
    pack_id, data = builder.finish()
    (root / "packs" / pack_id[:2]).mkdir(parents=True, exist_ok=True)
    (root / "packs" / pack_id[:2] / pack_id).write_bytes(data)
    for key, data in store.refs.items():
        path = root / "refs" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


# checks --------------------------------------------------------------------------------------
def typed(code: int, err: str, what: tuple) -> None:
    """Exit 0, or a typed error: its last line `c3fs: error: ...` (verify: its report and
    exit 6); never a traceback."""
    assert "Traceback" not in err, (what, err[-2000:])
    if what[0] == "verify" and code == 6:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 0 or (lines and lines[-1].startswith("c3fs: error: ")), (what, code, err)


def run_bounded(site: Site, *args: str | os.PathLike) -> None:
    code, err, peak = run_peak_rss([str(BIN), *map(str, args)], site.env())
    typed(code, err, args)
    assert peak < PEAK, (args, f"peak RSS {peak / MiB:.0f} MiB")


def listed_jobs(site: Site) -> list[str]:
    result = site.run("ls", "--json", "/jobs/", timeout=TIMEOUT)
    typed(result.code, result.err, ("ls", "--json"))
    return [item["name"] for item in json.loads(result.out)["entries"]] if result.code == 0 else []


def mount_and_read(site: Site, mnt: Path) -> None:
    with mounted(site, None, mnt) as mounted_at:
        found = subprocess.run(["find", str(mounted_at)], capture_output=True, timeout=TIMEOUT)
        assert b"Transport endpoint" not in found.stderr, found.stderr[-500:]
        subprocess.run(f"find {mounted_at}/jobs {mounted_at}/datasets -type f -print0 | "
                       "xargs -0 -r cat > /dev/null", shell=True, capture_output=True,
                       timeout=TIMEOUT)
        os.listdir(mounted_at / "jobs")  # the daemon still answers
        daemon = daemon_of(mounted_at)
        assert daemon is not None and daemon.memory_info().rss < PEAK
    for log in (site.cache / "mounts").glob("*.log"):
        text = log.read_text(errors="replace")
        assert "unexpected error" not in text and "Traceback" not in text, text[-3000:]


def files_below(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@EXAMPLES
@given(hostile_stores())
def test_hostile_stores(store: Hostile) -> None:
    base = Path(tempfile.mkdtemp(prefix="c3fs-fuzz-"))
    try:
        outside, dest = Path(os.fsdecode(OUTSIDE)), base / "dest"
        outside.mkdir(exist_ok=True)
        dest.mkdir()
        site = Site(str(base / "store"), base / "cache")
        write_store(store, site.root)
        store_files = files_below(site.root)
        run_bounded(site, "ls", "-l", "/jobs/")
        for job in listed_jobs(site):
            run_bounded(site, "ls", "-l", f"/jobs/{job}")
            run_bounded(site, "cp", "-r", f"/jobs/{job}", dest / "cp" / job)
        run_bounded(site, "pull", "--dest", dest / "pull")
        run_bounded(site, "verify")
        run_bounded(site, "gc", "--dry-run")
        mount_and_read(site, base / "mnt")
        assert list(outside.iterdir()) == []
        assert sorted(os.listdir(base)) == ["cache", "dest", "mnt", "store"]
        new = files_below(site.root) - store_files
        assert all(path.startswith("locks") for path in new), new  # gc's lock
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)  # deeper than shutil.rmtree goes
