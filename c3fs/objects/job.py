"""Job records: what a finished job (or an uploaded dataset) is. Written once, JSON.

A record is stored create-only at `refs/jobs/<id>` (datasets: `refs/datasets/<name>`) and is
never edited in place: `rm` deletes the ref, nothing rewrites it.
"""

from __future__ import annotations

from typing import NoReturn

import msgspec

from c3fs.errors import FormatError
from c3fs.objects.ids import check_name, parse_hex_id
from c3fs.objects.nesting import check_json_depth

RECORD_VERSION = 1
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
TIMEOUT = "TIMEOUT"
CANCELED = "CANCELED"
STATUSES = (SUCCEEDED, FAILED, TIMEOUT, CANCELED)
JOB = "job"
DATASET = "dataset"
MAX_TIME = 9_000_000_000.0  # year 2255: in nanoseconds it still fits in st_mtime_ns (int64)
MAX_COUNT = 2**63 - 1  # bytes and files fit in a signed 64-bit integer
MAX_TEXT = 1024  # reason, host
MAX_COMMAND = 4 * 1024 * 1024  # characters of the command line, all arguments together
MAX_INPUTS = 10_000
MAX_PATH = 4096  # an input's ref and mount point


class Input(msgspec.Struct, frozen=True):
    ref: str  # as the user gave it (may be /projects/<p>/jobs/latest or a tag)
    root: str
    mount: str = ""
    resolved: str = ""  # the path `ref` resolved to: /jobs/<id>/... or /datasets/<name>/...


class JobRecord(msgspec.Struct, kw_only=True, frozen=True):
    version: int = RECORD_VERSION
    kind: str = JOB
    id: str
    project: str
    status: str = SUCCEEDED
    reason: str = ""
    exit_code: int | None = None
    command: list[str] = []
    created: float
    started: float | None = None
    ended: float | None = None
    root: str
    logical_bytes: int = 0
    files: int = 0
    stored_delta: int = 0
    inputs: list[Input] = []
    host: str = ""
    logs: str = ""  # tree id of the command's stdout and stderr (c3fs.jobs.logs), or ""

    @property
    def root_id(self) -> bytes:
        return bytes.fromhex(self.root)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobRecord)


Ref = tuple[str, str]  # (kind, name) of a job or dataset


def ref_of(path: str) -> Ref | None:
    """The job or dataset an input's ref names (`/jobs/<id>/...`,
    `/projects/<p>/jobs/<id>/...`, `/datasets/<name>`), or None (a tag, `latest`, a path
    with `..`)."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        return None
    if len(parts) >= 4 and parts[0] == "projects":
        if parts[2] == "tags" or parts[2:4] == ["jobs", "latest"]:
            return None  # moves: only what it resolved to (`resolved`) names a record
        parts = parts[2:]
    if len(parts) >= 2 and parts[0] in ("jobs", "datasets"):
        return (JOB if parts[0] == "jobs" else DATASET), parts[1]
    return None


def input_ref(item: Input) -> Ref | None:
    """The record an input was read from: what its ref resolved to when it ran, else the ref."""
    return ref_of(item.resolved) if item.resolved else ref_of(item.ref)


def encode_record(record: JobRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes) -> JobRecord:
    check_json_depth(data, "job record")
    try:
        record = _decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:  # bad UTF-8, deep nesting
        raise FormatError(f"damaged job record: {exc}") from None
    try:
        check_name(record.id)
        check_name(record.project, "project")
        parse_hex_id(record.root)
    except Exception as exc:
        raise FormatError(f"damaged job record: {exc}") from None
    if record.version != RECORD_VERSION or record.kind not in (JOB, DATASET):
        raise FormatError(f"job record version/kind not supported: {record.version}/{record.kind}")
    if record.status not in STATUSES:
        raise FormatError(f"job record has unknown status {record.status!r}")
    _check_fields(record)
    return record


def _check_fields(record: JobRecord) -> None:
    """Every field in its range, so that no reader has to guess (a time of 1e300 would crash
    `ls`; a reason of 1 GB fill the terminal): FormatError naming the field."""
    for name in ("created", "started", "ended"):
        value = getattr(record, name)
        if value is not None and not 0 <= value <= MAX_TIME:  # (NaN and inf fail too)
            _bad(name, value)
    for name in ("logical_bytes", "files", "stored_delta"):
        if not 0 <= getattr(record, name) <= MAX_COUNT:
            _bad(name, getattr(record, name))
    if record.exit_code is not None and not -(2**31) <= record.exit_code < 2**31:
        _bad("exit_code", record.exit_code)
    for name in ("reason", "host"):
        if len(getattr(record, name)) > MAX_TEXT:
            _bad(name, f"{len(getattr(record, name))} characters")
    if sum(len(arg) + 1 for arg in record.command) > MAX_COMMAND:
        _bad("command", f"{len(record.command)} arguments, too long")
    if len(record.inputs) > MAX_INPUTS:
        _bad("inputs", f"{len(record.inputs)} of them")
    for item in record.inputs:
        _check_input(item)
    if record.logs:
        try:
            parse_hex_id(record.logs)
        except Exception:
            _bad("logs", f"{record.logs[:80]!r} is not a tree id")


def _check_input(item: Input) -> None:
    if max(len(item.ref), len(item.mount), len(item.resolved)) > MAX_PATH:
        _bad("inputs", "a ref or mount point longer than 4096 characters")
    try:
        parse_hex_id(item.root)
    except Exception:
        _bad("inputs", f"root {item.root[:80]!r} is not a tree id")


def _bad(field: str, value: object) -> NoReturn:
    shown = repr(value) if isinstance(value, (int, float)) else value
    raise FormatError(f"damaged job record: field {field} out of range ({shown})")
