"""The bench dataset: deterministic (seeded), generated in seconds, described by a manifest.

Layout under `bench/data/s<scale>/`:

    v1/checkpoints/step_000.bin ...    a checkpoint series: step k is step k-1 with ~10% of
                                       its 1 MiB regions rewritten (float32-like bytes)
    v1/metrics/..., v1/logs/...        small text files (JSON metrics, logs), 200 B - 8 KiB
    v1/plots/plot_000.png ...          binary "plots", 50 - 300 KiB, incompressible
    v2/                                the job's next step: every checkpoint file has a further
                                       ~10% of its regions rewritten; small files and plots are
                                       the same (hard links to v1)
    manifest.json                      parameters, file lists, and exactly which regions of v2
                                       differ from v1 (the dedup measurement's reference)

Checkpoint bytes are float32-like: little-endian floats of magnitude ~0.001-0.03 (the sign and
exponent byte takes few values) with the lowest mantissa byte zeroed, so zstd shrinks them to
about 75%, as it does real trained weights. Every rewritten region is fresh content: the bytes
a content-addressed store must newly keep for v2 are exactly the changed regions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    import blake3

    def _xof(key: bytes, length: int) -> bytes:
        return blake3.blake3(key).digest(length=length)
except ImportError:  # pragma: no cover - blake3 is a c3fs dependency
    import hashlib

    def _xof(key: bytes, length: int) -> bytes:
        return hashlib.shake_256(key).digest(length)


GENERATOR_VERSION = 1
MiB = 1 << 20
REGION = MiB
BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "data"

# sign|exponent byte of float32 values of magnitude 2^-10 .. 2^-4 (weights ~ N(0, 0.02))
_TOP = bytes([0x3A, 0x3B, 0x3B, 0x3C, 0x3C, 0x3C, 0x3C, 0x3D])
_TOP_TABLE = bytes(_TOP[v & 7] | (v & 0x80) for v in range(256))


@dataclass(frozen=True)
class Params:
    """What the dataset is made of; `scale` multiplies checkpoint size and the file counts."""

    scale: float = 1.0
    seed: int = 42
    steps: int = 3
    checkpoint_mib: int = 256
    change_fraction: float = 0.10
    small_files: int = 10_000
    small_min: int = 200
    small_max: int = 8 * 1024
    plots: int = 200
    plot_min: int = 50 * 1024
    plot_max: int = 300 * 1024

    @property
    def regions(self) -> int:
        return max(4, round(self.checkpoint_mib * self.scale))

    @property
    def plot_count(self) -> int:
        return max(1, round(self.plots * self.scale))

    @property
    def tag(self) -> str:
        return f"s{self.scale:g}-n{self.small_files}-seed{self.seed}"


@dataclass
class Manifest:
    params: dict
    root: str
    v1: str
    v2: str
    checkpoints: list[str]
    small_files: list[str]
    plots: list[str]
    bytes_v1: int
    bytes_checkpoints: int
    bytes_small: int
    bytes_plots: int
    changed_regions: list[tuple[str, int, int]] = field(default_factory=list)
    changed_region_bytes: int = 0
    differing_bytes: int = 0
    generator_version: int = GENERATOR_VERSION

    def path(self, version: str = "v1") -> Path:
        return Path(self.v1 if version == "v1" else self.v2)

    def files(self) -> list[str]:
        return self.checkpoints + self.small_files + self.plots


def float32_block(key: bytes, length: int = REGION) -> bytes:
    """`length` float32-like bytes derived from `key` (fast: ~1.5 GB/s)."""
    buf = bytearray(_xof(key, length))
    buf[0::4] = bytes(length // 4)
    buf[3::4] = buf[3::4].translate(_TOP_TABLE)
    return bytes(buf)


def _region_key(params: Params, owner: tuple) -> bytes:
    return repr(("ckpt", params.seed, *owner)).encode()


def _sample_regions(params: Params, label: str) -> list[int]:
    rng = random.Random(f"{params.seed}:{label}")
    count = max(1, round(params.regions * params.change_fraction))
    return sorted(rng.sample(range(params.regions), count))


def checkpoint_owners(params: Params) -> list[list[tuple]]:
    """For each step of v1, per region: the write event that produced its bytes."""
    owners = [[(0, r) for r in range(params.regions)]]
    for step in range(1, params.steps):
        current = list(owners[-1])
        for r in _sample_regions(params, f"step{step}"):
            current[r] = (step, r)
        owners.append(current)
    return owners


def next_step_owners(params: Params, owners: list[list[tuple]]) -> list[tuple[list[tuple], list[int]]]:
    """v2: every step's file with a further `change_fraction` of its regions rewritten."""
    result = []
    for step, current in enumerate(owners):
        changed = _sample_regions(params, f"next{step}")
        new = list(current)
        for r in changed:
            new[r] = ("next", step, r)
        result.append((new, changed))
    return result


