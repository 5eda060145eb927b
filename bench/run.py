"""`python -m bench run`: every tool on the same data, repeats interleaved, results to bench/results/.

One repeat of one tool, in order (cold = `sync; echo 3 > drop_caches` and a fresh mount):
    fresh repo; cold ingest of v1 (MB/s, peak RSS); repository size; ingest of v2 (the next
    checkpoint step) and the stored delta; mount sessions: (a) mount -> first byte, ls -lR cold
    and warm, (b) checkpoints cold then warm, (c) small files cold then warm (daemon RSS polled
    throughout); cold restore (and c3fs cp); finally a fresh repo and a warm ingest of v1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import ceilings, dataset, report
from bench.c3fs_tool import C3fs
from bench.dataset import Manifest
from bench.measure import (
    IS_ROOT,
    RssPoller,
    StepFailed,
    cat_files,
    cat_files_timed,
    discard,
    drop_caches,
    file_count,
    fresh_dir,
    ls_lr,
    run_timed,
    set_trash,
    summarize,
    wait_first_byte,
)
from bench.peers import PEERS, Tool, locate

WORK = dataset.BENCH_DIR / "work"
MB, GB, MiB, GiB = 1e6, 1e9, float(1 << 20), float(1 << 30)
ALL_TOOLS = ("c3fs", "native", "restic", "borg", "squashfs", "casync")


class Repeat:
    """The figures of one repeat of one tool, and what went wrong on the way."""

    def __init__(self, tool: Tool, manifest: Manifest, log: Callable[[str], None]) -> None:
        self.tool, self.manifest, self.log = tool, manifest, log
        self.values: dict[str, float] = {}
        self.notes: list[str] = []

    def attempt(self, what: str, step: Callable[[], None]) -> bool:
        start = time.perf_counter()
        try:
            step()
            self.log(f"    {self.tool.name} {what}: {time.perf_counter() - start:.1f} s")
            return True
        except (StepFailed, OSError, ValueError, KeyError) as exc:
            self.notes.append(f"{what}: {exc}")
            self.log(f"    {self.tool.name} {what} FAILED: {exc}")
            if not isinstance(exc, StepFailed):
                self.log(traceback.format_exc(limit=3))
            return False

    def run(self) -> None:
        tool = self.tool
        tool.setup()
        if not self.attempt("ingest", self.ingest_cold):
            return
        self.attempt("next step", self.next_step)
        self.attempt("mount: first byte, ls -lR", self.session_first_byte)
        self.attempt("mount: checkpoints", self.session_checkpoints)
        self.attempt("mount: small files", self.session_small)
        self.attempt("restore", self.restore)
        if isinstance(tool, C3fs):
            self.attempt("cp", self.c3fs_cp)
        self.attempt("warm ingest", self.ingest_warm)

    # ingest -------------------------------------------------------------------------------------
    def ingest_cold(self) -> None:
        drop_caches()
        m = self.manifest
        timed = run_timed(self.tool.ingest(m.path("v1"), "v1"))
        self.tool.after_ingest(m.path("v1"), "v1", timed.stdout)
        self.values["ingest_cold"] = m.bytes_v1 / timed.seconds / MB
        self.values["ingest_cold_cpu"] = timed.cpu / (m.bytes_v1 / GB)
        self.values["ingest_rss"] = timed.peak_rss / MiB
        self.size_v1 = self.tool.store_bytes()
        self.values["repo_pct"] = 100 * self.size_v1 / m.bytes_v1
        if self.tool.repo.exists():  # local stores only
            self.values["repo_objects_per_gib"] = file_count(self.tool.repo) / (m.bytes_v1 / GiB)

    def next_step(self) -> None:
        m = self.manifest
        timed = run_timed(self.tool.ingest(m.path("v2"), "v2"))
        self.tool.after_ingest(m.path("v2"), "v2", timed.stdout)
        delta = self.tool.store_bytes() - self.size_v1
        self.values["next_ingest"] = m.bytes_v1 / timed.seconds / MB
        self.values["next_ingest_cpu"] = timed.cpu / (m.bytes_v1 / GB)
        self.values["next_delta"] = delta / MB
        self.values["next_delta_ratio"] = delta / m.changed_region_bytes

    def ingest_warm(self) -> None:
        self.tool.setup()
        m = self.manifest
        cat_files(m.path("v1"), m.files())
        os.sync()  # no write-back of earlier steps in the timed window
        timed = run_timed(self.tool.ingest(m.path("v1"), "v1"))
        self.tool.after_ingest(m.path("v1"), "v1", timed.stdout)
        self.values["ingest_warm"] = m.bytes_v1 / timed.seconds / MB
        self.values["ingest_warm_cpu"] = timed.cpu / (m.bytes_v1 / GB)

    # mount sessions -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """Drop caches, mount v1 fresh, poll the daemon's RSS; yield (mount, root inside it)."""
        mnt = self.tool.work / "mnt"
        drop_caches()
        with self.tool.mount("v1", mnt) as mounted, mounted.poller() as poller:
            yield mounted, self.tool.mount_root("v1", mnt)
            if isinstance(poller, RssPoller):
                poller.sample()
                rss = max(self.values.get("mount_rss", 0), poller.peak / MiB)
                self.values["mount_rss"] = rss

    def session_first_byte(self) -> None:
        first = self.manifest.checkpoints[0]
        with self.session() as (mounted, root):
            seconds = wait_first_byte(root / first, mounted.started)
            if self.tool.mounts:
                self.values["first_byte"] = seconds
            self.values["ls_cold"] = ls_lr(root)
            self.values["ls_warm"] = ls_lr(root)

    def session_checkpoints(self) -> None:
        m = self.manifest
        with self.session() as (mounted, root):
            wait_first_byte(root / m.plots[-1], mounted.started)  # ready; warms no measured file
            for key in ("ckpt_cold", "ckpt_warm"):
                self._read(key, mounted, root, m.checkpoints, m.bytes_checkpoints, MB)

    def session_small(self) -> None:
        m = self.manifest
        with self.session() as (mounted, root):
            wait_first_byte(root / m.plots[-1], mounted.started)
            for key in ("small_cold", "small_warm"):
                self._read(key, mounted, root, m.small_files, m.bytes_small, None)

    def _read(self, key: str, mounted, root: Path, files: list[str], nbytes: int,
              rate: float | None) -> None:
        """`cat` `files` through the mount: MB/s (`rate`) or seconds, and CPU-s per GB of the
        reader (xargs, cat) and the daemon together."""
        daemon = mounted.cpu()
        seconds, cpu = cat_files_timed(root, files)
        cpu += mounted.cpu() - daemon
        self.values[key] = nbytes / seconds / rate if rate else seconds
        self.values[f"{key}_cpu"] = cpu / (nbytes / GB)

    # restore ------------------------------------------------------------------------------------
    def restore(self) -> None:
        timed = self._extract(self.tool.restore)
        self.values["restore"], self.values["restore_cpu"] = self._rate(timed)
        self.values["restore_rss"] = timed.peak_rss / MiB

    def c3fs_cp(self) -> None:
        self.values["cp"], self.values["cp_cpu"] = self._rate(self._extract(self.tool.copy))

    def _rate(self, timed) -> tuple[float, float]:
        """(MB/s, CPU-s per GB) of a step over the v1 tree."""
        nbytes = self.manifest.bytes_v1
        return nbytes / timed.seconds / MB, timed.cpu / (nbytes / GB)

    def _extract(self, command: Callable):
        dest = fresh_dir(self.tool.work / "restore")
        try:
            drop_caches()
            timed = run_timed(command("v1", dest))
            self._verify(dest)
            return timed
        finally:
            discard(dest)

    def _verify(self, dest: Path) -> None:
        m = self.manifest
        root = locate(dest, m.checkpoints[0])
        if root is None:
            raise StepFailed(f"restored tree under {dest} has no {m.checkpoints[0]}")
        for rel in (m.checkpoints[-1], m.small_files[-1], m.plots[-1]):
            if (root / rel).stat().st_size != (m.path("v1") / rel).stat().st_size:
                raise StepFailed(f"restored {rel} has the wrong size")


