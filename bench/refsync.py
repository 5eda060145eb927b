"""`python -m bench.refsync`: what one index sync (a mount's poll, a command's start) costs in a
store of many job refs, with and without the ref change log (issue 16 item 4).

For each count N: a local store of N job refs written directly (no push), then, on the same
store, with `ref_log` 0 (a store from before the log: every poll lists every ref and pack)
and 1 (polls read the log): the first sync of a new index, a poll with no news, and a poll
that learns one job another machine pushed. Each time is the median of `--repeat`; beside it
the backend LIST calls, and the LIST requests S3 would get (1,000 keys a page).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import msgspec

from c3fs.index import Index
from c3fs.objects.job import JOB, JobRecord, encode_record
from c3fs.store.local import LocalBackend
from c3fs.store.store import REF_PREFIX, Store


class Counting(LocalBackend):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls = 0
        self.requests = 0  # as S3 would page them

    def list(self, prefix: str, after: str | None = None):
        keys = list(super().list(prefix, after))
        self.calls += 1
        self.requests += max(1, math.ceil(len(keys) / 1000))
        return iter(keys)


def record(name: str) -> JobRecord:
    return JobRecord(id=name, project="bench", created=1.0, root="ab" * 32)


def make_store(root: Path, refs: int) -> None:
    Store.open(LocalBackend(root))
    backend = LocalBackend(root)
    for n in range(refs):
        backend.put(f"{REF_PREFIX[JOB]}job_{n:07d}", encode_record(record(f"job_{n:07d}")),
                    sync=False)


def set_log(root: Path, on: bool) -> None:
    config = msgspec.json.decode((root / "config").read_bytes())
    config["ref_log"] = 1 if on else 0
    (root / "config").write_bytes(msgspec.json.encode(config))


def timed_sync(index: Index, store: Store) -> float:
    start = time.perf_counter()
    index.sync(store)
    return time.perf_counter() - start


def measure(root: Path, work: Path, log_on: bool, repeat: int, tag: str) -> dict:
    set_log(root, log_on)
    out: dict = {"log": log_on}
    firsts, polls, learns = [], [], []
    for n in range(repeat):
        backend = Counting(root)
        store = Store.open(backend)
        path = work / f"index-{tag}-{n}"
        index = Index(path, store.config.store_id)
        firsts.append(timed_sync(index, store))
        backend.calls = backend.requests = 0
        polls.append(timed_sync(index, store))
        out["poll_list_calls"], out["poll_s3_requests"] = backend.calls, backend.requests
        Store.open(LocalBackend(root)).create_ref(record(f"new_{tag}_{n}"))
        backend.calls = backend.requests = 0
        learns.append(timed_sync(index, store))
        assert index.record(JOB, f"new_{tag}_{n}") is not None
        out["learn_list_calls"], out["learn_s3_requests"] = backend.calls, backend.requests
        index.close()
        shutil.rmtree(path)
    out.update(first_sync_s=statistics.median(firsts), poll_s=statistics.median(polls),
               learn_one_s=statistics.median(learns))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refsync", description=__doc__)
    parser.add_argument("--refs", default="10000,100000", help="comma list of ref counts")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| refs | log | first sync | poll, no news | poll, 1 new job | LIST calls per poll "
          "| S3 LIST requests per poll (no news / 1 new) |")
    print("|---|---|---|---|---|---|---|")
    for refs in (int(r) for r in args.refs.split(",")):
        with tempfile.TemporaryDirectory(prefix="c3fs-refsync-") as tmp:
            root = Path(tmp, "store")
            start = time.perf_counter()
            make_store(root, refs)
            made = time.perf_counter() - start
            rows = [measure(root, Path(tmp), on, args.repeat, f"{int(on)}") for on in (False, True)]
        for row in rows:
            print(f"| {refs:,} | {'yes' if row['log'] else 'no (old store)'} | "
                  f"{row['first_sync_s']:.2f} s | {row['poll_s'] * 1000:.1f} ms | "
                  f"{row['learn_one_s'] * 1000:.1f} ms | {row['poll_list_calls']} | "
                  f"{row['poll_s3_requests']} / {row['learn_s3_requests']} |")
        print(f"(refs written in {made:.1f} s)")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
