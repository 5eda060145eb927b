"""Results: the JSON file, the Markdown tables (figures, ratios, targets) and the PNG chart."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.dataset import BENCH_DIR, Manifest
from bench.metrics import BY_KEY, METRICS, Metric, fmt
from bench.peers import Tool

RESULTS = BENCH_DIR / "results"
PEER_NAMES = ("restic", "borg", "squashfs", "casync")
C3FS_MOUNT_CACHE_MIB = 256  # `c3fs mount --cache-size` default; the bench does not change it
TOOL_ORDER = ("c3fs", "native", "restic", "borg", "squashfs", "casync", "boto3")


class Logger:
    """Progress lines on stderr with the elapsed time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


# environment --------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem(path: Path) -> str:
    proc = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    return lines[-1].split()[1] if len(lines) > 1 else "unknown"


def environment(tools: list[Tool]) -> dict:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1),
            "kernel": platform.release(), "os": _os_release(), "python": platform.python_version(),
            "filesystem": filesystem(BENCH_DIR), "root": os.geteuid() == 0,
            "tools": {t.name: _safe_version(t) for t in tools}}


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _safe_version(tool: Tool) -> str:
    try:
        return tool.version()
    except Exception as exc:  # a version string is never worth failing the run
        return f"unknown ({exc})"


# ratios -------------------------------------------------------------------------------------------
def reference_tool(metric: Metric) -> str:
    return "boto3" if metric.key.startswith("s3_") else "native"


def median(tools: dict, name: str, key: str) -> float | None:
    entry = tools.get(name, {}).get("metrics", {}).get(key)
    return entry["median"] if entry else None


def best_peer(tools: dict, metric: Metric) -> tuple[str | None, float | None]:
    candidates = [(median(tools, p, metric.key), p) for p in PEER_NAMES]
    candidates = [(v, p) for v, p in candidates if v is not None]
    if not candidates:
        return None, None
    value, name = (max if metric.higher_is_better else min)(candidates)
    return name, value


def ratios(tools: dict) -> dict:
    out: dict = {}
    for metric in METRICS:
        ref = median(tools, reference_tool(metric), metric.key)
        peer_name, peer = best_peer(tools, metric)
        for name in tools:
            value = median(tools, name, metric.key)
            if value is None:
                continue
            out.setdefault(name, {})[metric.key] = {
                "vs_native": _ratio(value, ref), "vs_best_peer": _ratio(value, peer),
                "best_peer": peer_name}
    return out


def _ratio(value: float, ref: float | None) -> float | None:
    return value / ref if ref else None


# targets (issues 4 and 6) -------------------------------------------------------------------------
def targets(tools: dict, small_files: int) -> list[dict]:
    c3 = lambda key: median(tools, "c3fs", key)  # noqa: E731
    native = lambda key: median(tools, "native", key)  # noqa: E731
    peer = lambda key: best_peer(tools, BY_KEY[key])[1]  # noqa: E731
    scale = 10_000 / small_files if small_files else 1.0
    per10k = "" if scale == 1 else f" (×{scale:.3g}: extrapolated from {small_files} files)"
    rows = [
        ("push ≥ 300 MB/s (cold source)", c3("ingest_cold"), lambda v: v >= 300, "MB/s"),
        ("push faster than every peer", _div(c3("ingest_cold"), peer("ingest_cold")), lambda v: v > 1, "× best peer"),
        ("store ≤ 45% of the data", c3("repo_pct"), lambda v: v <= 45, "%"),
        ("next step adds ≤ 1.25× the changed bytes", c3("next_delta_ratio"), lambda v: v <= 1.25, "×"),
        ("mount read cold ≥ 1.25× best peer", _div(c3("ckpt_cold"), peer("ckpt_cold")), lambda v: v >= 1.25, "× best peer"),
        ("mount read warm ≥ 0.75× native", _div(c3("ckpt_warm"), native("ckpt_warm")), lambda v: v >= 0.75, "× native"),
        ("10k small files ≤ 1.5 s cold" + per10k, _mul(c3("small_cold"), scale), lambda v: v <= 1.5, "s"),
        ("10k small files ≤ 0.6 s warm" + per10k, _mul(c3("small_warm"), scale), lambda v: v <= 0.6, "s"),
        ("ls -lR ≤ 1.0 s cold" + per10k, _mul(c3("ls_cold"), scale), lambda v: v <= 1.0, "s"),
        ("mount to first byte ≤ 0.3 s", c3("first_byte"), lambda v: v <= 0.3, "s"),
        ("cp ≥ native cp -r", _div(c3("cp"), native("cp")), lambda v: v >= 1, "× native"),
        ("pull ≥ native cp -r", _div(c3("restore"), native("cp")), lambda v: v >= 1, "× native"),
        ("push peak RSS ≤ 300 MiB", c3("ingest_rss"), lambda v: v <= 300, "MiB"),
        (f"mount daemon RSS ≤ 100 MiB + cache ({C3FS_MOUNT_CACHE_MIB} MiB default)", c3("mount_rss"),
         lambda v: v <= 100 + C3FS_MOUNT_CACHE_MIB, "MiB"),
    ]
    return [{"target": t, "value": v, "unit": u,
             "status": "pending" if v is None else ("met" if ok(v) else "missed")}
            for t, v, ok, u in rows]