def native_cp_metric(values: dict[str, float]) -> None:
    """For native disk, `cp -r` is both the restore and the cp figure."""
    for suffix in ("", "_cpu"):
        if "restore" + suffix in values:
            values["cp" + suffix] = values["restore" + suffix]


# the whole run ------------------------------------------------------------------------------------
def make_tools(names: list[str]) -> list[Tool]:
    classes = {cls.name: cls for cls in PEERS}
    tools: list[Tool] = []
    for name in names:
        if name == "c3fs":
            tools.append(C3fs(WORK / "c3fs"))
        elif name in classes:
            tools.append(classes[name](WORK / name))
        else:
            raise SystemExit(f"unknown tool {name!r}; choose from {', '.join(ALL_TOOLS)}")
    return tools


def measure_all(tools: list[Tool], manifest: Manifest, repeats: int, log,
                limits: dict | None = None) -> dict:
    """{tool: {"values": {metric: [one per repeat]}, "notes": [...], "load": [1-min load avg]}};
    the machine's ceilings of each repeat go to `limits` ({kernel: {"mbps": [], "cpu": []}})."""
    results = {t.name: {"values": {}, "notes": [], "load": []} for t in tools}
    for tool in tools:
        tool.warm_up()
    for rep in range(1, repeats + 1):
        if limits is not None:
            measure_ceilings(manifest, limits, log)
        for tool in tools:
            log(f"[repeat {rep}/{repeats}] {tool.name}")
            start = time.perf_counter()
            one = Repeat(tool, manifest, log)
            one.run()
            if tool.name == "native":
                native_cp_metric(one.values)
            for key, value in one.values.items():
                results[tool.name]["values"].setdefault(key, []).append(value)
            results[tool.name]["notes"] += [f"repeat {rep}: {n}" for n in one.notes]
            results[tool.name]["load"].append(round(os.getloadavg()[0], 2))
            log(f"    done in {time.perf_counter() - start:.1f} s: "
                + ", ".join(f"{k}={v:.3g}" for k, v in one.values.items()))
            discard(tool.work)
    return results


