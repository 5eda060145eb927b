"""Hostile input: fuzzed decoders, decompression bombs, crafted trees (unsafe names, links
out of the destination), hostile `.c3` files and ids that try path tricks.

The decoders face random bytes and mutations of valid encodings (with checksums made to
match, so the mutation reaches the parser): only typed c3fs errors may come out, within a
deadline and with a small traced-memory peak.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import blake3
import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from c3fs.errors import BlobCorrupt, C3fsError, FormatError
from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.job import JobRecord, decode_record, encode_record
from c3fs.objects.pack import (
    CHUNK,
    FOOTER,
    MAGIC,
    TREE,
    PackBuilder,
    parse_footer,
    parse_trailer,
    read_trailer,
)
from c3fs.objects.tree import DIR, FILE, LINK, EncodedTree, Entry, Tree, decode_tree, encode_tree
from c3fs.store.store import Store, StoreConfig
from reliability.relkit import BIN, GiB, MiB, Site, leftovers, make_local_store, run_peak_rss

FUZZ = settings(max_examples=100, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PEAK_LIMIT = 16 * MiB


# valid encodings to mutate ---------------------------------------------------------------------
def valid_pack() -> bytes:
    builder = PackBuilder()
    raw = b"raw chunk bytes" * 10
    builder.add(CHUNK, blob_id(raw), codec.RAW, raw, len(raw))
    text = b"loss=0.1\n" * 1000
    kind, stored = codec.encode(text)
    builder.add(CHUNK, blob_id(text), kind, stored, len(text))
    tree = valid_tree()
    builder.add(TREE, blob_id(tree), codec.RAW, tree, len(tree))
    return builder.finish()[1]


def valid_tree() -> bytes:
    return encode_tree([
        Entry(b"file", FILE, 0o644, 6, 1, chunks=blob_id(b"hello\n"), sizes=[6]),
        Entry(b"dir", DIR, 0o755, 0, 2, target=b"\1" * 32),
        Entry(b"link", LINK, 0o777, 0, 3, target=b"../file"),
    ])


def valid_record() -> bytes:
    return encode_record(JobRecord(id="job_1", project="vision", created=1.5, root="ab" * 32,
                                   command=["python", "train.py"], logical_bytes=10, files=2))


def valid_config() -> bytes:
    return msgspec.json.encode(StoreConfig(store_id="0123456789abcdef", created=1.0))


INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, 0xC0, 0xC6, 0xCF, 0xD3, 0xDB, 0xDC, 0xDD, 0xDE,
               0xDF, ord("["), ord("{"), ord('"'), ord("9")]


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    """`seed` with 1-6 edits: flips, interesting bytes, insertions, deletions, a cut."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from(INTERESTING))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


def any_bytes(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=4096), mutated(seed))


