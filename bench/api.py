"""`python -m bench.api`: one file read through the Python API and fsspec, beside a native
read of the same bytes from local disk and beside `FileReader` itself (what the API wraps),
in one run; then the memory a whole-file read takes, per chunk-cache size.

    python -m bench.api                    # 256 MiB, 5 repeats
    python -m bench.api --size 1024 --repeat 3

Warm page cache throughout (the store's packs and the native file alike): this measures the
API's own cost over the reader, not the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

MiB = 1024 * 1024


def _native(path: str) -> Callable[[], None]:
    def run() -> None:
        with open(path, "rb", buffering=0) as f:
            while f.read(MiB):
                pass
    return run


def _cases(store, native_path: str, path: str) -> dict[str, Callable[[], None]]:
    import fsspec

    from c3fs.vfs import Vfs

    def reader() -> None:
        vfs = Vfs(store.repo)
        file_reader, offset = vfs.open(vfs.resolve(path)), 0
        while data := file_reader.read(offset, MiB):
            offset += len(data)

    def api_read() -> None:
        with store.open(path) as f:
            while f.read(MiB):
                pass

    def api_readinto() -> None:
        buffer = bytearray(MiB)
        with store.open(path) as f:
            while f.readinto(buffer):
                pass

    fs = fsspec.filesystem("c3fs", store=store)

    def fsspec_open() -> None:
        with fs.open(path) as f:
            while f.read(MiB):
                pass

    return {"native read(1 MiB)": _native(native_path), "FileReader.read": reader,
            "c3fs.open read(1 MiB)": api_read, "c3fs.open readinto": api_readinto,
            "fsspec open read(1 MiB)": fsspec_open}


def _memory(root: str, cache_mib: int) -> str:
    """Peak RSS over the start while one process reads the whole file (sampled every 5 ms)."""
    code = f"""
import os, threading, time, psutil, c3fs
proc, MiB = psutil.Process(), 1 << 20
store = c3fs.Store({root + '/store'!r}, cache_bytes={cache_mib} * MiB)
start = proc.memory_info().rss; peak = [start]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
with store.open("/jobs/job_bench/w.bin") as f:
    while f.read(MiB): pass
done.set(); print(f"{{(peak[0] - start) / MiB:.0f}}")
"""
    env = dict(os.environ, C3FS_CACHE_DIR=root + "/cache")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--size", type=int, default=256, help="file size in MiB")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="c3fs-bench-api-")
    os.environ["C3FS_CACHE_DIR"] = root + "/cache"
    src = os.path.join(root, "src")
    os.makedirs(src)
    native = os.path.join(src, "w.bin")
    with open(native, "wb") as f:
        for _ in range(args.size):
            f.write(os.urandom(MiB))
    import c3fs

    store = c3fs.Store(root + "/store", create=True)
    store.push(src, project="bench", job="job_bench")
    cases = _cases(store, native, "/jobs/job_bench/w.bin")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeat):  # interleaved: load changes hit every case alike
        for name, run in cases.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    load = os.getloadavg()[0]
    print(f"{args.size} MiB file, {args.repeat} repeats, load {load:.1f} "
          f"({threading.active_count()} threads)\n")
    print(f"{'case':26} {'median s':>9} {'min-max':>13} {'MiB/s':>7} {'vs native':>9} {'vs reader':>9}")
    native_s = statistics.median(times["native read(1 MiB)"])
    reader_s = statistics.median(times["FileReader.read"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:26} {median:9.3f} {min(values):6.3f}-{max(values):6.3f} "
              f"{args.size / median:7.0f} {median / native_s:9.2f} {median / reader_s:9.2f}")
    store.close()
    for cache in (128, 16):
        print(f"\nwhole-file read, chunk cache {cache} MiB: peak RSS +{_memory(root, cache)} MiB")


if __name__ == "__main__":
    main()
