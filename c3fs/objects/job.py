"""Job records: what a finished job (or an uploaded dataset) is. Written once, JSON.

A record is stored create-only at `refs/jobs/<id>` (datasets: `refs/datasets/<name>`) and is
never edited in place: `rm` deletes the ref, nothing rewrites it.
"""

from __future__ import annotations

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


class Input(msgspec.Struct, frozen=True):
    ref: str
    root: str
    mount: str = ""


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

    @property
    def root_id(self) -> bytes:
        return bytes.fromhex(self.root)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobRecord)


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
    return record