@pytest.fixture(scope="module", autouse=True)
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def only_typed_errors(decode, data, *args) -> None:
    """`decode(data)` returns or raises a C3fsError; its allocations peak below the limit."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        decode(data, *args)
    except C3fsError:
        pass
    peak = tracemalloc.get_traced_memory()[1] - base
    assert peak < PEAK_LIMIT + 8 * len(data), f"{peak} bytes traced"


# crafted headers that claim huge sizes or nest deeply
MSGPACK_BOMBS = [b"\xdd\xff\xff\xff\xff", b"\x92\x01\xdd\xff\xff\xff\xff",
                 b"\x92\x01\x91\x98\xc6\xff\xff\xff\xff", b"\x91" * 100_000,
                 b"\x92\x01\x91\x95\xdb\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff"]
JSON_BOMBS = [b"[" * 100_000, b'{"version": 1e999999}', b'{"version": ' + b"9" * 5000 + b"}",
              b'{"id": "' + b"\\u0000" * 1000 + b'"}', b"\xff\xfe{}", b'{"a":' * 50_000]


def with_footer(trailer: bytes, blobs: bytes = MAGIC) -> bytes:
    """A pack whose footer matches `trailer` (so a mutated trailer reaches the decoder)."""
    return blobs + trailer + FOOTER.pack(len(trailer), blake3.blake3(trailer).digest(),
                                         b"C3PKEND\n")


@FUZZ
@given(any_bytes(valid_pack()))
@example(b"")
@example(MAGIC + b"\0" * FOOTER.size)
def test_fuzz_read_trailer(data: bytes) -> None:
    only_typed_errors(read_trailer, data)


@FUZZ
@given(mutated(msgspec.msgpack.encode([[0, b"\1" * 32, 8, 10, 10, 0]] * 3)),
       st.integers(-10, 1 << 40))
def test_fuzz_parse_trailer_with_matching_digest(trailer: bytes, data_end: int) -> None:
    only_typed_errors(parse_trailer, trailer, blake3.blake3(trailer).digest(), data_end)
    only_typed_errors(read_trailer, with_footer(trailer))


@pytest.mark.parametrize("trailer", MSGPACK_BOMBS)
def test_parse_trailer_bombs(trailer: bytes) -> None:
    only_typed_errors(read_trailer, with_footer(trailer))


@FUZZ
@given(st.binary(min_size=FOOTER.size, max_size=FOOTER.size), st.integers(-1, 1 << 62))
def test_fuzz_parse_footer(footer: bytes, pack_size: int) -> None:
    only_typed_errors(parse_footer, footer, pack_size)


class MemBackend:
    """A backend over a dict (for the store's own pack and config decoders)."""

    url = "mem://fuzz"

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        from c3fs.store.backend import KeyMissing

        if key not in self.objects:
            raise KeyMissing(key)
        data = self.objects[key]
        return data[offset:] if length is None else data[offset:offset + length]

    def size(self, key: str) -> int:
        return len(self.get(key))


@FUZZ
@given(any_bytes(valid_pack()))
def test_fuzz_store_pack_entries(data: bytes) -> None:
    pack_id = data[-40:-8].hex() if len(data) >= 40 else "00" * 32
    store = Store(MemBackend({Store.pack_key(pack_id): data}), None)
    only_typed_errors(lambda d: store.pack_entries(pack_id), data)


@FUZZ
@given(any_bytes(valid_tree()))
@example(b"\x92\x01\x91\x98" + b"\xc4\x00" + b"\x00" * 7)
def test_fuzz_decode_tree(data: bytes) -> None:
    only_typed_errors(decode_tree, data)
    only_typed_errors(lambda d: EncodedTree(d).check(), data)


@pytest.mark.parametrize("data", MSGPACK_BOMBS)
def test_decode_tree_bombs(data: bytes) -> None:
    only_typed_errors(decode_tree, data)
    only_typed_errors(lambda d: EncodedTree(d).check(), data)


@FUZZ
@given(any_bytes(valid_record()))
def test_fuzz_decode_record(data: bytes) -> None:
    only_typed_errors(decode_record, data)


@FUZZ
@given(any_bytes(valid_config()))
def test_fuzz_store_config(data: bytes) -> None:
    only_typed_errors(lambda d: Store.open(MemBackend({"config": d}), create=False), data)


@pytest.mark.parametrize("data", JSON_BOMBS)
def test_json_bombs(data: bytes) -> None:
    only_typed_errors(decode_record, data)
    only_typed_errors(lambda d: Store.open(MemBackend({"config": d}), create=False), data)


@FUZZ
@given(st.sampled_from([codec.RAW, codec.ZSTD, 2, -1, 255]), st.integers(-1, 2 * codec.MAX_PLAIN),
       st.one_of(st.binary(max_size=2048),
                 mutated(zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 5000))))
def test_fuzz_blob_decode(kind: int, plain_len: int, stored: bytes) -> None:
    only_typed_errors(lambda d: codec.decode(b"\0" * 32, kind, d, plain_len), stored)


# decompression bombs ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """zstd frames of 1 GiB of zeros (32 KiB each): with the size in the header, without it,
    and with a header that lies (says 1,000 bytes)."""
    frames = {}
    for name, with_size in (("sized", True), ("unsized", False)):
        compressor = zstandard.ZstdCompressor(level=1, write_content_size=with_size)
        stream = compressor.compressobj(size=GiB if with_size else -1)
        zeros = bytes(MiB)
        frames[name] = b"".join([stream.compress(zeros) for _ in range(1024)] + [stream.flush()])
    sized = frames["sized"]
    assert sized[4] == 0x80  # 4-byte content size after the window descriptor
    frames["lying"] = sized[:6] + struct.pack("<I", 1000) + sized[10:]
    assert zstandard.frame_content_size(frames["lying"]) == 1000
    return frames


BOMB_CLAIMS = [("sized", 1000), ("sized", GiB), ("unsized", 1000), ("unsized", GiB),
               ("lying", 1000), ("sized", codec.MAX_PLAIN)]


@pytest.mark.parametrize(("frame", "claim"), BOMB_CLAIMS)
def test_decompression_bomb_refused(bombs: dict[str, bytes], frame: str, claim: int) -> None:
    """Refused before (or while) decompressing, with no large allocation either way."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    with pytest.raises(BlobCorrupt):
        codec.decode(blob_id(b""), codec.ZSTD, bombs[frame], claim)
    assert tracemalloc.get_traced_memory()[1] - base < 4 * MiB


