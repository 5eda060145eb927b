"""Source trees for round-trip tests, and a snapshot that compares two trees exactly.

Paths and names are bytes throughout, so non-UTF-8 names survive. `snapshot` records, for
every entry below a root (the root itself excluded): the kind, permission bits, mtime in
nanoseconds, size, and a sha256 of a file's content or a symlink's target. Symlink modes are
left out (Linux has none to restore); special files are recorded as such, so a copy that
"restored" a fifo would show up.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import stat
from dataclasses import dataclass, replace

KiB = 1024
MiB = 1024 * 1024
BASE_NS = 1_700_000_000_123_456_789  # a fixed mtime with nanoseconds that are not zero

ODD_NAMES: list[bytes] = [
    b"with space",
    b" leading and trailing space ",
    "ünïcødé-名前-🙂".encode(),
    b"\xff\xfe-not-utf8-\x80",
    b"-rf",
    b"--help",
    b"x" * 255,
    "é".encode() * 127,  # 254 bytes of two-byte characters
    b"tab\there",
    b"new\nline",
    b"back\\slash",
    b"*?[glob]",
    b"...",
    b".hidden",
    b"$HOME",
    b"'quote\"",
]


@dataclass(frozen=True)
class Meta:
    kind: str  # "file", "dir", "link" or "special"
    mode: int | None
    mtime_ns: int | None
    size: int
    content: bytes  # sha256 of a file, the target of a link, b"" otherwise


def rand_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_file(path: bytes | str, data: bytes = b"", mode: int = 0o644,
               mtime_ns: int | None = None) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def write_random_file(path: bytes | str, size: int, seed: int, piece: int = 8 * MiB) -> None:
    """A file of `size` pseudo-random bytes, written a piece at a time (bounded memory)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(piece, left)
            f.write(rng.randbytes(n))
            left -= n


