"""A store is untrusted input (issue 19): crafted refs, trees, records and names.

Each test writes what an attacker with write access to a store could (a ref file under
another name, a tree whose sizes lie, a setuid bit, shared subtrees, deep trees, odd files
under refs/jobs/, out-of-range record fields, escape sequences in names) and checks what
the user sees: the genuine data or a typed one-line error (exit 6 for damage), never a
traceback, wrong bytes or a write outside the destination; `verify` names each of them.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.job import JobRecord, encode_record
from c3fs.objects.pack import CHUNK
from c3fs.objects.tree import DIR, FILE, LINK, Entry
from reliability.relkit import Site
from reliability.test_rel_hostile import craft_job, file_entry, put_pack, raw_tree


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
