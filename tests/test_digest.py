"""A file's digest is the blake3 of its bytes (what `b3sum` prints): computed during push, kept
in the tree (tree version 2), served as `user.c3fs.digest`, checked by `verify`; trees
written before it (version 1) keep working."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import msgspec
import pytest
from crafted import craft_job
from fusehelp import mount

from c3fs.objects.pack import CHUNK, TREE
from c3fs.objects.tree import FILE, Entry, file_digest
from c3fs.reader import FileReader

MiB = 1024 * 1024


def b3sum(path: Path) -> str:
    return blake3.blake3(path.read_bytes()).hexdigest()


def make_files(src: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    files = {
        "empty": b"",
        "small.txt": b"hello\n",
        "one-chunk.bin": rng.randbytes(200_000),
        "many-chunks.bin": rng.randbytes(5 * MiB + 3),
        "sub/again.bin": rng.randbytes(3 * MiB),
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return files


def job_entries(repo, job: str) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    stack = [("", bytes.fromhex(repo.record("job", job).root))]
    while stack:
        prefix, tree_id = stack.pop()
        for entry in repo.tree(tree_id).entries:
            name = prefix + entry.name.decode()
            if entry.is_dir:
                stack.append((name + "/", entry.target))
            else:
                found[name] = entry
    return found


def opened(store_env):
    from c3fs.repo import Repo

    return Repo.open(str(store_env.store))


def test_push_keeps_the_digest_of_every_file_of_two_or_more_chunks(run_cli, store_env, tmp_path):
    src = tmp_path / "src"
    files = make_files(src)
    assert run_cli(["push", str(src), "-p", "p", "-j", "d1"]).code == 0
    repo = opened(store_env)
    try:
        entries = job_entries(repo, "d1")
        for name, data in files.items():
            entry = entries[name]
            if len(entry.sizes) > 1:
                assert entry.digest == blake3.blake3(data).digest(), name
            else:  # one chunk or none: its id is already the digest, nothing more is kept
                assert entry.digest == b"" and entry.chunks in (b"", blake3.blake3(data).digest())
            assert file_digest(entry) == blake3.blake3(data).digest()
        assert len(entries["many-chunks.bin"].sizes) > 1
        assert repo.tree(bytes.fromhex(repo.record("job", "d1").root)).version == 2
    finally:
        repo.close()
    assert run_cli(["verify", "d1"]).code == 0


PARTS = [random.Random(1).randbytes(70_000), random.Random(2).randbytes(50_000)]
CONTENT = b"".join(PARTS)


def two_chunk_file(name: bytes, version: int, digest: bytes = b""):
    """build(add) for craft_job: a job root holding one file of two chunks, written as a tree
    of `version` (1: as c3fs 0.1 wrote it, 8 fields an entry) with `digest` (version 2)."""

    def build(add) -> bytes:
        ids = b"".join(add(CHUNK, p) for p in PARTS)
        sizes = [len(p) for p in PARTS]
        fields = [name, FILE, 0o644, len(CONTENT), 0, b"", ids, sizes]
        return add(TREE, msgspec.msgpack.encode([version, [fields + [digest] * (version > 1)]]))

    return build


def test_a_version_1_tree_reads_and_its_digest_is_computed(run_cli, store_env, tmp_path):
    craft_job(store_env.store, "old", two_chunk_file(b"old.bin", 1), project="p")
    assert run_cli(["cp", "/jobs/old/old.bin", str(tmp_path / "out")]).code == 0
    assert (tmp_path / "out").read_bytes() == CONTENT
    assert run_cli(["verify", "old"]).code == 0
    repo = opened(store_env)
    try:
        tree = repo.tree(bytes.fromhex(repo.record("job", "old").root))
        (entry,) = tree.entries
        assert tree.version == 1 and entry.digest == b"" and file_digest(entry) is None
        assert FileReader(repo.blobs, entry).digest() == blake3.blake3(CONTENT).digest()
    finally:
        repo.close()


def test_verify_finds_a_file_whose_digest_is_wrong(run_cli, store_env):
    craft_job(store_env.store, "liar", two_chunk_file(b"lie.bin", 2, b"\x07" * 32), project="p")
    craft_job(store_env.store, "honest", two_chunk_file(
        b"ok.bin", 2, blake3.blake3(CONTENT).digest()), project="p")
    assert run_cli(["verify", "honest"]).code == 0
    result = run_cli(["verify", "liar"])
    assert result.code == 6
    assert "DAMAGED digest 0707070707070707" in result.out and "job liar:/lie.bin" in result.out


@pytest.mark.fuse
def test_the_mount_serves_b3sum_of_every_file(run_cli, store_env, tmp_path):
    src = tmp_path / "src"
    files = make_files(src)
    assert run_cli(["push", str(src), "-p", "p", "-j", "d2"]).code == 0
    craft_job(store_env.store, "old", two_chunk_file(b"old.bin", 1), project="p")
    with mount(dict(os.environ), tmp_path / "m") as m:
        for name in files:
            path = m / "jobs" / "d2" / name
            assert os.getxattr(path, "user.c3fs.digest").decode() == b3sum(path), name
            assert b3sum(path) == blake3.blake3(files[name]).hexdigest()
        old = m / "jobs" / "old" / "old.bin"
        assert "user.c3fs.digest" in os.listxattr(old)
        for _ in range(2):  # computed by reading the file, then remembered
            assert os.getxattr(old, "user.c3fs.digest").decode() == b3sum(old)