def cpu_targets(tools: dict) -> list[dict]:
    """Issue 20's figures: speed against squashfs and native `cp -r`, CPU per GB against the
    best peer (each row's value is the ratio; CPU rows beside the speed rows they cost)."""
    c3 = lambda key: median(tools, "c3fs", key)  # noqa: E731
    sq = lambda key: median(tools, "squashfs", key)  # noqa: E731
    native_cp = median(tools, "native", "cp")
    peer = lambda key: best_peer(tools, BY_KEY[key])  # noqa: E731
    rows = [
        ("push ≥ 1.1× squashfs, cold", _div(c3("ingest_cold"), sq("ingest_cold")), 1.1, "× squashfs"),
        ("push ≥ 1.1× squashfs, source cached", _div(c3("ingest_warm"), sq("ingest_warm")), 1.1, "× squashfs"),
        ("push CPU-s/GB ≤ squashfs's, cold", _div(c3("ingest_cold_cpu"), sq("ingest_cold_cpu")), -1.0, "× squashfs"),
        ("push CPU-s/GB ≤ squashfs's, cached", _div(c3("ingest_warm_cpu"), sq("ingest_warm_cpu")), -1.0, "× squashfs"),
        ("pull ≥ native cp -r", _div(c3("restore"), native_cp), 1.0, "× native"),
        ("pull ≥ 1.1× unsquashfs", _div(c3("restore"), sq("restore")), 1.1, "× unsquashfs"),
        ("cp -r ≥ native cp -r", _div(c3("cp"), native_cp), 1.0, "× native"),
        ("cp -r ≥ 1.1× unsquashfs", _div(c3("cp"), sq("restore")), 1.1, "× unsquashfs"),
        ("checkpoints through the mount, cold ≥ 1.1× squashfuse",
         _div(c3("ckpt_cold"), sq("ckpt_cold")), 1.1, "× squashfuse"),
        ("small files through the mount, cold ≤ best peer",
         _div(c3("small_cold"), peer("small_cold")[1]), -1.0, "× best peer"),
    ]
    for key in ("ingest_cold_cpu", "ingest_warm_cpu", "ckpt_cold_cpu", "small_cold_cpu",
                "restore_cpu"):
        name, value = peer(key)
        rows.append((f"{BY_KEY[key].label} ≤ 1.5× best peer's ({name or '–'})",
                     _div(c3(key), value), -1.5, "× best peer"))
    # a bound > 0 is a floor (higher is better), < 0 a ceiling (lower is better)
    return [{"target": t, "value": v, "unit": u,
             "status": "pending" if v is None else
             ("met" if (v >= bound if bound > 0 else v <= -bound) else "missed")}
            for t, v, bound, u in rows]


