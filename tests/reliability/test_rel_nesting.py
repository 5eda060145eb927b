"""Nesting, at any depth and from any source: no process-wide state, no crash, no recursion.

A directory nested thousands of levels deep is pushed, listed, copied and read through a
mount with the interpreter's default recursion limit; every nesting bomb of the hostile
suite is decoded in a process that has first imported every module the CLI and the mount
daemon import (so no import order can hide a crash), and must end in a typed error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fusehelp import fuse_works, mount

ROOT = Path(__file__).resolve().parents[2]
DEPTH = 5000  # 10,001-byte paths: past the recursion limit and past PATH_MAX
COPYABLE = 1500  # past the recursion limit, within PATH_MAX (3,001-byte paths)
LEAF = b"deep leaf\n" * 1000

IMPORT_EVERYTHING = textwrap.dedent("""
    import importlib, pkgutil, signal, sys
    limit = sys.getrecursionlimit()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                 signal.SIGPIPE, signal.SIGCHLD)}
    import c3fs, c3fs_cli, c3fs_cli.main  # c3fs_cli.main first: it registers the commands
    modules = []
    for package in (c3fs, c3fs_cli):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)
                modules.append(info.name)
""")


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_importing_every_module_changes_no_process_state() -> None:
    proc = python(IMPORT_EVERYTHING + textwrap.dedent("""
        after = {s: signal.getsignal(s) for s in handlers}
        print(len(modules), sys.getrecursionlimit() == limit, after == handlers)
    """))
    assert proc.returncode == 0, proc.stderr
    count, same_limit, same_handlers = proc.stdout.split()
    assert int(count) > 30  # the walk found the packages
    assert (same_limit, same_handlers) == ("True", "True")


def bombs() -> list[bytes]:
    """The hostile suite's nesting and size bombs, and closed-schema ones: nesting where a
    tree or a trailer has no field for it (an extra array item, an unknown field)."""
    from reliability.test_rel_hostile import JSON_BOMBS, MSGPACK_BOMBS

    deep_array = b"\x91" * 200_000 + b"\x01"
    return [*JSON_BOMBS, *MSGPACK_BOMBS,
            b'{"a":' * 200_000, b"[" * 1_000_000,
            b'{"id": "x", "extra": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
            b"\x92\x01" + deep_array,  # a tree whose entries nest
            b"\x93\x01\x90" + deep_array,  # a tree with an extra, nested item
            b"\x91\x97\x00" + b"\xc4\x20" + b"\0" * 32 + b"\x08\x00\x00\x00" + deep_array]


DECODE_EVERY_BOMB = IMPORT_EVERYTHING + textwrap.dedent("""
    import json
    from c3fs.errors import C3fsError
    from c3fs.objects.job import decode_record
    from c3fs.objects.tree import EncodedTree, decode_tree
    from c3fs.objects.pack import FOOTER, MAGIC, read_trailer
    from c3fs.objects.nesting import check_json_depth
    from c3fs.store.store import Store
    import blake3

    class Mem:
        url = "mem://bombs"
        def __init__(self, data): self.data = data
        def get(self, key, offset=0, length=None): return self.data

    def pack(trailer):
        return MAGIC + trailer + FOOTER.pack(len(trailer), blake3.blake3(trailer).digest(),
                                             b"C3PKEND\\n")

    decoders = {"record": decode_record, "tree": decode_tree,
                "encoded tree": lambda d: EncodedTree(d).check(),
                "trailer": lambda d: read_trailer(pack(d)),
                "config": lambda d: Store.open(Mem(d), create=False),
                "lock": lambda d: check_json_depth(d, "lock")}
    results = []
    for path in sys.argv[1:]:
        data = open(path, "rb").read()
        for name, decode in decoders.items():
            try:
                decode(data)
                results.append([name, "ok"])
            except C3fsError as exc:
                results.append([name, type(exc).__name__])
            except BaseException as exc:
                results.append([name, "UNTYPED " + type(exc).__name__ + ": " + str(exc)[:80]])
    print(json.dumps(results))
