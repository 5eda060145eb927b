"""Error classes, all of them with their exit codes. User mistakes are `C3fsError`
subclasses: one-line message, exit code.

Damage to stored data is typed (`BlobMissing`, `BlobCorrupt`) with the ids needed to name it,
so the mount can answer EIO naming the chunk and `verify` can say which jobs break; a store
that did not answer is `BlobUnavailable` (the blob may well be there: nothing to repair, and
a copy stops instead of going on without the file). The path of the namespace a read failed
on is added to the same exception (`C3fsError.reading`), which keeps its type.

    exit 1 C3fsError   2 UsageError   3 NotFound, SourceNotFound   4 AlreadyExists,
    SourceError, DestinationError   5 StoreError   6 DataError, FormatError   7 LockedError
    8 MountError
"""

from __future__ import annotations

from typing import Self


def one_line(text: str) -> str:
    """`text` with control characters escaped: an error stays one line, and a name from a
    crafted store cannot send escape sequences to the terminal. A byte of a local path that
    is not UTF-8 (os.fsdecode keeps it as a surrogate) is `\\xNN`, as c3fs shows such a
    byte everywhere, not `\\udcNN`."""
    return "".join(c if c.isprintable() else _escaped(c) for c in text)


def _escaped(c: str) -> str:
    if "\udc80" <= c <= "\udcff":
        return f"\\x{ord(c) - 0xDC00:02x}"
    return repr(c)[1:-1]


class C3fsError(Exception):
    """An error the user can act on: printed as one line, exits with `exit_code`."""

    exit_code = 1
    path: str | None = None  # the namespace path whose reading met this error

    def reading(self, path: str) -> Self:
        """This error (same type, same fields) saying it was met reading `path` of the
        namespace. A copy: one fetch's error reaches every reader waiting for that blob, each
        naming its own file. An error that names a path already keeps it (the deepest one)."""
        if self.path is not None:
            return self
        error = type(self).__new__(type(self), *self.args)  # (no __init__: fields copied)
        error.__dict__.update(self.__dict__)
        error.path = path
        return error

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.path is None else f"cannot read {self.path}: {text}"


class UsageError(C3fsError):
    exit_code = 2


class InvalidId(UsageError):
    pass


class NotFound(C3fsError):
    exit_code = 3


class AlreadyExists(C3fsError):
    exit_code = 4


class NotADirectory(C3fsError):
    exit_code = 3


class IsADirectory(C3fsError):
    exit_code = 3


class StoreError(C3fsError):
    """The store is unusable: wrong format version, unreachable, permissions."""

    exit_code = 5


class StoreVersionError(StoreError):
    pass


class FormatError(C3fsError):
    """Bytes that do not decode as the object they claim to be (crafted or damaged)."""

    exit_code = 6


class DamagedRef(FormatError):
    """A ref that cannot be used: it does not decode, a field is out of range, or it names
    another job or kind than its key (`refs/jobs/zzz` holding `"id": "base"`)."""

    def __init__(self, kind: str, name: str, detail: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name}: {detail}")


class DataError(C3fsError):
    """Stored data is missing or damaged. Never answered with wrong bytes."""

    exit_code = 6


class BlobError(DataError):
    """One blob cannot be served; says which, in which pack, and why."""

    state = "unreadable"

    def __init__(self, blob_id: bytes, pack_id: str | None = None, detail: str = "") -> None:
        self.blob_id = blob_id
        self.pack_id = pack_id
        where = f" in pack {pack_id}" if pack_id else ""
        why = f": {detail}" if detail else ""
        super().__init__(f"blob {blob_id.hex()} is {self.state}{where}{why}")


class BlobMissing(BlobError):
    state = "missing"


class BlobCorrupt(BlobError):
    state = "corrupt"


class BlobUnavailable(BlobError):
    """The store did not answer for the pack holding the blob (after its retries): the blob
    may well be there, so nothing is repaired, and a copy stops rather than leaving it out.
    Exit 5, the store's, not 6: nothing is known to be damaged (a script must not take an
    outage for damage)."""

    state = "unavailable"
    exit_code = 5


class SourceError(C3fsError):
    """A file or directory of the pushed directory refused to be read (permission denied,
    an I/O error): exit 4, as a destination that refused the write."""

    exit_code = 4


class SourceNotFound(SourceError):
    """A file or directory of the pushed directory is not there (removed or moved since it
    was listed), or what was pushed is no directory: exit 3, not found. (The ingest leaves
    out, and names, what is removed between its listing and its first read: this reaches
    the user for the pushed directory itself, or a directory moved while it is walked.)"""

    exit_code = 3


class DestinationError(C3fsError):
    """A copy's destination refused a write (not a directory, a socket, disk full...)."""

    exit_code = 4


class ChunkSizeMismatch(DataError):
    """A file's tree says a chunk holds more or fewer bytes than it does: the tree lies (the
    chunk itself is fine, and may serve other files)."""

    def __init__(self, blob_id: bytes, claimed: int, actual: int) -> None:
        self.blob_id = blob_id
        self.pack_id = None
        super().__init__(f"chunk {blob_id.hex()} holds {actual} bytes, but the tree says {claimed}")


class LockedError(C3fsError):
    exit_code = 7


class MountError(C3fsError):
    exit_code = 8


class FuseUnavailable(MountError):
    pass


def portable_name(exc: C3fsError) -> str:
    """The name `from_name` rebuilds `exc`'s kind from (the mount daemon reports its error
    through a pipe): its own class, or the nearest one of this module built from a message."""
    for cls in type(exc).__mro__:
        if _BY_NAME.get(cls.__name__) is cls:
            return cls.__name__
    return C3fsError.__name__


def from_name(name: str, message: str) -> C3fsError:
    """The error of kind `name` (see `portable_name`) with `message`; C3fsError if unknown."""
    return _BY_NAME.get(name, C3fsError)(message)


_BY_NAME: dict[str, type[C3fsError]] = {
    cls.__name__: cls for cls in list(globals().values())
    if isinstance(cls, type) and issubclass(cls, C3fsError) and not issubclass(cls, BlobError)
}