def test_decompression_bombs_keep_process_memory_small(bombs, tmp_path: Path) -> None:
    """The same in a fresh process, where max RSS says what zstd (untraced C) allocated."""
    for name, frame in bombs.items():
        (tmp_path / name).write_bytes(frame)
    script = textwrap.dedent(f"""
        import sys
        from c3fs.errors import BlobCorrupt
        from c3fs.objects import codec
        for name, claim in {BOMB_CLAIMS!r}:
            data = open({str(tmp_path)!r} + "/" + name, "rb").read()
            try:
                codec.decode(b"\\0" * 32, codec.ZSTD, data, claim)
                sys.exit("accepted " + name)
            except BlobCorrupt:
                pass
    """)
    code, err, peak = run_peak_rss([sys.executable, "-c", script], dict(os.environ))
    assert code == 0, err
    assert peak < 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB"


# crafted jobs ------------------------------------------------------------------------------------
def raw_tree(entries: list[Entry]) -> bytes:
    """Encode a tree without the checks encode_tree makes (what an attacker would write)."""
    return msgspec.msgpack.encode(Tree(1, entries))


def file_entry(name: bytes, content: bytes) -> Entry:
    return Entry(name, FILE, 0o644, len(content), 1, chunks=blob_id(content), sizes=[len(content)])


def put_pack(site: Site, blobs: list[tuple[int, bytes, int, bytes, int]]) -> None:
    """Write one pack of (kind, id, codec, stored bytes, claimed plain length) blobs."""
    builder = PackBuilder()
    for blob in blobs:
        builder.add(*blob)
    pack_id, data = builder.finish()
    with site.repo() as repo:
        repo.store.put_pack(pack_id, data)


def craft_job(site: Site, job: str, trees: list[bytes], contents: list[bytes] = ()) -> None:
    """Write a pack holding `trees` (the first is the root) and `contents`, and a job ref."""
    put_pack(site, [(CHUNK, blob_id(c), codec.RAW, c, len(c)) for c in contents] +
             [(TREE, blob_id(t), codec.RAW, t, len(t)) for t in trees])
    with site.repo() as repo:
        repo.store.create_ref(JobRecord(id=job, project="rel", created=time.time(),
                                        root=blob_id(trees[0]).hex()))


def test_bombs_in_a_store(tmp_path: Path, site: Site, bombs: dict[str, bytes]) -> None:
    """A pack that holds 1 GiB of zeros claimed as 1,000 bytes, and a pack whose trailer
    claims 1 GiB for a blob: cp fails on one line naming the file, its peak RSS stays small,
    verify names exactly the two files, the innocent file copies."""
    small, huge = b"s" * 1000, b"h" * 1000  # the ids the bombs pretend to be
    put_pack(site, [(CHUNK, blob_id(small), codec.ZSTD, bombs["sized"], 1000)])
    put_pack(site, [(CHUNK, blob_id(huge), codec.ZSTD, bombs["sized"], GiB)])
    craft_job(site, "bombs", [encode_tree([
        Entry(b"small-claim.bin", FILE, 0o644, 1000, 1, chunks=blob_id(small), sizes=[1000]),
        Entry(b"huge-claim.bin", FILE, 0o644, 1000, 1, chunks=blob_id(huge), sizes=[1000]),
        file_entry(b"fine.txt", b"fine\n")])], [b"fine\n"])
    for name in ("small-claim.bin", "huge-claim.bin"):
        code, error, peak = run_peak_rss(
            [str(BIN), "cp", f"/jobs/bombs/{name}", str(tmp_path / name)], site.env())
        assert code == 6, error
        lines = error.splitlines()  # (a damaged pack is also logged each time it is seen)
        assert f"cannot read /jobs/bombs/{name}" in lines[-1] and "Traceback" not in error
        assert all("damaged pack" in line for line in lines[:-1]), error
        assert peak < 150 * MiB, f"cp peaked at {peak / MiB:.0f} MiB"
        assert not (tmp_path / name).exists()
    code, report = site.verify()
    assert code == 6
    assert {where for p in report["problems"] for where in p["broken"]} == {
        "job bombs:/small-claim.bin", "job bombs:/huge-claim.bin"}
    site.run("cp", "/jobs/bombs/fine.txt", tmp_path / "fine.txt").ok()
    assert (tmp_path / "fine.txt").read_bytes() == b"fine\n"


