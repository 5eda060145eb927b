"""`python -m bench.refsync`: what one index sync (a mount's poll, a command's start) costs in a
store of many job refs, with and without the ref change log (issue 16 item 4).

For each count N: a local store of N job refs written directly (no push), then, on the same
store, with `ref_log` 0 (a store from before the log: every poll lists every ref and pack)
and 1 (polls read the log): the first sync of a new index, a poll with no news, and a poll
that learns one job another machine pushed. Each time is the median of `--repeat`; beside it
the backend LIST calls, and the LIST requests S3 would get (1,000 keys a page).

`--s3` measures the same on an S3 store: `s3rver` (bench/s3rver, `make bench-peers`) behind
the latency proxy (`--delay-ms`, 20 by default), the refs PUT straight to the server first:
a new machine's first sync listing every ref (as an old store, or a store without a ref
snapshot), the same from the store's ref snapshot, a poll, and a poll learning one job;
with the requests the proxy counted for each.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def s3_store_url(bucket: str) -> str:
    return f"s3://{bucket}/store"


def s3_backend(endpoint: str, bucket: str):
    from bench.remote import KEY
    from c3fs.store.backend import RetryingBackend
    from c3fs.store.s3 import S3Backend

    return RetryingBackend(S3Backend(bucket, "store", endpoint=endpoint, region="us-east-1",
                                     access_key_id=KEY, secret_access_key=KEY))


def make_s3_store(endpoint: str, bucket: str, refs: int) -> None:
    """`refs` job refs PUT straight to the server (32 at once), as an existing store."""
    from bench.remote import client

    client(endpoint).create_bucket(Bucket=bucket)
    backend = s3_backend(endpoint, bucket)
    Store.open(backend)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda n: backend.put(f"{REF_PREFIX[JOB]}job_{n:07d}",
                                            encode_record(record(f"job_{n:07d}"))), range(refs)))


def put_s3_snapshot(endpoint: str, bucket: str, refs: int) -> None:
    """The ref snapshot a full listing of the store would store, made from the records the
    bench wrote (for sizes where s3rver's own listing is the cost: see --no-listing)."""
    from c3fs.objects import refsnap

    store = Store.open(s3_backend(endpoint, bucket))
    ms = int(time.time() * 1000)
    store.put_snapshot(ms, refsnap.encode(ms, (encode_record(record(f"job_{n:07d}"))
                                               for n in range(refs))))


def measure_s3(refs: int, repeat: int, delay_ms: float, work: Path,
               listing: bool = True) -> list[dict]:
    from bench.proxy import Proxy
    from bench.remote import S3rver

    server = S3rver(work / "s3rver").start()
    proxy = None
    try:
        start = time.perf_counter()
        make_s3_store(server.endpoint, "refs", refs)
        made = time.perf_counter() - start
        if not listing:
            put_s3_snapshot(server.endpoint, "refs", refs)
        proxy = Proxy(server.port, work / "proxy", delay_ms=delay_ms).start()
        rows = []
        for how in ("listing", "snapshot") if listing else ("snapshot",):
            firsts, polls, learns, counts = [], [], [], {}
            for n in range(repeat):
                store = Store.open(s3_backend(proxy.endpoint, "refs"))
                if how == "listing":  # a store that has no snapshot (yet)
                    for _, _, key in store.snapshots():
                        store.backend.delete(key)
                index = Index(work / f"index-{how}-{n}", store.config.store_id)
                before = proxy.requests()
                firsts.append(timed_sync(index, store))
                counts["first"] = proxy.requests() - before
                if how == "listing" and n == 0:  # that full listing stored a snapshot
                    counts["snapshots"] = len(store.snapshots())
                before = proxy.requests()
                polls.append(timed_sync(index, store))
                counts["poll"] = proxy.requests() - before
                Store.open(s3_backend(server.endpoint, "refs")).create_ref(
                    record(f"new_{how}_{n}"))
                before = proxy.requests()
                learns.append(timed_sync(index, store))
                counts["learn"] = proxy.requests() - before
                assert index.record(JOB, f"new_{how}_{n}") is not None
                assert len(index.record_names(JOB)) == refs + 1 + n + (
                    repeat if how == "snapshot" and listing else 0)
                index.close()
                shutil.rmtree(work / f"index-{how}-{n}")
            rows.append({"how": how, "first_sync_s": statistics.median(firsts),
                         "poll_s": statistics.median(polls),
                         "learn_one_s": statistics.median(learns), "requests": counts,
                         "made_s": made})
        return rows
    finally:
        if proxy:
            proxy.stop()
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refsync", description=__doc__)
    parser.add_argument("--refs", default="10000,100000", help="comma list of ref counts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--s3", action="store_true", help="an S3 store behind the latency proxy")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--no-listing", action="store_true",
                        help="--s3: skip the new machine that lists every ref (s3rver answers "
                             "each LIST page in time that grows with the bucket: ~6 s a page "
                             "at 100,000 keys); the snapshot is made from the records written")
    args = parser.parse_args(argv)
    if args.s3:
        return main_s3(args)
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


def main_s3(args: argparse.Namespace) -> int:
    print(f"load average {os.getloadavg()[0]:.1f}; s3rver behind the proxy, "
          f"{args.delay_ms:g} ms a request")
    print("| refs | new machine learns refs by | first sync | poll, no news | poll, 1 new job "
          "| requests (first / poll / 1 new) |")
    print("|---|---|---|---|---|---|")
    for refs in (int(r) for r in args.refs.split(",")):
        with tempfile.TemporaryDirectory(prefix="c3fs-refsync-s3-") as tmp:
            rows = measure_s3(refs, args.repeat, args.delay_ms, Path(tmp), not args.no_listing)
        for row in rows:
            r = row["requests"]
            print(f"| {refs:,} | {row['how']} | {row['first_sync_s']:.2f} s | "
                  f"{row['poll_s'] * 1000:.0f} ms | {row['learn_one_s'] * 1000:.0f} ms | "
                  f"{r['first']} / {r['poll']} / {r['learn']} |")
        print(f"(refs PUT in {rows[0]['made_s']:.1f} s; snapshots after the first full "
              f"listing: {rows[0]['requests'].get('snapshots')})")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
