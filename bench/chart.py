"""One PNG: throughput per tool (median bars, min–max whiskers), one group per metric."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.metrics import METRICS  # noqa: E402

COLORS = {"c3fs": "#d62728", "native": "#7f7f7f", "restic": "#1f77b4", "borg": "#2ca02c",
          "squashfs": "#9467bd", "casync": "#ff7f0e", "boto3": "#8c564b"}


def draw(results: dict, path: Path) -> Path:
    tools = results["tools"]
    metrics = [m for m in METRICS if m.throughput
               and any(m.key in t.get("metrics", {}) for t in tools.values())]
    names = list(tools)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(metrics) + 2), 4.8), dpi=110)
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for j, metric in enumerate(metrics):
            entry = tools[name].get("metrics", {}).get(metric.key)
            if entry:
                xs.append(j + (i - (len(names) - 1) / 2) * width)
                ys.append(entry["median"])
                lo.append(entry["median"] - entry["min"])
                hi.append(entry["max"] - entry["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=name,
               color=COLORS.get(name), error_kw={"elinewidth": 0.8})
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([m.short for m in metrics], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("MB/s, log scale (median, min–max)")
    data = results["dataset"]
    ax.set_title(f"c3fs bench {results['timestamp']} ({results['mode']}, "
                 f"{data['bytes_v1'] / 1e6:.0f} MB, {results['environment']['cores']} cores)", fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(names), 7))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