UNSAFE_NAMES = [b"..", b".", b"", b"a/b", b"/", b"../../escape", b"a\0b", b"x" * 256]


@pytest.mark.parametrize("name", UNSAFE_NAMES, ids=repr)
def test_unsafe_tree_names_refused_at_decode(name: bytes) -> None:
    with pytest.raises(FormatError):
        decode_tree(raw_tree([file_entry(name, b"pwned\n")]))
    with pytest.raises(FormatError):
        encode_tree([file_entry(name, b"pwned\n")])


def test_duplicate_and_unsorted_names_refused_at_decode() -> None:
    link = Entry(b"evil", LINK, 0o777, 0, 1, target=b"/tmp")
    sub = Entry(b"evil", DIR, 0o755, 0, 1, target=b"\1" * 32)
    for entries in ([link, sub], [file_entry(b"b", b"1"), file_entry(b"a", b"2")]):
        with pytest.raises(FormatError):
            decode_tree(raw_tree(entries))


@pytest.mark.parametrize("name", [b"..", b"a/b", b"../../escape", b""], ids=repr)
def test_crafted_job_with_unsafe_name_writes_nothing(tmp_path: Path, site: Site,
                                                     name: bytes) -> None:
    payload = b"pwned\n"
    sub = raw_tree([file_entry(b"pwned", payload)])
    root = raw_tree([Entry(name, DIR, 0o755, 0, 1, target=blob_id(sub)), file_entry(b"ok", b"ok")])
    craft_job(site, "evil", [root, sub], [payload, b"ok"])
    dest = tmp_path / "a" / "b" / "dest"
    assert "unsafe name in tree" in site.run("cp", "-r", "/jobs/evil", dest).one_line_error()
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*"))
    assert "unsafe name in tree" in site.run("ls", "/jobs/evil").one_line_error()
    assert "unsafe name in tree" in site.run("pull", "evil", "--dest", dest).one_line_error()
    code, report = site.verify()
    assert code == 6 and report["problems"][0]["broken"] == ["job evil:/"]


@pytest.fixture
def link_jobs(site: Site, tmp_path: Path) -> Path:
    """Jobs whose names collide on purpose: `evil` is a link out of the destination in one,
    a directory in another, a file in a third."""
    outside = tmp_path / "outside"
    outside.mkdir()
    payload = b"must never land outside\n"
    inner = raw_tree([file_entry(b"payload", payload)])
    craft_job(site, "link-job", [encode_tree([
        Entry(b"evil", LINK, 0o777, 0, 1, target=os.fsencode(outside)),
        Entry(b"evil-file", LINK, 0o777, 0, 1, target=os.fsencode(outside / "file")),
        Entry(b"relative", LINK, 0o777, 0, 1, target=b"../../../../" + os.fsencode(outside))])])
    craft_job(site, "dir-job", [encode_tree([Entry(b"evil", DIR, 0o755, 0, 1,
                                                   target=blob_id(inner))]), inner], [payload])
    craft_job(site, "file-job", [encode_tree([file_entry(b"evil-file", payload)])], [payload])
    return outside


def test_links_out_of_the_destination_are_never_followed_by_cp(tmp_path: Path, site: Site,
                                                               link_jobs: Path) -> None:
    dest = tmp_path / "dest"
    site.run("cp", "-r", "/jobs/link-job", dest).ok()
    assert os.readlink(dest / "evil") == str(link_jobs)  # written as links
    assert os.readlink(dest / "relative").endswith("outside")
    error = site.run("cp", "-r", "/jobs/dir-job", dest).one_line_error()  # a dir through it
    assert "evil" in error and "not a directory" in error
    error = site.run("cp", "/jobs/file-job/evil-file", dest / "evil-file").one_line_error()
    assert "is a symlink to nothing" in error  # named, dangling: not written through (cp)
    site.run("cp", "-r", "/jobs/file-job", dest).ok()  # replaces the link, never follows it
    assert not (dest / "evil-file").is_symlink()
    assert list(link_jobs.iterdir()) == []
    assert leftovers(dest) == []
    site.run("cp", "-r", "/jobs/link-job", dest).ok()
    site.run("cp", "-r", "/jobs/dir-job/evil", dest / "evil").ok()  # a link the user names
    assert list(link_jobs.iterdir()) == [link_jobs / "payload"]  # is followed, as cp does


