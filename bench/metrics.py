"""What is reported: each metric's key, label, unit and which direction is better."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    short: str = ""  # set for the throughput figures drawn in the chart

    @property
    def throughput(self) -> bool:
        return bool(self.short)

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


CPU_UNIT = "CPU-s/GB"


def _cpu(key: str, label: str) -> Metric:
    """User + system CPU seconds per GB (10^9 bytes) of the step's data, process tree
    included (and the FUSE daemon for reads through a mount)."""
    return Metric(f"{key}_cpu", f"{label}: CPU", CPU_UNIT, False)


METRICS: tuple[Metric, ...] = (
    Metric("ingest_cold", "ingest (push/backup/make/cp -r), cold source", "MB/s", True, "ingest\ncold"),
    _cpu("ingest_cold", "ingest, cold source"),
    Metric("ingest_warm", "ingest, source in page cache", "MB/s", True, "ingest\nwarm"),
    _cpu("ingest_warm", "ingest, source in page cache"),
    Metric("ingest_rss", "peak RSS of ingest", "MiB", False),
    Metric("repo_pct", "repository size, % of data", "%", False),
    Metric("repo_objects_per_gib", "repository files per GiB of data", "/GiB", False),
    Metric("next_ingest", "ingest of the next checkpoint step", "MB/s", True),
    _cpu("next_ingest", "ingest of the next step"),
    Metric("next_delta", "stored delta of the next step", "MB", False),
    Metric("next_delta_ratio", "stored delta / bytes of changed regions", "×", False),
    Metric("first_byte", "mount command to first byte", "s", False),
    Metric("ls_cold", "ls -lR of the mount, cold", "s", False),
    Metric("ls_warm", "ls -lR of the mount, warm", "s", False),
    Metric("ckpt_cold", "checkpoints read through the mount, cold", "MB/s", True, "mount read\ncold"),
    _cpu("ckpt_cold", "checkpoints through the mount, cold"),
    Metric("ckpt_warm", "checkpoints read through the mount, warm", "MB/s", True, "mount read\nwarm"),
    _cpu("ckpt_warm", "checkpoints through the mount, warm"),
    Metric("small_cold", "cat of all small files, cold", "s", False),
    _cpu("small_cold", "small files, cold (per GB of small files)"),
    Metric("small_warm", "cat of all small files, warm", "s", False),
    _cpu("small_warm", "small files, warm (per GB of small files)"),
    Metric("mount_rss", "peak RSS of the mount daemon", "MiB", False),
    Metric("restore", "restore/extract/pull (cp -r for native), cold", "MB/s", True, "restore/pull\ncold"),
    _cpu("restore", "restore/pull, cold"),
    Metric("restore_rss", "peak RSS of restore", "MiB", False),
    Metric("cp", "c3fs cp -r /jobs/ID (cp -r for native), cold", "MB/s", True, "cp -r\ncold"),
    _cpu("cp", "c3fs cp -r, cold"),
    Metric("s3_push", "S3 (moto): upload", "MB/s", True, "S3 push\n(moto)"),
    Metric("s3_pull", "S3 (moto): download", "MB/s", True, "S3 pull\n(moto)"),
    Metric("s3_requests_per_gib", "S3 requests per GiB uploaded", "/GiB", False),
    Metric("s3_objects_per_gib", "S3 objects per GiB uploaded", "/GiB", False),
    Metric("s3_push_rss", "peak RSS of the S3 upload", "MiB", False),
)
BY_KEY = {m.key: m for m in METRICS}


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if magnitude >= 0.1 else f"{value:.3f}"
