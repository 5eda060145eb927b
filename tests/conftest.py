"""Shared pytest fixtures and checks, one helper per purpose.

- every test: a private c3fs home (cache and default store), and no WARNING or worse logged
  by a `c3fs` logger that the test does not expect (`@pytest.mark.logs(pattern, ...)` names
  what it expects; a test that takes `caplog` checks the log itself);
- `fuse` tests are skipped where FUSE cannot mount (no /dev/fuse or fusermount3);
- a private store for a test (`store_env`, `repo`) and the CLI run in this process
  (`run_cli`) or as a subprocess (`c3fs_bin`);
- the S3 server of the session (`s3_server`, `s3_url`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clikit import CliResult  # noqa: F401  (re-exported: tests import it from here)
from fusehelp import fuse_works
from s3server import MotoServer  # tests/ is on sys.path (rootdir conftest, no __init__)

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs these checks on sample tests


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "logs(*patterns): the test expects c3fs to log warnings or errors whose "
        "messages match one of these regular expressions")


# every test: its own c3fs home ----------------------------------------------------------------
@pytest.fixture(autouse=True)
def _private_c3fs_home(tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the caller's ~/.cache/c3fs or default store: a test sees a
    machine where c3fs never ran (as CI does), unless it sets these itself."""
    home = tmp_path_factory.mktemp("c3fs-home")
    monkeypatch.setenv("C3FS_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))


# every test: no unexpected warnings from c3fs --------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_unexpected_c3fs_warnings(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test in which a `c3fs` logger logged WARNING or worse that the test did not
    declare (`@pytest.mark.logs`), unless the test takes `caplog` and checks the log itself."""
    records = _Records()
    logger = logging.getLogger("c3fs")
    logger.addHandler(records)
    try:
        yield
    finally:
        logger.removeHandler(records)
    if "caplog" in request.fixturenames:
        return
    marker = request.node.get_closest_marker("logs")
    patterns = marker.args if marker else ()
    unexpected = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records.records
                  if not any(re.search(p, r.getMessage()) for p in patterns)]
    if unexpected:
        pytest.fail("c3fs logged what the test does not expect (@pytest.mark.logs):\n"
                    + "\n".join(unexpected[:10]), pytrace=False)


# fuse tests: only where FUSE can mount ---------------------------------------------------------
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fuse") is not None and not fuse_works():
        pytest.skip("needs /dev/fuse and fusermount3")


# a private store, and the CLI ------------------------------------------------------------------
C3FS_BIN = Path(sys.executable).parent / "c3fs"


@dataclass(frozen=True)
class StoreEnv:
    """A private store and index cache for one test; C3FS_STORE / C3FS_CACHE_DIR point here."""

    root: Path
    store: Path
    cache: Path


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StoreEnv:
    env = StoreEnv(tmp_path, tmp_path / "store", tmp_path / "cache")
    monkeypatch.setenv("C3FS_STORE", str(env.store))
    monkeypatch.setenv("C3FS_CACHE_DIR", str(env.cache))
    monkeypatch.setenv("COLUMNS", "80")  # what a CI log or a pipe gets
    return env


@pytest.fixture
def repo(store_env: StoreEnv):
    """A Repo on the test's store (real LMDB under the test's cache dir)."""
    from c3fs.repo import Repo

    opened = Repo.open(str(store_env.store))
    try:
        yield opened
    finally:
        opened.close()


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def run_cli_in_process(argv: list[str]) -> CliResult:
    """`cli.main.main(argv)` with stdout/stderr captured and the root logger restored."""
    from c3fs_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = _exit_code(exc)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def run_cli(store_env: StoreEnv) -> Callable[..., CliResult]:
    """run_cli(["push", dir, "-p", "p"]) -> CliResult(code, out, err), in this process."""
    return run_cli_in_process


@pytest.fixture
def c3fs_bin(store_env: StoreEnv) -> Callable[..., CliResult]:
    """c3fs_bin("ls", "/jobs/") runs .venv/bin/c3fs in a subprocess with the test's env."""

    def run(*args: str | bytes, timeout: float = 600, **kwargs) -> CliResult:
        proc = subprocess.run(
            [str(C3FS_BIN), *args], capture_output=True, timeout=timeout,
            env=dict(os.environ), **kwargs,
        )
        decode = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
        return CliResult(proc.returncode, decode(proc.stdout), decode(proc.stderr))

    return run




# the S3 server (tests/s3server.py) ------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    """A moto S3 server for the whole session: .endpoint, .port, .stop(), .start()."""
    server = MotoServer.launch()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>/c3` on the session server, with the AWS_* variables pointing at it."""
    if not s3_server.running:  # a test stopped it and did not start it again
        s3_server.start()
    bucket = f"c3-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/c3"