def test_links_out_of_the_destination_are_never_followed_by_pull(tmp_path: Path, site: Site,
                                                                 link_jobs: Path) -> None:
    dest = tmp_path / "pulled"
    site.run("pull", "link-job", "--dest", dest).ok()
    assert os.readlink(dest / "link-job" / "evil") == str(link_jobs)
    os.symlink(link_jobs, dest / "dir-job")  # a job dir replaced by a link out
    assert "not a directory" in site.run("pull", "dir-job", "--dest", dest).one_line_error()
    assert list(link_jobs.iterdir()) == []


# .c3 files ---------------------------------------------------------------------------------------
HOSTILE_C3 = {
    "output-parent": "output: ['../x']",
    "output-absolute-outside": "output: ['{outside}']",
    "output-symlink-out": "output: ['out-link']",
    "output-nested-escape": "output: ['a/../../x']",
    "output-root": "output: ['/']",
    "output-dot": "output: ['.']",
    "output-empty": "output: ['']",
    "output-not-a-list": "output: {{a: b}}",
    "dataset-mount-parent": "datasets: [{{ref: /jobs/base, mount: ../x}}]",
    "dataset-mount-nested-escape": "datasets: [{{ref: /jobs/base, mount: 'in/../../x'}}]",
    "dataset-ref-parent": "datasets: [{{ref: '/jobs/../../etc', mount: data}}]",
    "dataset-unknown-ref": "datasets: [{{ref: /jobs/no-such-job, mount: data}}]",
    "dataset-unknown-key": "datasets: [{{ref: /jobs/base, mount: data, rw: true}}]",
    "project-slash": "project: a/b",
    "project-parent": "project: '..'",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_C3))
def test_hostile_c3_refused_before_anything_runs(tmp_path: Path, site: Site, small_tree: Path,
                                                 case: str) -> None:
    make_local_store(site.root, 32 * MiB)
    if case.startswith("dataset"):
        site.push(small_tree / "step-000", "base")
    work, outside, tmp = tmp_path / "work", tmp_path / "outside", tmp_path / "tmp"
    tmp.mkdir()
    work.mkdir()
    outside.mkdir()
    os.symlink(outside, work / "out-link")
    (work / ".c3").write_text(HOSTILE_C3[case].format(outside=outside) + "\n")
    before = site.jobs()
    marker = tmp_path / "ran"
    result = site.run("run", "--", "touch", marker, cwd=work, env={"TMPDIR": str(tmp)})
    result.one_line_error()
    assert not marker.exists(), "the command ran"
    assert site.jobs() == before
    assert list(outside.iterdir()) == []
    assert list(tmp.iterdir()) == [], "a run dir was left behind"


# ids that try path tricks -------------------------------------------------------------------------
BAD_IDS = ["../x", "a/b", ".", "..", "x" * 200, "/abs", " x", "x y", "é", "a\nb", "a\0b"]


def commands_for(bad: str, src: Path, dest: Path) -> list[list[str]]:
    return [["push", str(src), "-p", "rel", "-j", bad], ["push", str(src), "-p", bad],
            ["run", "-j", bad, "--", "true"], ["run", "-p", bad, "--", "true"],
            ["rm", bad], ["pull", bad, "--dest", str(dest)], ["verify", bad],
            ["ls", f"/jobs/{bad}/x"], ["ls", f"/projects/{bad}/jobs/x"],
            ["cp", "-r", f"/jobs/{bad}/x", str(dest / "cp")]]


def store_files(site: Site) -> dict[str, int]:
    return {str(p.relative_to(site.root)): p.stat().st_size for p in site.root.rglob("*")
            if p.is_file() and "locks" not in p.parts}


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_ids_with_path_tricks(tmp_path: Path, site: Site, small_tree: Path, run_cli,
                              bad: str) -> None:
    """In process (NUL cannot pass through argv); `../x` also through the real binary."""
    src = small_tree / "step-001"
    site.push(src, "real-job")
    before = store_files(site)
    dest = tmp_path / "dest"
    dest.mkdir()
    for argv in commands_for(bad, src, dest):
        result = run_cli(argv)
        line = result.assert_one_line_error()
        assert result.code != 0, (argv, line)
    if bad == "../x":
        for argv in commands_for(bad, src, dest) + [["mount", f"/jobs/{bad}", str(dest)]]:
            proc = subprocess.run([str(BIN), *argv], capture_output=True, text=True,
                                  env=site.env(), timeout=60, cwd=tmp_path)
            assert proc.returncode != 0 and proc.stderr.startswith("c3fs: error: "), argv
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert store_files(site) == before
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "x").exists() and not (site.root.parent / "x").exists()
    assert site.jobs() == ["real-job"]