def measure_ceilings(manifest: Manifest, limits: dict, log) -> None:
    try:
        found = ceilings.measure(manifest)
    except (RuntimeError, OSError, StepFailed) as exc:
        log(f"    ceilings FAILED: {exc}")
        return
    for name, (mbps, cpu) in found.items():
        entry = limits.setdefault(name, {"mbps": [], "cpu": []})
        entry["mbps"].append(mbps)
        entry["cpu"].append(cpu)
    log("    ceilings: " + ", ".join(f"{n} {m:.0f} MB/s {c:.2f} CPU-s/GB"
                                     for n, (m, c) in found.items()))


def merge(raw: dict, extra: dict) -> None:
    for name, data in extra.items():
        entry = raw.setdefault(name, {"values": {}, "notes": [], "load": []})
        entry["values"].update(data["values"])
        entry["notes"] += data["notes"]


def summarize_results(raw: dict) -> dict:
    out = {}
    for name, data in raw.items():
        metrics = {k: summarize(v) for k, v in data["values"].items()}
        out[name] = {**{k: v for k, v in data.items() if k != "values"}, "metrics": metrics}
    return out


def select_tools(spec: str, log) -> tuple[list[Tool], dict[str, str]]:
    names = [n.strip() for n in spec.split(",") if n.strip()] or list(ALL_TOOLS)
    tools, skipped = [], {}
    for tool in make_tools(names):
        problem = tool.missing()
        if problem:
            skipped[tool.name] = problem
            log(f"skipping {tool.name}: {problem}")
        else:
            tools.append(tool)
    return tools, skipped


def main(args: argparse.Namespace, params: dataset.Params) -> int:
    log = report.Logger()
    if not IS_ROOT:
        log("not root: page cache cannot be dropped, 'cold' figures are warm")
    manifest = dataset.generate(params, log=log)
    tools, skipped = select_tools(args.tools, log)
    WORK.mkdir(parents=True, exist_ok=True)
    set_trash(WORK / "trash")
    started = time.time()
    limits: dict = {}
    try:
        raw = measure_all(tools, manifest, max(1, args.repeat), log, limits)
        if args.s3:
            from bench import s3

            repeats = args.s3_repeat or args.repeat
            s3_raw = s3.measure(manifest, max(1, repeats), WORK / "s3", "c3fs" in skipped, log)
            merge(raw, s3_raw)
    finally:
        if not args.keep_work:
            shutil.rmtree(WORK, ignore_errors=True)
    results = report.build(summarize_results(raw), tools, skipped, manifest, args, started)
    results["ceilings"] = {name: {k: summarize(v) for k, v in entry.items()}
                           for name, entry in limits.items()}
    paths = report.write(results)
    print(report.markdown(results))
    log(f"results: {', '.join(str(p) for p in paths)}")
    return 0
