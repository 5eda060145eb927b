"""The mount's compact inode table (c3fs/fuse/inodes.py) against a plain dict model."""

from __future__ import annotations

import random

import pytest

from c3fs.fuse.inodes import MIN_SLOTS, WHOLE, InodeTable


def test_rows_survive_collisions_growth_deletion_and_shrinking() -> None:
    rng = random.Random(7)
    table, model = InodeTable(), {}
    # few distinct home slots: long probe runs, so deletion must shift rows back correctly
    inos = [(rng.randrange(1 << 40) << 12) | (rng.randrange(4) << 2) | 2 for _ in range(3000)]
    for step in range(15_000):
        ino = rng.choice(inos)
        if ino not in model or rng.random() < 0.6:
            table.add(ino, 0, step)
            count = model.get(ino, (0, 0))[0] + 1
            model[ino] = (count, step)
        else:
            n = rng.randint(1, model[ino][0])
            gone = table.forget(ino, n)
            count = model[ino][0] - n
            assert gone == ([] if count else [ino])
            if count:
                model[ino] = (count, model[ino][1])
            else:
                del model[ino]
        if step % 3000 == 0:
            for known, (count, index) in model.items():
                assert table.row(known) == (0, index) and table.lookups(known) == count
    assert len(table) == len(model)
    for ino, (count, _) in list(model.items()):
        table.forget(ino, count)
    assert len(table) == 0 and table.slots == MIN_SLOTS  # shrunk back
    assert all(ino not in table for ino in inos)


def test_a_directory_row_stays_while_rows_below_need_it() -> None:
    table = InodeTable()
    parent, child, other = 0x1000_0006, 0x2000_000A, 0x3000_000E
    table.add(parent, 0, WHOLE)
    table.add(child, parent, 3)
    table.add(other, parent, 4)
    assert table.forget(parent, 1) == []  # the kernel forgot it first: still a parent
    assert table.lookups(parent) == 0 and parent in table
    assert table.forget(child, 1) == [child]
    assert table.forget(other, 1) == [other, parent]  # the last row below takes it along
    assert len(table) == 0
    table.forget(parent, 5)  # unknown: ignored
    assert len(table) == 0


def test_rows_cost_24_bytes_and_a_4_byte_slot_at_most_3_4_full() -> None:
    rng = random.Random(3)
    table = InodeTable()
    for i in range(200_000):
        table.add((rng.getrandbits(61) << 2) | 2, 0, i)
    assert table.nbytes == 24 * 200_000 + 4 * table.slots
    assert len(table) == 200_000 and 2 * len(table) <= table.slots


def test_rows_are_reused_and_compacted_and_parents_follow() -> None:
    """Freed rows are reused; when 3/4 are free the rest move to the front, and each row
    still names its parent (whose row moved too)."""
    rng = random.Random(5)
    table = InodeTable()
    parents = [(rng.getrandbits(61) << 2) | 2 for _ in range(8)]
    for parent in parents:
        table.add(parent, 0, WHOLE)
    children = {parent: [(rng.getrandbits(61) << 2) | 2 for _ in range(1000)]
                for parent in parents}
    for parent, inos in children.items():
        table.add_children(parent, inos, 0)
    rows = len(table._keys)
    for inos in children.values():  # forget 9 of every 10: rows freed, then compacted
        table.forget_many([(ino, 1) for i, ino in enumerate(inos) if i % 10], [])
    assert len(table) == 808 and len(table._keys) < rows // 4
    for parent, inos in children.items():
        assert all(table.row(ino) == (parent, i) for i, ino in enumerate(inos) if i % 10 == 0)
    rows = len(table._keys)
    again = children[parents[0]][1:6]
    table.add_children(parents[0], again, 1)
    assert len(table._keys) == rows and table.row(again[-1]) == (parents[0], 5)  # reused
    for parent, inos in children.items():  # the kernel forgets the directory, then the rest
        table.forget(parent, 1)
        table.forget_many([(ino, 1) for ino in inos if ino in table], [])
        assert parent not in table
    assert len(table) == 0