def ceilings_table(ceilings: dict) -> str:
    """The machine's own ceilings measured in the run (`bench.ceilings`)."""
    rows = [[name, _spread(entry["mbps"]), _spread(entry["cpu"])]
            for name, entry in ceilings.items()]
    return _table(["one core, in this run", "MB/s ↑", "CPU-s/GB ↓"], rows)


def _spread(entry: dict) -> str:
    return f"{fmt(entry['median'])} [{fmt(entry['min'])}–{fmt(entry['max'])}]"


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _mul(a: float | None, b: float) -> float | None:
    return a * b if a is not None else None


# assembling and writing ---------------------------------------------------------------------------
def build(tools: dict, measured: list[Tool], skipped: dict, manifest: Manifest, args, started: float) -> dict:
    ordered = {n: tools[n] for n in sorted(tools, key=_order)}
    return {
        "timestamp": dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
        "duration_s": round(time.time() - started, 1),
        "mode": _mode(args, manifest),
        "repeats": args.repeat,
        "environment": {**environment(measured), "load_avg_1min": _load(tools)},
        "dataset": _dataset_summary(manifest),
        "commands": {t.name: _commands(t) for t in measured},
        "skipped": skipped,
        "tools": ordered,
        "ratios": ratios(ordered),
        "targets": targets(ordered, manifest.params["small_files"]),
        "cpu_targets": cpu_targets(ordered),
        "metrics": {m.key: {"label": m.label, "unit": m.unit,
                            "better": "higher" if m.higher_is_better else "lower"} for m in METRICS},
    }


def _mode(args, manifest: Manifest) -> str:
    scale = manifest.params["scale"]
    if args.quick:
        return "quick"
    return "full" if scale == 1 else f"scale {scale:g}"


