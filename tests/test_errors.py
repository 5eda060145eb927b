"""Error kinds and exit codes (c3fs/errors.py), and how the mount daemon reports an error."""

from __future__ import annotations

import pytest

from c3fs import errors
from c3fs.errors import (
    BlobCorrupt,
    BlobUnavailable,
    C3fsError,
    DataError,
    DestinationError,
    MountError,
    NotFound,
    SourceError,
    StoreVersionError,
)
from c3fs.fuse import error_line, parse_error


@pytest.mark.parametrize("error", [
    NotFound("no job 'job_x'"), StoreVersionError("format version 7"), SourceError("src: gone"),
    DestinationError("dst: full"), MountError("mountpoint busy"), C3fsError("plain"),
])
def test_a_daemons_error_comes_back_as_the_same_kind(error: C3fsError) -> None:
    back = parse_error(error_line(error))
    assert type(back) is type(error) and back.exit_code == error.exit_code
    assert str(back) == str(error)


def test_an_error_of_another_module_comes_back_as_its_nearest_kind() -> None:
    class CopyTrouble(DataError):  # defined elsewhere, with its own constructor
        def __init__(self, count: int) -> None:
            super().__init__(f"{count} files not copied")

    back = parse_error(error_line(CopyTrouble(3)))
    assert type(back) is DataError and back.exit_code == 6 and str(back) == "3 files not copied"
    named = BlobCorrupt(b"\1" * 32, "ab" * 32, "bad").reading("/jobs/j/f")
    back = parse_error(error_line(named))
    assert type(back) is DataError and str(back) == str(named)
    assert parse_error("ok") is None
    assert type(errors.from_name("NoSuchKind", "x")) is C3fsError


def test_blob_errors_say_what_happened() -> None:
    unavailable = BlobUnavailable(b"\2" * 32, "cd" * 32, "connection refused")
    assert isinstance(unavailable, DataError) and unavailable.exit_code == 5  # the store's
    assert str(unavailable) == f"blob {'02' * 32} is unavailable in pack {'cd' * 32}: connection refused"
