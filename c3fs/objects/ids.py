"""Identifiers: blob ids (blake3 of the plain bytes) and user-chosen job/project names."""

from __future__ import annotations

import os
import re
import time

import blake3

from c3fs.errors import InvalidId

ID_LEN = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def blob_id(data: bytes | memoryview) -> bytes:
    """The id of a chunk or tree: blake3 of its plain bytes (32 bytes)."""
    return blake3.blake3(data).digest()


def check_name(value: str, what: str = "job id") -> str:
    """Return `value` if it is a valid job, project or dataset name, else raise InvalidId."""
    if not is_name(value):
        raise InvalidId(
            f"invalid {what} {value!r}: use 1-128 of A-Z a-z 0-9 . _ - (starting with a letter or digit)"
        )
    return value


def check_new_job_id(value: str) -> str:
    """`check_name` of a job id being given to a new job: `latest` too is refused, the name
    of the link to a project's newest job (a job of that name made the link a loop, and was
    hidden behind it once another job came)."""
    check_name(value, "job id")
    if value == "latest":
        raise InvalidId("invalid job id 'latest': /projects/<p>/jobs/latest is the link to "
                        "the project's newest job")
    return value


def is_name(value: str) -> bool:
    """Whether `value` is a valid job, project or dataset name (see `check_name`)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def token_hex(nbytes: int) -> str:
    """A random hex token (as `secrets.token_hex`, without importing secrets: it loads
    OpenSSL through hmac, ~12 ms of every command's start with a cold page cache)."""
    return os.urandom(nbytes).hex()


def new_job_id() -> str:
    """A fresh job id such as `job_20261127_031952_a1b2c3`: sortable by time, unique."""
    return time.strftime("job_%Y%m%d_%H%M%S_", time.gmtime()) + token_hex(3)


def parse_hex_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != ID_LEN:
        raise InvalidId(f"not a blob id: {text!r}")
    return raw
