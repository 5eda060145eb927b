"""A real `c3fs gc` that holds a store's gc lock for as long as a test needs, shared by the
CLI's and the Python API's tests of a push waiting for gc (`lock_wait`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import C3FS_BIN
from fusehelp import wait_until


def gc_holding_the_store(store: Path, seconds: float) -> subprocess.Popen:
    """A real `c3fs gc` holding the store's gc lock for about `seconds` (it watches a mount
    lease of another host that nobody renews, as gc does before it removes such a lease),
    returned once its lock is in the store; its stdout and stderr go to files beside it."""
    lease = store / "locks" / f"mount-job-gone-{'0' * 16}"
    lease.parent.mkdir(exist_ok=True)
    lease.write_text(json.dumps({"host": "host-a", "pid": 1, "lease": seconds,
                                 "mountpoint": "/m"}))
    with open(store.parent / "gc.out", "wb") as out:
        gc = subprocess.Popen([str(C3FS_BIN), "gc"], stdout=out, stderr=subprocess.STDOUT)
    wait_until(lambda: (store / "locks" / "gc").exists() or gc.poll() is not None, "gc's lock")
    assert gc.poll() is None, (store.parent / "gc.out").read_text()
    return gc
