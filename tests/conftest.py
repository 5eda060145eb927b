"""Shared pytest fixtures. Each owner keeps fixtures in a clearly delimited block."""

from __future__ import annotations

# ---- S3 server fixtures (tests/s3server.py) -------------------------------------------
import uuid as _s3_uuid
from collections.abc import Iterator as _S3Iterator

import pytest as _s3_pytest
from s3server import MotoServer  # tests/ is on sys.path (rootdir conftest, no __init__)


@_s3_pytest.fixture(scope="session")
def s3_server() -> _S3Iterator[MotoServer]:
    """A moto S3 server for the whole session: .endpoint, .port, .stop(), .start()."""
    server = MotoServer.launch()
    try:
        yield server
    finally:
        server.stop()


@_s3_pytest.fixture
def s3_url(s3_server: MotoServer, monkeypatch: _s3_pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>/c3` on the session server, with the AWS_* variables pointing at it."""
    if not s3_server.running:  # a test stopped it and did not start it again
        s3_server.start()
    bucket = f"c3-{_s3_uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{bucket}/c3"


# ---- end of S3 server fixtures ---------------------------------------------------------


# ---- every test: its own c3fs cache and default store ----------------------------------
import pytest as _home_pytest  # noqa: E402


@_home_pytest.fixture(autouse=True)
def _private_c3fs_home(tmp_path_factory: _home_pytest.TempPathFactory,
                       monkeypatch: _home_pytest.MonkeyPatch) -> None:
    """No test reads or writes the caller's ~/.cache/c3fs or default store: a test sees a
    machine where c3fs never ran (as CI does), unless it sets these itself."""
    home = tmp_path_factory.mktemp("c3fs-home")
    monkeypatch.setenv("C3FS_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))


# ---- end of per-test c3fs home ---------------------------------------------------------


# ---- storage-core fixtures (issue 2: tests/test_objects.py, test_store_index.py, ----------
# ---- test_ingest_read.py, test_cli_core.py) -----------------------------------------------
import contextlib as _core_contextlib  # noqa: E402
import io as _core_io  # noqa: E402
import logging as _core_logging  # noqa: E402
import os as _core_os  # noqa: E402
import subprocess as _core_subprocess  # noqa: E402
import sys as _core_sys  # noqa: E402
from collections.abc import Callable as _CoreCallable  # noqa: E402
from dataclasses import dataclass as _core_dataclass  # noqa: E402
from pathlib import Path as _CorePath  # noqa: E402

import pytest as _core_pytest  # noqa: E402
from clikit import CliResult  # noqa: E402,F401  (re-exported: tests import it from here)

C3FS_BIN = _CorePath(_core_sys.executable).parent / "c3fs"


@_core_dataclass(frozen=True)
class StoreEnv:
    """A private store and index cache for one test; C3FS_STORE / C3FS_CACHE_DIR point here."""

    root: _CorePath
    store: _CorePath
    cache: _CorePath


@_core_pytest.fixture
def store_env(tmp_path: _CorePath, monkeypatch: _core_pytest.MonkeyPatch) -> StoreEnv:
    env = StoreEnv(tmp_path, tmp_path / "store", tmp_path / "cache")
    monkeypatch.setenv("C3FS_STORE", str(env.store))
    monkeypatch.setenv("C3FS_CACHE_DIR", str(env.cache))
    monkeypatch.setenv("COLUMNS", "80")  # what a CI log or a pipe gets
    return env


@_core_pytest.fixture
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
    from cli.main import main

    out, err = _core_io.StringIO(), _core_io.StringIO()
    root = _core_logging.getLogger()
    saved = (root.handlers[:], root.level)
    code = 0
    try:
        with _core_contextlib.redirect_stdout(out), _core_contextlib.redirect_stderr(err):
            try:
                main(list(argv))
            except SystemExit as exc:
                code = _exit_code(exc)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    return CliResult(code, out.getvalue(), err.getvalue())


@_core_pytest.fixture
def run_cli(store_env: StoreEnv) -> _CoreCallable[..., CliResult]:
    """run_cli(["push", dir, "-p", "p"]) -> CliResult(code, out, err), in this process."""
    return run_cli_in_process


@_core_pytest.fixture
def c3fs_bin(store_env: StoreEnv) -> _CoreCallable[..., CliResult]:
    """c3fs_bin("ls", "/jobs/") runs .venv/bin/c3fs in a subprocess with the test's env."""

    def run(*args: str | bytes, timeout: float = 600, **kwargs) -> CliResult:
        proc = _core_subprocess.run(
            [str(C3FS_BIN), *args], capture_output=True, timeout=timeout,
            env=dict(_core_os.environ), **kwargs,
        )
        decode = lambda b: b.decode("utf-8", "surrogateescape")  # noqa: E731
        return CliResult(proc.returncode, decode(proc.stdout), decode(proc.stderr))

    return run


# ---- end of storage-core fixtures ---------------------------------------------------------