def make_symlink(target: bytes | str, path: bytes | str, mtime_ns: int | None = None) -> None:
    os.symlink(target, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def set_dir_mtimes(root: bytes | str, start_ns: int = BASE_NS) -> None:
    """Give every directory below `root` a distinct mtime, deepest first (so none moves)."""
    dirs = [d for d, _, _ in os.walk(os.fsencode(root)) if d != os.fsencode(root)]
    for i, path in enumerate(reversed(dirs)):
        os.utime(path, ns=(start_ns + i * 1_000_001, start_ns + i * 1_000_001))


def odd_tree(root: bytes | str) -> None:
    """Odd names, odd modes and mtimes, empty file and dir, symlinks of every sort."""
    root = os.fsencode(root)
    os.makedirs(root, exist_ok=True)
    for i, name in enumerate(ODD_NAMES):
        write_file(os.path.join(root, name), name * 3, 0o644, BASE_NS + i)
    odd = os.path.join(root, b"odd dir \xff")
    os.mkdir(odd)
    for i, name in enumerate(ODD_NAMES[:6]):
        os.mkdir(os.path.join(odd, name))
        write_file(os.path.join(odd, name, name), b"inner " + name, 0o600, BASE_NS - i)
    write_file(os.path.join(root, b"empty"), b"", 0o644, BASE_NS)
    os.mkdir(os.path.join(root, b"empty-dir"))
    write_file(os.path.join(root, b"exec.sh"), b"#!/bin/sh\necho hi\n", 0o755, BASE_NS + 7)
    write_file(os.path.join(root, b"readonly"), b"ro", 0o444, BASE_NS + 8)
    write_file(os.path.join(root, b"setgid-sticky"), b"bits", 0o2755, BASE_NS + 9)
    write_file(os.path.join(root, b"before-1970"), b"old", 0o644, -1_500_000_000_123)
    write_file(os.path.join(root, b"year-2096"), b"new", 0o644, 4_000_000_000_123_456_789)
    write_file(os.path.join(root, b"compressible.txt"), b"metric,0.5\n" * 50_000, 0o644, BASE_NS)
    write_file(os.path.join(root, b"random.bin"), rand_bytes(700 * KiB, 1), 0o640, BASE_NS)
    ro_dir = os.path.join(root, b"ro-dir")
    os.mkdir(ro_dir)
    write_file(os.path.join(ro_dir, b"inside"), b"in a read-only dir", 0o444, BASE_NS)
    _links(root)
    set_dir_mtimes(root)
    os.chmod(ro_dir, 0o555)


def _links(root: bytes) -> None:
    links = os.path.join(root, b"links")
    os.mkdir(links)
    make_symlink(b"../exec.sh", os.path.join(links, b"relative"), BASE_NS + 11)
    make_symlink(b"/etc/passwd", os.path.join(links, b"absolute-outside"), BASE_NS + 12)
    make_symlink(b"../../../../outside-the-tree", os.path.join(links, b"escaping"), BASE_NS + 13)
    make_symlink(b"does/not/exist", os.path.join(links, b"dangling"), BASE_NS + 14)
    make_symlink(b"../odd dir \xff", os.path.join(links, b"to-dir"), BASE_NS + 15)
    make_symlink(b"\xfe\xff target", os.path.join(links, b"non-utf8-target"), BASE_NS + 16)
    make_symlink(b"loop", os.path.join(links, b"loop"), BASE_NS + 17)
    make_symlink(b"/", os.path.join(links, b"slash"), BASE_NS + 19)
    make_symlink(b"x" * 1000, os.path.join(links, b"long-target"), BASE_NS + 18)


def deep_tree(root: bytes | str, depth: int) -> bytes:
    """`depth` nested directories with a file at each level; returns the deepest dir."""
    path = os.fsencode(root)
    os.makedirs(path, exist_ok=True)
    for level in range(depth):
        path = os.path.join(path, b"d")
        os.mkdir(path)
        write_file(os.path.join(path, b"f"), b"level %d" % level, 0o644, BASE_NS + level)
    set_dir_mtimes(root)
    return path


def many_files(root: bytes | str, count: int, per_dir: int = 500, seed: int = 0) -> None:
    """`count` small files (metrics-like: 20 B to 4 KiB), `per_dir` of them per directory."""
    rng = random.Random(seed)
    root = os.fsencode(root)
    for i in range(count):
        folder = os.path.join(root, b"part-%03d" % (i // per_dir))
        if i % per_dir == 0:
            os.makedirs(folder, exist_ok=True)
        body = b"step=%d loss=%f\n" % (i, rng.random()) * rng.randint(1, 200)
        write_file(os.path.join(folder, b"m-%05d.txt" % i), body, 0o644, BASE_NS + i)
    set_dir_mtimes(root)


def add_special_files(root: bytes | str) -> list[bytes]:
    """A fifo and a unix socket (and a char device when mknod is allowed). Returns names."""
    root = os.fsencode(root)
    os.mkfifo(os.path.join(root, b"a-fifo"))
    names = [b"a-fifo"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:
        os.chdir(root)  # a relative path keeps sun_path under its 108-byte limit
        sock.bind("a-socket")
    finally:
        os.chdir(cwd)
        sock.close()
    names.append(b"a-socket")
    try:
        os.mknod(os.path.join(root, b"a-chardev"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        names.append(b"a-chardev")
    except PermissionError:
        pass
    return names


def _digest(path: bytes) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.digest()


def _meta(path: bytes, st: os.stat_result) -> Meta:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return Meta("file", mode, st.st_mtime_ns, st.st_size, _digest(path))
    if stat.S_ISDIR(st.st_mode):
        return Meta("dir", mode, st.st_mtime_ns, 0, b"")
    if stat.S_ISLNK(st.st_mode):
        return Meta("link", None, st.st_mtime_ns, 0, os.readlink(path))
    return Meta("special", mode, None, 0, b"")


def snapshot(root: bytes | str, link_mtimes: bool = True) -> dict[bytes, Meta]:
    """{relative path: Meta} for everything below `root` (iterative: any depth)."""
    root = os.fsencode(root)
    result: dict[bytes, Meta] = {}
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for item in it:
                child = os.path.join(rel, item.name) if rel else item.name
                meta = _meta(item.path, item.stat(follow_symlinks=False))
                if meta.kind == "link" and not link_mtimes:
                    meta = Meta("link", None, None, 0, meta.content)
                result[child] = meta
                if meta.kind == "dir":
                    stack.append(child)
    return result


def without_special(snap: dict[bytes, Meta]) -> dict[bytes, Meta]:
    return {path: meta for path, meta in snap.items() if meta.kind != "special"}


def as_copied(snap: dict[bytes, Meta]) -> dict[bytes, Meta]:
    """What `cp`/`pull` make of a tree by default: no special files, and modes without the
    setuid, setgid and sticky bits."""
    return {path: replace(meta, mode=meta.mode & 0o777) if meta.mode is not None else meta
            for path, meta in without_special(snap).items()}


def diff(expected: dict[bytes, Meta], actual: dict[bytes, Meta], limit: int = 10) -> list[str]:
    """Human-readable differences (empty when the trees are the same)."""
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if want != got:
            lines.append(f"{path!r}: expected {want}, got {got}")
    return lines[:limit]