def test_add_of_one_entry_is_add_children_of_one() -> None:
    """`add` (one LOOKUP) has its own path: the same rows, counts, parents and rows below
    as `add_children` of a one-entry batch, through growth, reuse of freed rows and forgets."""
    rng = random.Random(11)
    one, batch = InodeTable(), InodeTable()
    parents = [(rng.getrandbits(61) << 2) | 2 for _ in range(4)]
    for parent in parents:
        one.add(parent, 0, WHOLE)
        batch.add_children(0, (parent,), WHOLE)
    inos = [(rng.getrandbits(40) << 12) | (rng.randrange(4) << 2) | 2 for _ in range(1000)]
    for step in range(5_000):
        ino = rng.choice(inos)
        parent = parents[(ino >> 12) % 4]
        if rng.random() < 0.7:
            one.add(ino, parent, step)
            batch.add_children(parent, (ino,), step)
        else:
            assert one.forget(ino, 1) == batch.forget(ino, 1)
    assert len(one) == len(batch) and one.slots == batch.slots
    for ino in inos + parents:
        assert one.row(ino) == batch.row(ino) and one.lookups(ino) == batch.lookups(ino)
    for column in ("_keys", "_parents", "_index", "_counts", "_below"):
        assert getattr(one, column) == getattr(batch, column), column


def test_a_listed_job_is_kept_as_its_name_and_made_again_on_demand(run_cli, store_env,
                                                                   tmp_path) -> None:
    """`ls -l /jobs/` of a whole-store mount looks up every job: each is remembered as its
    (kind, name), not a node (~650 B), and its node is made again from the index when a
    request needs it, or NotFound if the index has no such job. The listing opendir holds
    keeps a name, root id and mtime a job, a node made as each entry is read."""
    import tracemalloc

    from c3fs.errors import NotFound
    from c3fs.fuse.inodes import Inodes
    from c3fs.objects.job import JobRecord
    from c3fs.repo import Repo
    from c3fs.vfs import Vfs

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"hello")
    assert run_cli(["push", str(src), "-p", "p", "-j", "first"]).code == 0
    repo = Repo.open(str(store_env.store))
    try:
        root = repo.record("job", "first").root
        for i in range(2000):
            repo.store.create_ref(JobRecord(id=f"job-{i:05d}", project="p", created=2.0 + i,
                                            root=root))
        vfs = Vfs(repo)
        inodes = Inodes(vfs, vfs.root)
        jobs = vfs.lookup(vfs.root, b"jobs")
        inodes.remember(jobs)
        vfs.children(jobs)  # (the index's own caches filled)
        tracemalloc.start()
        try:
            listing = vfs.children(jobs)  # what opendir holds while `ls` reads it
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(listing) == 2001 and held / 2001 < 200, held / 2001  # (a node each: ~400 B)
        made = [(name, n.ino, n.tree_id, n.mtime_ns, n.ref) for name, n in listing]
        assert made == [(name, n.ino, n.tree_id, n.mtime_ns, n.ref)
                        for name, n in vfs.iter_record_children(jobs)]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _, node in listing:
                inodes.remember(node)
            inos = [node.ino for _, node in listing]
            del listing, node
            grown = tracemalloc.get_traced_memory()[0] - before - 8 * len(inos)
        finally:
            tracemalloc.stop()
        assert len(inodes._whole) == 1 and len(inodes._refs) == 2001
        assert grown / 2001 < 250, grown / 2001  # (a node each: ~900 B)
        job = inodes.find(inos[7])
        assert job is not None and job.ref == ("job", "job-00006") and job.tree_id == bytes.fromhex(root)
        sub = vfs.lookup(job, b"d")
        inodes.remember(sub)
        inodes._dirs.discard([job.ino, sub.ino])  # (as after 4,096 other directories)
        found = inodes.find(sub.ino)  # through its job's node, made again
        assert found is not None and found.tree_id == sub.tree_id and found.parent.ino == job.ino
        ghost = vfs.ref_root(JobRecord(id="ghost", project="p", created=1.0, root=root))
        inodes.remember(ghost)  # (a job the index no longer has)
        assert inodes.find(ghost.ino) is None
        with pytest.raises(NotFound):
            inodes.cached(ghost.ino)
        inodes.forget_many([(ino, 1) for ino in [*inos, ghost.ino, sub.ino]])
        assert not inodes._refs
    finally:
        repo.close()
