"""The machine's own ceilings, measured in every repeat of a run: what one core does per GB.

Each kernel runs alone in a child process (`python -m bench.ceilings FILE`), single-threaded,
over the first checkpoint held in memory and cut as c3fs cuts it (its store defaults):

    fastcdc      cutting (pyfastcdc `cut_buf`, c3fs's min/avg/max sizes)
    blake3       hashing each chunk (a chunk id)
    zstd-N enc   compressing each chunk, at c3fs's level and at squashfs's (3)
    zstd dec     decompressing each chunk (c3fs's level), into a fresh buffer (all kept)
    zstd dec, recycled
                 the same, each result dropped at once, so that malloc hands its memory to
                 the next (as in c3fs's readers, which keep nothing but the cache)
    first touch  writing once to memory the process never touched (an anonymous mmap):
                 page faults and zeroing, and on a virtual machine whatever the host does to
                 back a page the guest never used or gave back (seen: 3-7 µs a 4 KiB page,
                 ~0.2 on bare metal). Every path pays it for the page cache pages it fills
                 and for each fresh buffer: it is why `zstd dec` can read 4x slower than
                 `zstd dec, recycled` on such a machine.
    ingest floor fastcdc + blake3 + zstd enc at c3fs's level: CPU per GB no ingest can go below
    decode floor zstd dec + blake3 (verify): the same for every read of a compressed chunk
    decode floor, recycled
                 zstd dec, recycled + blake3

and, from the parent, `cat` of the whole v1 tree with a cold page cache (native read: the
disk's and the kernel's share of every tool's figure). Each is MB/s (of plain bytes) and
CPU-s/GB (user + system). They bound each path's CPU per GB: a tool's figure divided by its
floor says how much is overhead.
"""

from __future__ import annotations

import json
import mmap
import resource
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from bench.dataset import Manifest
from bench.measure import cat_files_timed, drop_caches

GB = 1e9
SQUASHFS_LEVEL = 3
DEFAULTS = {"chunk_min": 64 * 1024, "chunk_avg": 128 * 1024, "chunk_max": 1024 * 1024,
            "zstd_level": 1}


def c3fs_params() -> dict[str, int]:
    """c3fs's store defaults (chunk sizes, zstd level); the bench's copy if c3fs is absent."""
    try:
        from c3fs.store.store import StoreConfig
    except ImportError:
        return dict(DEFAULTS)
    config = StoreConfig(store_id="", created=0.0)
    return {key: getattr(config, key) for key in DEFAULTS}


def measure(manifest: Manifest) -> dict[str, tuple[float, float]]:
    """{kernel: (MB/s, CPU-s per GB)} for this machine now."""
    source = manifest.path("v1") / manifest.checkpoints[0]
    proc = subprocess.run([sys.executable, "-m", "bench.ceilings", str(source)],
                          capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"bench.ceilings failed: {proc.stderr.strip()[-300:]}")
    out = {name: (nbytes / wall / 1e6, cpu / (nbytes / GB))
           for name, (wall, cpu, nbytes) in json.loads(proc.stdout).items()}
    drop_caches()
    seconds, cpu = cat_files_timed(manifest.path("v1"), manifest.files())
    out["cat, cold"] = (manifest.bytes_v1 / seconds / 1e6, cpu / (manifest.bytes_v1 / GB))
    return out


def _kernels(path: str) -> dict[str, tuple[float, float, int]]:
    import blake3
    import pyfastcdc
    import zstandard

    params = c3fs_params()
    level = params["zstd_level"]
    data = Path(path).read_bytes()
    view = memoryview(data)
    cutter = pyfastcdc.FastCDC(params["chunk_avg"], min_size=params["chunk_min"],
                               max_size=params["chunk_max"])
    results: dict[str, tuple[float, float, int]] = {}

    def timed(name: str, work) -> object:
        cpu0, wall0 = _cpu(), time.perf_counter()
        value = work()
        results[name] = (time.perf_counter() - wall0, _cpu() - cpu0, len(data))
        return value

    cuts = timed("fastcdc", lambda: [(c.offset, c.length) for c in cutter.cut_buf(view)])
    chunks = [view[o:o + n] for o, n in cuts]
    timed("blake3", lambda: [blake3.blake3(c).digest() for c in chunks])
    frames = []
    for lvl in sorted({level, SQUASHFS_LEVEL}):
        cctx = zstandard.ZstdCompressor(level=lvl, write_content_size=True)
        done = timed(f"zstd-{lvl} enc", lambda cctx=cctx: [cctx.compress(c) for c in chunks])
        if lvl == level:
            frames = done
    dctx = zstandard.ZstdDecompressor()
    timed(f"zstd-{level} dec, recycled", lambda: deque(  # each dropped before the next is made
        (dctx.decompress(f, max_output_size=len(c)) for f, c in zip(frames, chunks, strict=True)),
        maxlen=0))
    timed(f"zstd-{level} dec", lambda: [dctx.decompress(f, max_output_size=len(c))
                                        for f, c in zip(frames, chunks, strict=True)])
    timed("first touch", lambda: _first_touch(view))
    results[f"ingest floor (fastcdc + blake3 + zstd-{level})"] = _sum(
        results, "fastcdc", "blake3", f"zstd-{level} enc")
    results[f"decode floor (zstd-{level} dec + blake3)"] = _sum(
        results, f"zstd-{level} dec", "blake3")
    results[f"decode floor, recycled (zstd-{level} dec, recycled + blake3)"] = _sum(
        results, f"zstd-{level} dec, recycled", "blake3")
    return results


def _first_touch(data: memoryview) -> None:
    """Copy `data` once into memory this process never touched, 1 MiB at a time."""
    fresh = mmap.mmap(-1, len(data))
    try:
        step = 1 << 20
        for at in range(0, len(data), step):
            fresh[at : at + step] = data[at : at + step]
    finally:
        fresh.close()


def _sum(results: dict, *names: str) -> tuple[float, float, int]:
    parts = [results[n] for n in names]
    return sum(p[0] for p in parts), sum(p[1] for p in parts), parts[0][2]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    print(json.dumps(_kernels(sys.argv[1])))
