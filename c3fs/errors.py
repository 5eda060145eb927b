"""Error classes. User mistakes are `C3fsError` subclasses: one-line message, exit code.

Damage to stored data is typed (`BlobMissing`, `BlobCorrupt`) with the ids needed to name it,
so the mount can answer EIO naming the chunk and `verify` can say which jobs break.
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """`text` with control characters escaped: an error stays one line, and a name from a
    crafted store cannot send escape sequences to the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class C3fsError(Exception):
    """An error the user can act on: printed as one line, exits with `exit_code`."""

    exit_code = 1


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
    unavailable = False  # True: the store did not answer (the blob may well be there)

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


class BlobUnavailable(BlobMissing):
    """The store did not answer for this blob (a hung or unreachable server): it may well be
    there, so nothing is repaired or relearned."""

    state = "unreadable"
    unavailable = True


class ChunkSizeMismatch(DataError):
    """A file's tree says a chunk holds more or fewer bytes than it does: the tree lies (the
    chunk itself is fine, and may serve other files)."""

    def __init__(self, blob_id: bytes, claimed: int, actual: int) -> None:
        self.blob_id = blob_id
        self.pack_id = None
        super().__init__(f"chunk {blob_id.hex()} holds {actual} bytes, but the tree says {claimed}")


class LockedError(C3fsError):
    exit_code = 7