""")


def test_every_bomb_is_a_typed_error_after_every_import(tmp_path: Path) -> None:
    paths = []
    for i, bomb in enumerate(bombs()):
        path = tmp_path / f"bomb{i}"
        path.write_bytes(bomb)
        paths.append(str(path))
    proc = python(DECODE_EVERY_BOMB, *paths)
    assert proc.returncode == 0, f"exit {proc.returncode} (a signal if < 0): {proc.stderr[-2000:]}"
    results = json.loads(proc.stdout)
    assert len(results) == 6 * len(paths)
    untyped = [r for r in results if r[1].startswith("UNTYPED")]
    assert not untyped
    assert all(r[1] != "ok" for r in results if r[0] != "lock")  # nothing decodes as valid


def test_json_depth_counts_brackets_outside_strings_only() -> None:
    from c3fs.errors import FormatError
    from c3fs.objects.nesting import check_json_depth

    check_json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[[[[[[[["}', "doc", limit=1)
    check_json_depth(b'{"a": [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}]}', "doc", limit=3)
    with pytest.raises(FormatError, match="nested deeper than 3"):
        check_json_depth(b'{"a": [{"b": [1]}]}', "doc", limit=3)


# a directory nested thousands of levels deep ----------------------------------------------
def make_nested(top: Path, depth: int) -> None:
    """top/d/d/.../d (depth levels) with `mid.txt` halfway and `leaf.txt` at the bottom, made
    relative to each parent (the whole path is longer than PATH_MAX)."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(depth):
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if level == depth // 2:
                write_at(fd, "mid.txt", b"middle\n")
            os.close(fd)
            fd = below
        write_at(fd, "leaf.txt", LEAF)
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_at_depth(top: Path, depth: int, name: str) -> bytes:
    """The bytes of top/d/.../d/name, reached one directory at a time."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = below
        file_fd = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            return os.read(file_fd, 1 << 20)
        finally:
            os.close(file_fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    from c3fs.fsutil import remove_tree

    remove_tree(path)
    assert not path.exists()


@pytest.fixture
def deep_job(tmp_path: Path, c3fs_bin) -> str:
    src = tmp_path / "src"
    make_nested(src, DEPTH)
    try:
        result = c3fs_bin("push", str(src), "-p", "deep", "-j", "deepjob")
        assert result.code == 0, result.err
        assert "2 files" in result.err + result.out
    finally:
        remove(src)
    return "/jobs/deepjob"


@pytest.mark.slow
def test_deep_tree_push_ls_cp(deep_job: str, tmp_path: Path, c3fs_bin) -> None:
    bottom = deep_job + "/d" * DEPTH
    listed = c3fs_bin("ls", bottom)
    assert (listed.code, listed.out.split()) == (0, ["leaf.txt"]), listed.err
    cat = c3fs_bin("cp", bottom + "/leaf.txt", str(tmp_path / "leaf.txt"))
    assert cat.code == 0 and (tmp_path / "leaf.txt").read_bytes() == LEAF, cat.err

    out = tmp_path / "out"  # within PATH_MAX: copied whole
    copied = c3fs_bin("cp", "-r", deep_job + "/d" * (DEPTH - COPYABLE), str(out))
    assert copied.code == 0, copied.err
    assert read_at_depth(out, COPYABLE, "leaf.txt") == LEAF
    remove(out)

    whole = c3fs_bin("cp", "-r", deep_job, str(out))  # past PATH_MAX: one line, exit 4
    assert whole.code == 4
    assert "longer than this system allows" in whole.err
    assert len(whole.err.strip().splitlines()) == 1 and len(whole.err) < 400
    assert "Traceback" not in whole.err
    remove(out)


@pytest.mark.slow
@pytest.mark.fuse
@pytest.mark.skipif(not fuse_works(), reason="needs /dev/fuse and fusermount3")
def test_deep_tree_through_a_mount(deep_job: str, tmp_path: Path, store_env) -> None:
    with mount(dict(os.environ), tmp_path / "mnt", deep_job) as mnt:
        found = subprocess.run(["find", str(mnt)], capture_output=True, timeout=300)
        assert found.returncode == 0, found.stderr[-500:]
        assert found.stdout.count(b"\n") == DEPTH + 3  # the root, every d, mid.txt, leaf.txt
        assert read_at_depth(mnt, DEPTH, "leaf.txt") == LEAF
        assert read_at_depth(mnt, DEPTH // 2, "mid.txt") == b"middle\n"
