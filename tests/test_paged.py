"""Paged directories (issue 16, item 5: 10 M entries in one directory): past
`C3FS_TREE_PAGE` entries a directory is stored as pages (ordinary trees of contiguous name
ranges) and an index (tree version 3), written page by page as the walk lists it; every
reader goes through `PagedTree`, which reads as one tree. Pages of 100 entries here (set in
the environment: the CLI in this process and the mount's daemon both read it)."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from c3fs.errors import FormatError
from c3fs.objects.ids import blob_id
from c3fs.objects.pack import TREE
from c3fs.objects.tree import (
    FILE,
    PAGED,
    EncodedTree,
    Entry,
    PagedTree,
    TreeWriter,
    encode_tree,
    open_tree,
)
from tests.crafted import craft_job
from tests.fusehelp import fuse_works, mount

PAGE = 100


def _entry(name: bytes, size: int = 1) -> Entry:
    return Entry(name, FILE, 0o644, size, 7, chunks=blob_id(name), sizes=[size])


def _written(entries: list[Entry], page: int | None) -> tuple[bytes, dict[bytes, bytes]]:
    blobs: dict[bytes, bytes] = {}

    def put(data: bytes, count: int) -> bytes:
        blobs[blob_id(data)] = data
        return blob_id(data)

    writer = TreeWriter(put, page)
    for entry in entries:
        writer.add(entry)
    return writer.finish(), blobs


def _opened(tree_id: bytes, blobs: dict[bytes, bytes]) -> EncodedTree | PagedTree:
    return open_tree(blobs[tree_id], lambda i: EncodedTree(blobs[i]), lambda i: None)


names = st.lists(st.binary(min_size=1, max_size=12).filter(
    lambda n: n not in (b".", b"..") and b"/" not in n and b"\0" not in n), max_size=400,
    unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names, st.integers(4, 64), st.lists(st.binary(max_size=13), max_size=20))
def test_a_paged_listing_reads_as_the_unpaged_one(found: list[bytes], page: int,
                                                  probes: list[bytes]) -> None:
    entries = [_entry(n) for n in sorted(found)]
    tree_id, blobs = _written(entries, page)
    tree = _opened(tree_id, blobs)
    flat = EncodedTree(encode_tree(entries))
    assert bool(tree.pages) == (len(entries) > page)  # (the weight limit is not met here)
    if not tree.pages:  # byte for byte what a directory was before paging
        assert blobs[tree_id] == flat.data and len(blobs) == 1
    assert list(tree) == list(flat) and len(tree) == len(flat)
    assert [tree[i] for i in range(len(tree) - 1, -1, -1)] == list(reversed(flat))
    seq = tree.sequential()
    assert [seq[i] for i in range(len(tree))] == list(flat)
    for name in probes + [e.name for e in entries[::7]]:
        assert tree.find(name) == flat.find(name)
        assert tree.bisect(name) == flat.bisect(name)
        assert tree.bisect(name, right=True) == flat.bisect(name, right=True)
    for i in range(0, len(tree), 37):
        run = tree.run(i)
        assert run and run == list(flat)[i:i + len(run)]
        listed = tree.listed(i, 300)  # (readdir: within one page)
        assert [e.name for e in listed] == [e.name for e in flat.listed(i, len(listed))]
    tree.check()


def test_page_boundaries_depend_on_each_page_only() -> None:
    """A name added to a big directory rewrites the pages about it, not those after it."""
    entries = [_entry(b"f%06d" % i) for i in range(5000)]
    a_id, a_blobs = _written(entries, PAGE)
    b_id, b_blobs = _written(sorted(entries + [_entry(b"f000100x")], key=lambda e: e.name), PAGE)
    a, b = _opened(a_id, a_blobs), _opened(b_id, b_blobs)
    assert len(a.pages) >= 30
    assert len(set(b.pages) - set(a.pages)) <= 2


def test_a_lookup_in_a_directory_of_100000_entries_reads_one_small_page() -> None:
    """Past 65,536 entries (the default), pages of ~4,096 (a 16th), never over 8,192: a
    fresh mount's `stat` of one entry reads the index and one page. Pages of ~65,536 cost
    it ~8 ms of CPU (reading, decompressing, verifying and finding the entries of up to
    131,072)."""
    entries = [Entry(b"file-%08d.bin" % i, FILE, 0o644, 0, 7) for i in range(100_000)]
    tree_id, blobs = _written(entries, None)
    loaded = []

    def load(page_id: bytes) -> EncodedTree:
        loaded.append(page_id)
        return EncodedTree(blobs[page_id])

    tree = open_tree(blobs[tree_id], load, lambda i: None)
    counts = [tree.starts[k + 1] - tree.starts[k] for k in range(len(tree.pages))]
    assert max(counts) <= 8192 and 15 <= len(counts) <= 50, counts
    assert tree.find(b"file-00099999.bin") == 99_999 and len(loaded) == 1
    assert len(tree.page(len(counts) - 1)) == counts[-1] and len(loaded) == 1
    small_id, small_blobs = _written(entries[:65_536], None)  # not paged: as before
    assert small_blobs == {small_id: encode_tree(entries[:65_536])}


def test_a_page_that_disagrees_with_its_index_is_refused() -> None:
    entries = [_entry(b"f%04d" % i) for i in range(400)]
    tree_id, blobs = _written(entries, PAGE)
    tree = _opened(tree_id, blobs)
    index = msgspec.msgpack.decode(blobs[tree_id])
    assert index[0] == PAGED and len(index[1]) == len(tree.pages)

    def reopened(pages) -> PagedTree:
        data = msgspec.msgpack.encode([PAGED, pages])
        blobs[blob_id(data)] = data
        return _opened(blob_id(data), blobs)

    first, second = index[1][0], index[1][1]
    with pytest.raises(FormatError, match="entries"):
        reopened([[first[0], first[1], first[2] + 1], second])[0]
    with pytest.raises(FormatError, match="starts at"):
        reopened([[b"f", first[1], first[2]], second])[0]
    with pytest.raises(FormatError, match="overlaps"):
        reopened([first, [first[0] + b"0", second[1], second[2]]])[0]
    with pytest.raises(FormatError, match="out of order"):
        reopened([second, first])
    with pytest.raises(FormatError, match="paged directory"):  # a page that is an index
        blobs[b"\1" * 32] = blobs[tree_id]
        reopened([[first[0], b"\1" * 32, first[2]]])[0]
    with pytest.raises(FormatError, match="damaged paged directory"):
        reopened([])


def test_an_unknown_tree_version_is_refused_cleanly(run_cli, store_env) -> None:
    def build(add):
        return add(TREE, msgspec.msgpack.encode([9, [[b"a", 0, 0, 0, 0]]]))

    craft_job(store_env.store, "future", build, project="p")
    result = run_cli(["ls", "/jobs/future/"])
    assert result.code == 6, result.err
    assert "tree version 9 is not supported" in result.err and "Traceback" not in result.err


def _make(src: Path, files: int = 1500) -> None:
    big = src / "big"
    (big / "sub").mkdir(parents=True)
    for i in range(files):
        (big / f"f{i:05d}").write_bytes(b"%d" % i * (i % 7))
    (big / "large.bin").write_bytes(os.urandom(600_000))
    for i in range(250):  # a paged subdirectory inside a paged directory
        (big / "sub" / f"g{i:04d}").write_bytes(b"g%d" % i)
    (big / "link").symlink_to("f00001")
    (src / "small").mkdir()
    (src / "small" / "one").write_bytes(b"1")


def _pages(repo, ref: str, path: str) -> tuple[bytes, ...]:
    from c3fs.vfs import Vfs

    return repo.tree(Vfs(repo).resolve(f"{ref}/{path}").tree_id).pages


def _listing(root: Path) -> list[tuple[str, int, bool]]:
    return sorted((str(p.relative_to(root)), 0 if p.is_dir() else p.lstat().st_size,
                   p.is_symlink()) for p in root.rglob("*"))


@pytest.fixture
def paged(monkeypatch):
    monkeypatch.setenv("C3FS_TREE_PAGE", str(PAGE))


def test_push_ls_cat_cp_verify_diff_and_gc_of_a_paged_directory(run_cli, c3fs_bin, store_env,
                                                                 tmp_path, paged) -> None:
    from c3fs.repo import Repo

    src = tmp_path / "src"
    _make(src)
    assert run_cli(["push", str(src), "-p", "p", "-j", "a"]).code == 0
    repo = Repo.open(str(store_env.store))
    try:
        pages = _pages(repo, "/jobs/a", "big")
        assert len(pages) >= 10 and len(_pages(repo, "/jobs/a", "big/sub")) >= 2
        assert _pages(repo, "/jobs/a", "small") == ()
    finally:
        repo.close()
    listed = run_cli(["ls", "/jobs/a/big"])
    assert listed.out.split() == sorted(p.name + "/" * p.is_dir() for p in (src / "big").iterdir())
    assert c3fs_bin("cat", "/jobs/a/big/f01234").out == (src / "big" / "f01234").read_text()
    out = tmp_path / "out"
    assert run_cli(["cp", "-r", "/jobs/a/", str(out)]).code == 0
    assert _listing(out) == _listing(src)
    assert (out / "big" / "large.bin").read_bytes() == (src / "big" / "large.bin").read_bytes()

    # b: one file added, one changed, one removed; c: a job that gc removes
    (src / "big" / "f00500x").write_bytes(b"new")
    (src / "big" / "f00900").write_bytes(b"changed")
    (src / "big" / "f01400").unlink()
    assert run_cli(["push", str(src), "-p", "p", "-j", "b"]).code == 0
    diff = run_cli(["diff", "a", "b"])
    assert diff.code == 1
    changes = sorted(line.split()[0] + " " + line.split()[1] for line in diff.out.splitlines()
                     if line[:1] in "+-M")
    assert changes == ["+ big/f00500x", "- big/f01400", "M big/f00900"], diff.out
    from c3fs.jobs.diff import diff_trees

    repo = Repo.open(str(store_env.store))
    try:  # the pages both jobs share are skipped unread: a few of ~20 differ
        roots = [repo.record("job", j).root_id for j in "ab"]
        report = diff_trees(repo, *roots)
        assert len(report.added) + len(report.removed) + len(report.changed) == 3
        assert report.subtrees_skipped >= len(pages) - 4, (report, len(pages))
    finally:
        repo.close()
    assert run_cli(["verify"]).code == 0
    assert run_cli(["rm", "a"]).code == 0
    assert run_cli(["gc"]).code == 0
    verified = run_cli(["verify"])
    assert verified.code == 0, verified.out
    shutil.rmtree(out)
    assert run_cli(["cp", "-r", "/jobs/b/", str(out)]).code == 0
    assert _listing(out) == _listing(src)
    pulled = tmp_path / "pulled"
    for _ in range(2):  # again: what is there already is compared with the job's listing
        assert run_cli(["pull", "b", "-d", str(pulled)]).code == 0
        assert _listing(pulled / "b") == _listing(src)


def test_verify_names_a_missing_page_and_gc_refuses(run_cli, store_env, tmp_path, paged) -> None:
    from c3fs.repo import Repo

    src = tmp_path / "src"
    _make(src, files=400)
    assert run_cli(["push", str(src), "-p", "p", "-j", "a"]).code == 0
    repo = Repo.open(str(store_env.store))
    try:
        page = _pages(repo, "/jobs/a", "big")[1]
        from c3fs.index.marks import MarkSet
        from c3fs.jobs.maintenance import walk_blobs

        with MarkSet() as walked:
            trees = {blob for _, blob, kind in walk_blobs(repo, repo.record("job", "a").root_id,
                                                           walked) if kind == 1}
        assert page in trees  # gc's reachability follows the pages
    finally:
        repo.close()
    # a crafted job whose paged directory names a page the store does not hold
    def build(add):
        first = add(TREE, encode_tree([_entry(b"a"), _entry(b"b")]))
        index = msgspec.msgpack.encode([PAGED, [[b"a", first, 2], [b"c", b"\7" * 32, 1]]])
        return add(TREE, index)

    craft_job(store_env.store, "holey", build, project="p")
    result = run_cli(["verify", "holey"])
    assert result.code == 6 and "0707070707" in result.out and "page 1" in result.out, result.out
    assert run_cli(["ls", "/jobs/holey/a"]).code == 0  # the pages that are there still read
    assert run_cli(["gc"]).code != 0


LIBC = ctypes.CDLL(None, use_errno=True)


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


LIBC.opendir.restype = ctypes.c_void_p
LIBC.readdir.restype = ctypes.POINTER(_Dirent)
LIBC.readdir.argtypes = LIBC.telldir.argtypes = LIBC.closedir.argtypes = [ctypes.c_void_p]
LIBC.telldir.restype = ctypes.c_long
LIBC.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]


def _read_names(path: Path, count: int | None = None, at: int | None = None):
    """Names by readdir(3), `count` of them from position `at` (seekdir); and telldir."""
    handle = LIBC.opendir(os.fsencode(path))
    assert handle
    try:
        if at is not None:
            LIBC.seekdir(handle, at)
        found = []
        while count is None or len(found) < count:
            item = LIBC.readdir(handle)
            if not item:
                break
            name = item.contents.d_name
            if name not in (b".", b".."):
                found.append(name)
        return found, LIBC.telldir(handle)
    finally:
        LIBC.closedir(handle)


@pytest.mark.fuse
@pytest.mark.skipif(not fuse_works(), reason="FUSE is unavailable")
def test_a_paged_directory_through_a_mount(run_cli, store_env, tmp_path, paged) -> None:
    src = tmp_path / "src"
    _make(src)
    assert run_cli(["push", str(src), "-p", "p", "-j", "a"]).code == 0
    names = sorted(os.fsencode(p.name) for p in (src / "big").iterdir())
    with mount(dict(os.environ), tmp_path / "m", "/jobs/a") as m:
        big = m / "big"
        assert (big / "f01499").read_bytes() == (src / "big" / "f01499").read_bytes()  # lookup
        assert not (big / "f01499y").exists() and not (big / "a").exists()
        assert sorted(os.listdir(os.fsencode(big))) == names  # readdir across pages
        head, where = _read_names(big, 250)  # readdir resumed at an offset (seekdir)
        rest, _ = _read_names(big, at=where)
        assert head + rest == names
        assert _listing(big) == _listing(src / "big")  # stat of every entry (ls -l)
        for name in names[::97]:
            path = big / os.fsdecode(name)
            if not path.is_symlink() and path.is_file():
                assert path.read_bytes() == (src / "big" / os.fsdecode(name)).read_bytes()
        out = tmp_path / "out"
        subprocess.run(["cp", "-r", str(m), str(out)], check=True)
        assert _listing(out) == _listing(src)
        found = subprocess.run(["find", str(m)], capture_output=True, check=True).stdout
        assert len(found.splitlines()) == len(_listing(src)) + 1


def test_the_mount_rebuilds_a_forgotten_node_of_a_paged_directory(run_cli, store_env, tmp_path,
                                                                  paged) -> None:
    """The inode table keeps (parent, index) rows: an entry of a paged directory is found
    again by its index through its page, read in a worker thread as for any tree."""
    from c3fs.fuse.inodes import Inodes
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    src = tmp_path / "src"
    _make(src, files=700)
    assert run_cli(["push", str(src), "-p", "p", "-j", "a"]).code == 0
    repo = Repo.open(str(store_env.store))
    try:
        vfs = Vfs(repo, "/jobs/a")
        inodes = Inodes(vfs, vfs.root)
        big = vfs.lookup(vfs.root, b"big")
        inodes.remember(big)
        wanted = [vfs.lookup(big, b"f%05d" % i) for i in (0, 99, 350, 699)]
        wanted.append(vfs.lookup(big, b"sub"))
        for node in wanted:
            inodes.remember(node)
        assert {node.index for node in wanted} != {-1} and len(repo.tree(big.tree_id).pages) > 3
        repo.blobs._cache.clear()  # every tree and page forgotten
        inodes._files.discard([node.ino for node in wanted])  # (as after 256 other lookups)
        for node in wanted:
            loaded: dict = {}
            reads = 0
            while not hasattr(found := inodes.cached(node.ino, loaded), "ino"):
                loaded[found] = repo.tree(found, False)  # what the mount does in a thread
                reads += 1
            assert (found.ino, found.entry, found.index) == (node.ino, node.entry, node.index)
            assert reads <= 2
        assert vfs.lookup_cached(big, b"f00350") is not None  # its page is in memory
        repo.blobs._cache.clear()
        repo.tree(big.tree_id, check=False)  # the index only
        assert vfs.lookup_cached(big, b"f00350") is None  # (the mount then asks a thread)
        assert vfs.lookup(big, b"f00350").entry == wanted[2].entry
        assert vfs.lookup_cached(big, b"f00350") is not None
    finally:
        repo.close()


def test_the_api_walk_and_the_catalog_read_a_paged_directory(run_cli, store_env, tmp_path,
                                                            paged) -> None:
    from starlette.testclient import TestClient

    import c3fs
    from c3fs.repo import Repo
    from c3fs.web.app import ENTRIES, make_app

    src = tmp_path / "src"
    _make(src, files=ENTRIES + 300)
    assert run_cli(["push", str(src), "-p", "p", "-j", "a"]).code == 0
    with c3fs.Store(store_env.store) as store:
        walked = [info.path for info in store.walk("/jobs/a")]
        big = [w for w in walked if w.startswith("/jobs/a/big/") and w.count("/") == 4]
        assert big == sorted(big) and len(big) == len(list((src / "big").iterdir()))
        assert sorted(w.removeprefix("/jobs/a/") for w in walked[1:]) == \
            sorted(p for p, _, _ in _listing(src))
        assert len(store.ls("/jobs/a/big")) == len(list((src / "big").iterdir()))
    repo = Repo.open(str(store_env.store))
    try:
        client = TestClient(make_app(repo))
        second = client.get("/browse/jobs/a/big/", params={"page": 2})
        assert second.status_code == 200
        assert "f00500" in second.text and "f00499" not in second.text and "sub" in second.text
        past = client.get("/browse/jobs/a/big/", params={"page": 9})  # the last page
        assert "f00500" in past.text and "f00499" not in past.text
    finally:
        repo.close()


def _peak_rss_kib(argv: list[str]) -> int:
    """The peak RSS of a command, from GNU time (its own small process forks it)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *argv], capture_output=True, text=True,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    return int(proc.stderr.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="needs GNU time")
def test_push_memory_does_not_grow_with_one_directory(store_env, tmp_path, monkeypatch) -> None:
    """A flat directory ten times bigger costs push no more memory: its names are sorted in
    runs on disk, its entries written a page at a time (before, ~1 KiB an entry)."""
    from tests.fusehelp import C3FS

    monkeypatch.setenv("C3FS_TREE_PAGE", "2000")
    peaks = {}
    for files in (15_000, 150_000):
        flat = tmp_path / f"src{files}" / "flat"
        flat.mkdir(parents=True)
        fd = os.open(flat, os.O_RDONLY)
        for i in range(files):
            os.close(os.open(b"f%07d" % i, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.close(fd)
        peaks[files] = _peak_rss_kib([C3FS, "push", str(flat.parent), "-p", "p", "-j", f"f{files}"])
    assert peaks[150_000] < peaks[15_000] + 24 * 1024, peaks
    listed = subprocess.run([C3FS, "ls", "/jobs/f150000/flat"], capture_output=True, check=True,
                            env=dict(os.environ)).stdout.split()
    assert len(listed) == 150_000 and listed[-1] == b"f0149999"