def write_checkpoint(params: Params, path: Path, owners: list[tuple]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        for owner in owners:
            out.write(float32_block(_region_key(params, owner)))


def _differing(a: bytes, b: bytes) -> int:
    xor = (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")
    return len(xor) - xor.count(0)


# small text files ------------------------------------------------------------------------------
_WORDS = (
    "epoch step loss accuracy lr grad_norm throughput samples tokens warmup eval train val "
    "checkpoint saved worker rank shard batch optimizer adam momentum weight_decay scheduler "
    "cosine info debug warning dataloader prefetch queue latency gpu memory allocated"
).split()


def _log_text(rng: random.Random, size: int) -> str:
    lines, total = [], 0
    while total < size:
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 9)))
        line = f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} {rng.choice(('INFO', 'DEBUG', 'WARN'))} {words} value={rng.random():.6f}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)[:size]


def _metrics_json(rng: random.Random, size: int) -> str:
    records, total = [], 2
    while total < size:
        rec = json.dumps({"step": rng.randint(0, 10**6), "loss": round(rng.uniform(0, 4), 6),
                          rng.choice(_WORDS): round(rng.random(), 6)})
        records.append(rec)
        total += len(rec) + 2
    text = "[" + ",\n".join(records) + "]\n"
    return text[:size] if len(text) > size + 64 else text


def small_file_specs(params: Params) -> Iterator[tuple[str, int, str]]:
    """(relative path, size, kind) for each small file, spread over 40 directories."""
    rng = random.Random(f"{params.seed}:small")
    lo, hi = params.small_min, params.small_max
    for i in range(params.small_files):
        size = int(round(lo * (hi / lo) ** rng.random()))
        if i % 2 == 0:
            yield f"metrics/run_{i % 20:02d}/m_{i:05d}.json", size, "json"
        else:
            yield f"logs/worker_{i % 20:02d}/part_{i:05d}.log", size, "log"


def write_small_files(params: Params, root: Path) -> list[str]:
    rng = random.Random(f"{params.seed}:small-content")
    names = []
    for rel, size, kind in small_file_specs(params):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = _metrics_json(rng, size) if kind == "json" else _log_text(rng, size)
        path.write_text(text)
        names.append(rel)
    return names


def write_plots(params: Params, root: Path) -> list[str]:
    rng = random.Random(f"{params.seed}:plots")
    header = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
    names = []
    for i in range(params.plot_count):
        size = rng.randint(params.plot_min, params.plot_max)
        rel = f"plots/plot_{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        body = _xof(repr(("plot", params.seed, i)).encode(), size - len(header))
        (root / rel).write_bytes(header + body)
        names.append(rel)
    return names


# the whole dataset ---------------------------------------------------------------------------
def dataset_dir(params: Params) -> Path:
    return DATA_DIR / params.tag


def _sizes(root: Path, names: list[str]) -> int:
    return sum((root / n).stat().st_size for n in names)


def _write_v1(params: Params, v1: Path) -> tuple[list[str], list[list[tuple]]]:
    owners = checkpoint_owners(params)
    names = []
    for step, step_owners in enumerate(owners):
        rel = f"checkpoints/step_{step:03d}.bin"
        write_checkpoint(params, v1 / rel, step_owners)
        names.append(rel)
    return names, owners


def _write_v2(params: Params, manifest: Manifest, owners: list[list[tuple]]) -> None:
    v1, v2 = manifest.path("v1"), manifest.path("v2")
    for rel in manifest.small_files + manifest.plots:
        (v2 / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(v1 / rel, v2 / rel)
    for rel, old, (new, changed) in zip(manifest.checkpoints, owners, next_step_owners(params, owners), strict=True):
        write_checkpoint(params, v2 / rel, new)
        for r in changed:
            manifest.changed_regions.append((rel, r * REGION, REGION))
            manifest.differing_bytes += _differing(
                float32_block(_region_key(params, old[r])), float32_block(_region_key(params, new[r])))
    manifest.changed_region_bytes = sum(length for _, _, length in manifest.changed_regions)


def generate(params: Params, force: bool = False, log=print) -> Manifest:
    """Write the dataset (or reuse an identical one already on disk) and return its manifest."""
    root = dataset_dir(params)
    existing = load_manifest(params)
    if existing is not None and not force:
        return existing
    if root.exists():
        shutil.rmtree(root)
    v1, v2 = root / "v1", root / "v2"
    log(f"generating {root} ...")
    checkpoints, owners = _write_v1(params, v1)
    small = write_small_files(params, v1)
    plots = write_plots(params, v1)
    manifest = Manifest(
        params=asdict(params), root=str(root), v1=str(v1), v2=str(v2),
        checkpoints=checkpoints, small_files=small, plots=plots,
        bytes_v1=_sizes(v1, checkpoints + small + plots), bytes_checkpoints=_sizes(v1, checkpoints),
        bytes_small=_sizes(v1, small), bytes_plots=_sizes(v1, plots),
    )
    _write_v2(params, manifest, owners)
    (root / "manifest.json").write_text(json.dumps(asdict(manifest), indent=1))
    return manifest


def load_manifest(params: Params) -> Manifest | None:
    path = dataset_dir(params) / "manifest.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if data.get("generator_version") != GENERATOR_VERSION or data.get("params") != asdict(params):
        return None
    data["changed_regions"] = [tuple(x) for x in data["changed_regions"]]
    return Manifest(**data)
