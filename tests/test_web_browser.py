"""`c3fs serve` in a real browser: Debian's chromium, headless, opens the job list, a job's
plots and the lineage of the three-stage chain from a `c3fs serve` subprocess; it checks the
DOM after the page's script ran (every image decoded, natural width > 0) and saves
screenshots in the test's temp dir. Skipped where no chromium is installed (`make test`
installs it)."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from webkit import EVAL, PREP, TRAIN, chain

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1600"]
C3FS = Path(sys.executable).parent / "c3fs"


@pytest.fixture
def browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless chromium installed (`make test` installs Debian's chromium)")


@pytest.fixture
def server(repo, tmp_path: Path) -> Iterator[str]:
    """The base URL of `c3fs serve` on a free loopback port, over the chain's store."""
    (tmp_path / "work").mkdir()
    chain(repo, tmp_path / "work")
    proc = subprocess.Popen([str(C3FS), "serve", "--bind", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=dict(os.environ))
    try:
        yield _announced_url(proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _announced_url(proc: subprocess.Popen) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    for _ in range(50):
        if not selector.select(timeout=1):
            continue
        line = proc.stderr.readline().decode()
        match = re.search(r"serving (http://\S+/)", line)
        if match:
            return match.group(1)
        assert line, f"c3fs serve ended: exit {proc.poll()}"
    raise AssertionError("c3fs serve did not announce its URL within 50 s")


class Chromium:
    def __init__(self, path: str, tmp: Path) -> None:
        self.path, self.tmp, self.runs = path, tmp, 0

    def _run(self, *args: str) -> str:
        self.runs += 1
        profile = self.tmp / f"profile-{self.runs}"  # a fresh one each time
        proc = subprocess.run([self.path, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
        return proc.stdout.decode()

    def dom(self, url: str) -> str:
        """The DOM once the page has loaded and its script has marked the images."""
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, name: str) -> Path:
        path = self.tmp / f"{name}.png"
        self._run(f"--screenshot={path}", url)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path


def images(dom: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in
            re.finditer(r'<img src="([^"]+)"[^>]*data-natural-width="(\d+)"', dom)]


def test_job_list_plots_and_lineage_in_a_real_browser(browser: str, server: str,
                                                      tmp_path: Path) -> None:
    chromium = Chromium(browser, tmp_path)
    listing = chromium.dom(server + "jobs")
    for job in (PREP, TRAIN, EVAL):
        assert f'href="/browse/jobs/{job}/"' in listing
    assert "FAILED (SCRIPT_ERROR)" in listing

    plots = chromium.dom(server + f"browse/jobs/{TRAIN}/plots/")
    shown = images(plots)
    assert len(shown) == 6 and 'data-images="6/6"' in plots, shown
    assert all(width > 0 for _, width in shown), shown
    assert ("/raw/jobs/job_train/plots/loss_2.png?inline=1", 80) in shown
    assert plots.count("<img") == 6  # the hostile name made no element of its own

    root = chromium.dom(server + f"browse/jobs/{TRAIN}/")
    assert 'data-images="1/1"' in root  # evil.svg, as an <img>: drawn, its script never run
    assert "<script>alert" not in root

    lineage = chromium.dom(server + f"lineage/jobs/{TRAIN}")
    for job in (PREP, TRAIN, EVAL):
        assert f'data-ref="{job}"' in lineage
    assert lineage.count('class="edge"') == 2

    for name, page in (("jobs", "jobs"), ("plots", f"browse/jobs/{TRAIN}/plots/"),
                       ("lineage", f"lineage/jobs/{TRAIN}"), ("balance", "balance")):
        assert chromium.screenshot(server + page, name).stat().st_size > 5000
