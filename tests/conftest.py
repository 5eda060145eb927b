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
