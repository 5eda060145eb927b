"""Error kinds and exit codes (c3fs/errors.py), and how the mount daemon reports an error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

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
    SourceNotFound,
    StoreVersionError,
)
from c3fs.fuse import error_line, parse_error


@pytest.mark.parametrize("error", [
    NotFound("no job 'job_x'"), StoreVersionError("format version 7"), SourceError("src: EIO"),
    SourceNotFound("src: gone"), DestinationError("dst: full"), MountError("mountpoint busy"),
    C3fsError("plain"),
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


def test_a_source_that_is_gone_is_not_found_one_that_refuses_the_read_is_refused(
        tmp_path: Path) -> None:
    """A path of a pushed directory that is not there: exit 3, "not found"; one that is
    there but cannot be read (permission denied, an I/O error): exit 4, as a destination
    that refused the write. One line naming it either way."""
    from c3fs.ingest import source_error

    (tmp_path / "file").write_bytes(b"x")
    met = []
    for path in (tmp_path / "gone", tmp_path / "file" / "below"):  # ENOENT, ENOTDIR
        with pytest.raises(OSError) as caught:
            os.stat(path)
        met.append((str(path), caught.value))
    met += [("f", PermissionError(errno.EACCES, os.strerror(errno.EACCES))),
            ("f", OSError(errno.EIO, os.strerror(errno.EIO)))]
    made = [source_error(where, exc, "cannot read") for where, exc in met]
    assert [type(e) for e in made] == [SourceNotFound, SourceNotFound, SourceError, SourceError]
    assert [e.exit_code for e in made] == [3, 3, 4, 4]
    assert str(made[0]) == f"{tmp_path}/gone: cannot read: No such file or directory"
    assert str(made[2]) == "f: cannot read: Permission denied"
    assert str(source_error("d", met[2][1])) == "d: Permission denied"


def test_one_line_shows_a_byte_that_is_not_utf8_as_xnn() -> None:
    """A local path's byte that is not UTF-8 (a surrogate from os.fsdecode) reads `\\xNN`,
    as everywhere else c3fs shows one; control characters stay escaped, the rest as is."""
    shown = errors.one_line(os.fsdecode(b"/src\xff/a\xfe\x1b\n\xc3\xa9"))
    assert shown == "/src\\xff/a\\xfe\\x1b\\n\u00e9"
    assert errors.one_line("\ud800") == "\\ud800"  # (no byte of a path: as repr shows it)