def _load(tools: dict) -> dict:
    """The 1-minute load average sampled after every tool repeat: other work on the machine."""
    samples = [x for t in tools.values() for x in t.get("load", [])] or [os.getloadavg()[0]]
    return {"min": min(samples), "median": sorted(samples)[len(samples) // 2], "max": max(samples)}


def _order(name: str) -> int:
    return TOOL_ORDER.index(name) if name in TOOL_ORDER else len(TOOL_ORDER)


def _commands(tool: Tool) -> dict:
    try:
        return tool.commands()
    except Exception as exc:  # describing commands must not fail the run
        return {"error": str(exc)}


def _dataset_summary(m: Manifest) -> dict:
    return {"params": m.params, "bytes_v1": m.bytes_v1, "bytes_checkpoints": m.bytes_checkpoints,
            "bytes_small": m.bytes_small, "bytes_plots": m.bytes_plots,
            "files": len(m.files()), "checkpoints": len(m.checkpoints),
            "small_files": len(m.small_files), "plots": len(m.plots),
            "changed_regions": len(m.changed_regions),
            "changed_region_bytes": m.changed_region_bytes, "differing_bytes": m.differing_bytes}


def write(results: dict) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / results["timestamp"]
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    md_path = base.with_suffix(".md")
    md_path.write_text(markdown(results))
    paths = [json_path, md_path]
    from bench import chart

    paths.append(chart.draw(results, RESULTS / "latest.png"))
    return paths


# markdown -----------------------------------------------------------------------------------------
def markdown(results: dict, with_targets: bool = True) -> str:
    tools = results["tools"]
    names = list(tools)
    env, data = results["environment"], results["dataset"]
    parts = [
        f"## bench {results['timestamp']} ({results['mode']}, median of {results['repeats']}, [min–max])",
        "",
        f"{env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB, {env['os']}, kernel "
        f"{env['kernel']}, Python {env['python']}, {env['filesystem']}; dataset "
        f"{data['bytes_v1'] / 1e6:.0f} MB ({data['checkpoints']} checkpoints × "
        f"{data['bytes_checkpoints'] / data['checkpoints'] / 1e6:.0f} MB, {data['small_files']} small "
        f"files, {data['plots']} plots); next step rewrites {data['changed_region_bytes'] / 1e6:.1f} MB "
        f"of regions. MB = 10^6 bytes. Load average during the run (other work on the machine): "
        f"{_load_text(env)}.",
        "",
        _table(["metric", *names], [_figure_row(m, tools, names) for m in _present(tools)]),
        "",
        f"Ratios: median ÷ native (÷ boto3 for S3 rows) / ÷ best peer ({', '.join(PEER_NAMES)}); "
        "↑ higher is better, ↓ lower is better.",
        "",
        _table(["metric", *names], [_ratio_row(m, results["ratios"], names) for m in _present(tools)]),
    ]
    if results.get("ceilings"):
        parts += ["", "The machine's ceilings, measured in each repeat of this run (`bench/ceilings.py`):",
                  "", ceilings_table(results["ceilings"])]
    if with_targets:
        parts += ["", "c3fs against the targets of issues 4 and 6:", "", targets_table(results["targets"])]
        if results.get("cpu_targets"):
            parts += ["", "c3fs against the figures of issue 20 (speed, and CPU per GB):", "",
                      targets_table(results["cpu_targets"])]
    parts += _notes(results)
    return "\n".join(parts) + "\n"


def _load_text(env: dict) -> str:
    load = env.get("load_avg_1min")
    if not load:
        return "not recorded"
    return f"median {load['median']:.1f}, max {load['max']:.1f} on {env['cores']} cores"


def targets_table(rows: list[dict]) -> str:
    body = [[r["target"], "pending" if r["value"] is None else f"{fmt(r['value'])} {r['unit']}",
             r["status"]] for r in rows]
    return _table(["target", "where c3fs stands", "status"], body)


def _present(tools: dict) -> list[Metric]:
    return [m for m in METRICS if any(m.key in t.get("metrics", {}) for t in tools.values())]


def _figure_row(metric: Metric, tools: dict, names: list[str]) -> list[str]:
    cells = [f"{metric.label} ({metric.unit}) {metric.arrow}"]
    for name in names:
        entry = tools[name].get("metrics", {}).get(metric.key)
        cells.append("–" if entry is None else
                     f"{fmt(entry['median'])} [{fmt(entry['min'])}–{fmt(entry['max'])}]")
    return cells


def _ratio_row(metric: Metric, table: dict, names: list[str]) -> list[str]:
    cells = [f"{metric.label} {metric.arrow}"]
    for name in names:
        entry = table.get(name, {}).get(metric.key)
        cells.append("–" if entry is None else
                     f"{_x(entry['vs_native'])} / {_x(entry['vs_best_peer'])}")
    return cells


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _notes(results: dict) -> list[str]:
    lines = []
    for name, reason in results["skipped"].items():
        lines.append(f"- {name} skipped: {reason}")
    for name, data in results["tools"].items():
        for note in data.get("notes", [])[:8]:
            lines.append(f"- {name}: {note}")
    return ["", "Notes:", "", *lines] if lines else []


# README -------------------------------------------------------------------------------------------
README = BENCH_DIR / "README.md"


def update_readme(results: dict, readme: Path = README) -> None:
    """Put this run's tables between the README's markers (`python -m bench readme`)."""
    text = readme.read_text()
    body = targets_table(results["targets"])
    if results.get("cpu_targets"):
        body += ("\n\nIssue 20 (speed against squashfs and native `cp -r`, CPU per GB against "
                 "the best peer):\n\n" + targets_table(results["cpu_targets"]))
    text = _between(text, "targets", f"From run {results['timestamp']} ({results['mode']}); "
                    "full definitions in the table below.\n\n" + body)
    text = _between(text, "results", markdown(results, with_targets=False).replace("\n## ", "\n### ", 1)
                    .removeprefix("## ").replace("bench ", "Run ", 1)
                    + "\n![throughput per tool](results/latest.png)\n")
    readme.write_text(text)


def _between(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.strip()}\n{end}{tail}"


def latest_results() -> Path:
    files = sorted(RESULTS.glob("*.json"))
    if not files:
        raise SystemExit("no results in bench/results/; run `python -m bench run` first")
    return files[-1]
