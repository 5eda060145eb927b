"""The LMDB index: where each blob lives, which packs exist, the job and dataset records.

It is a cache of the store, never the truth: `sync` reconciles it with the store's listing
(packs added or removed by other processes or machines, jobs registered elsewhere) and
`rebuild` recreates it from pack trailers and refs alone. An environment LMDB cannot open
is deleted and rebuilt. Only the `local` table (what `pull` already fetched) is this machine's own.

An environment never crosses a fork: LMDB forbids using it in the child, and py-lmdb refuses
to open the same files again there while the inherited handle exists (closing that handle in
the child would free the parent's reader slots). `environments_open` tells a caller about to
fork (the mount daemon's start) to exec a fresh interpreter instead; "already open in this
process" is reported as such, never taken for damage.

Read transactions are short and may run on the FUSE event loop; writes happen in one
transaction per pack or per sync.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import struct
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, NoReturn

import lmdb

from c3fs.errors import FormatError, NotFound, StoreError, UsageError
from c3fs.fsutil import make_private_dir, sorted_spilled
from c3fs.objects import refsnap
from c3fs.objects.job import DATASET, JOB, JobRecord, decode_record, encode_record, input_ref
from c3fs.objects.pack import PACK_TABLE, PackEntry, entry_table
from c3fs.preload import cache_dir
from c3fs.store.backend import KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)

# 2: `by_created`; 3: `by_input` (an index of an older schema is made anew: a full sync)
SCHEMA = b"3"
_LOC = struct.Struct("<32sQIIBB")
_PACK = struct.Struct("<Q")
TABLE = PACK_TABLE  # a pack's entry: blob id, then what `_LOC` holds after the pack id
assert TABLE.size == _LOC.size
_ADDING = b"adding/"  # `meta` key prefix: + a pack id whose blobs are being recorded

# In its own table (`stored`): (packs, their summed size), kept with each pack added or
# removed. statfs sums pack sizes, and reading a pack's record maps its whole list of blob ids
# (py-lmdb touches every page of a value it returns): ~32 MB read at a million blobs, ~1 s on
# a cold page cache, which `find` waited for (its first request is a statfs). Used while its
# count of packs agrees with the packs table (else recounted the long way and kept again).
_STORED = b"stored_bytes"
_STORED_VALUE = struct.Struct("<QQ")

INDEX_BATCH = 4096  # blobs recorded or forgotten per write transaction
REF_FETCHES = 16  # refs fetched at once during a sync (requests in flight on a remote store)
REF_BATCH = 1000  # refs recorded per write transaction
REF_SORT_RUN = 65536  # a full sync sorts the store's ref names this many at a time (~5 MB)
_MAP_SIZE = 1 << 36
MAPPED_BUDGET = 16 * 1024 * 1024  # index pages a process keeps mapped (see release_pages)
CHECK_EVERY = 128  # lookups between two looks at the process's mapped pages (a lookup that
# faults maps up to 16 pages: the kernel maps the neighbours it has, fault_around_bytes)
_MADV_DONTNEED = 4
PREFETCH_MAX = 64 * 1024 * 1024  # indexes up to this size are read ahead whole when opened
LEARN_BATCH = 256  # packs whose trailers are held in memory at once by a sync
FULL_EVERY = 600.0  # seconds between full listings of refs and packs, on a store with a log
FULL_EVERY_ENV = "C3FS_FULL_SYNC_EVERY"  # overrides it (0: list everything at every sync)
LOG_SLACK_MS = 300_000  # each poll of the change log looks this far back (clock skew, slow writers)
SNAPSHOT_EVERY = 3600.0  # seconds: a full listing stores a ref snapshot if the newest is older
SNAPSHOT_MIN_REFS = 1000  # stores with fewer refs list them all (a few requests) and store none
SNAPSHOT_BATCH = 10_000  # records per write transaction when learning a snapshot
SNAPSHOT_MAX_AGE = 12 * 3600.0  # older ones are not read: gc keeps the log 24 h (CHANGES_KEEP)


class IndexUnavailable(StoreError):
    """The local index cannot be opened or written (disk full, no permission)."""


class IndexDamaged(IndexUnavailable):
    """LMDB found a damaged page, or a value does not decode. The index was deleted when this
    was raised, so the next open rebuilds it from the store."""

    def __init__(self, path: Path, why: str) -> None:
        self.reason = f"index at {path} is damaged ({why})"  # for a warning, when repaired
        super().__init__(f"the local {self.reason}; it was deleted, and the next command "
                         "rebuilds it from the store: run this one again")


# What a damaged data.mdb gives (LMDB keeps no checksums: a bad page is found when a walk
# meets it), and what a damaged value gives when it is decoded.
_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.PanicError, lmdb.BadTxnError,
           lmdb.InvalidError, lmdb.IncompatibleError, lmdb.VersionMismatchError,
           lmdb.BadDbiError, struct.error, UnicodeDecodeError, FormatError)


class Location(NamedTuple):
    pack_id: str
    offset: int
    length: int
    plain_len: int
    codec: int
    kind: int


def _location(raw: bytes) -> Location:
    pack_raw, offset, length, plain_len, codec, kind = _LOC.unpack(raw)
    return Location(pack_raw.hex(), offset, length, plain_len, codec, kind)


_OPEN: weakref.WeakSet[Index] = weakref.WeakSet()  # the indexes this process opened


def environments_open() -> bool:
    """Whether this process holds an open LMDB environment (a fork must not carry it)."""
    return any(not index.closed for index in list(_OPEN))


def cache_root() -> Path:
    return Path(cache_dir())


def index_path(store_id: str) -> Path:
    return cache_root() / store_id / "index"


def _known_path(url: str) -> Path:
    """Where the id of the s3:// store `url` is noted (`s3://b/p/` and `s3://b/p` alike)."""
    from urllib.parse import urlsplit

    import blake3

    parts = urlsplit(url)
    name = f"s3://{parts.netloc}/{parts.path.strip('/')}".rstrip("/")
    return cache_root() / "stores" / blake3.blake3(name.encode()).hexdigest(8)


def remember_store(url: str, store_id: str) -> None:
    """Note which store id `url` has, so that shell completion can find the index of a
    remote store without asking it (`known_store_id`). Written once per store and machine."""
    if not url.startswith("s3://"):
        return  # a local store's config is read directly
    path = _known_path(url)
    try:
        if path.read_text() == store_id:
            return
    except OSError:
        pass
    with contextlib.suppress(OSError):
        make_private_dir(path.parent)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, store_id.encode())
        finally:
            os.close(fd)
        os.replace(temp, path)


def known_store_id(url: str) -> str | None:
    """The id of the store at `url` as this machine knows it without asking the store: a
    local store's config, or what `remember_store` noted; None if unknown."""
    import msgspec

    try:
        if url.startswith("s3://"):
            text = _known_path(url).read_text()
        else:
            text = msgspec.json.decode(Path(url, "config").read_bytes()).get("store_id")
    except (OSError, ValueError, AttributeError, StoreError, msgspec.DecodeError):
        return None
    return text if isinstance(text, str) and text.isalnum() else None


class Index:
    def __init__(self, path: Path, store_id: str) -> None:
        self.path = path
        self.store_id = store_id.encode()
        self._sync_lock = threading.Lock()
        self._damage_lock = threading.Lock()
        self._replacing = False
        self.closed = False
        self._damaged_refs: set[tuple[str, str]] = set()  # logged already
        self._changes_seen: dict[str, int] = {}  # change log keys applied: key -> stamp
        self._lookups = 0  # since the mapped pages were last looked at
        self._mapped_limit = 0  # release when the process maps more file pages than this
        self._map_lock = threading.Lock()  # no release while the environment closes
        self._map: tuple[weakref.ref, int] | None = None  # an environment, its map's address
        self.env = self._open_env()
        _OPEN.add(self)
        try:
            self.fresh = self._check_identity()
        except IndexDamaged as exc:  # `_damaged` has put a new, empty one in its place
            log.warning("%s; rebuilding it from the store", exc.reason)

    def _open_env(self) -> lmdb.Environment:
        try:
            make_private_dir(self.path)
            try:
                return self._lmdb_open()
            except (lmdb.DiskError, lmdb.ReadonlyError):
                raise
            except lmdb.Error as exc:
                if not _already_open(exc):
                    log.warning("index at %s is damaged (%s); rebuilding it from the store",
                                self.path, exc)
                elif not self._replacing:  # a bug, or an environment inherited through fork
                    raise IndexUnavailable(f"cannot open the local index at {self.path}: it "
                                           "is already open in this process") from None
                # else: replacing, the files are new. "Already open" is a replaced environment
                # being closed by another thread, whose freed inode numbers the new files
                # reuse before py-lmdb forgets them: new files with other inodes end that.
                _remove_tree(self.path)
                make_private_dir(self.path)
                return self._lmdb_open()
        except (lmdb.Error, OSError) as exc:
            raise IndexUnavailable(f"cannot open the local index at {self.path}: "
                                   f"{_reason(exc, self.path)}") from None

    def _write(self) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        """A write transaction; a full disk is a one-line error, not an lmdb traceback."""
        return self._txn(write=True)

    def _read(self) -> contextlib.AbstractContextManager[lmdb.Transaction]:
        """A read transaction; decode what it returns inside it, so damage is caught too."""
        return self._txn(write=False)

    @contextlib.contextmanager
    def _txn(self, write: bool, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        env = self.env
        try:
            with env.begin(write=write, buffers=buffers) as txn:
                yield txn
        except _DAMAGE as exc:
            self._damaged(exc, env)
        except lmdb.Error as exc:
            if self._replaced(env):
                self._damaged(exc, env)
            if not write:
                raise
            raise IndexUnavailable(f"cannot write the local index at {self.path}: "
                                   f"{_reason(exc, self.path)}") from None

    def _damaged(self, exc: BaseException, env: lmdb.Environment) -> NoReturn:
        """Replace the damaged environment `env` with a new, empty one (the first thread to
        see it does; processes that have it open keep their mapping) and say so in one line.
        The next sync fills the new one from the store (`BlobSource` syncs and retries at
        once); the `local` table (what `pull` fetched: this machine's own) is carried over
        when it can still be read."""
        why = str(exc) if isinstance(exc, lmdb.Error) else f"a value does not decode: {exc}"
        with self._damage_lock:
            if env is self.env:
                local = self._salvage_local(env)
                _remove_tree(self.path)
                # The old environment is not closed: other threads may be in it; it goes
                # when their transactions do. Until `env` is the new one, the table handles
                # may be the new ones: an error a thread meets then is a retry (`_replaced`).
                self._replacing = True
                try:
                    self.env = self._open_env()
                finally:
                    self._replacing = False
                self.fresh = self._check_identity()
                if local:
                    with self._write() as txn:
                        for key, value in local.items():
                            txn.put(key, value, db=self.local)
        raise IndexDamaged(self.path, why.splitlines()[0] if why else type(exc).__name__) from None

    def _salvage_local(self, env: lmdb.Environment) -> dict[bytes, bytes]:
        """The `local` table of a damaged environment, if its pages can still be read."""
        try:
            with env.begin() as txn:
                return {bytes(k): bytes(v) for k, v in txn.cursor(db=self.local)}
        except lmdb.Error:
            log.warning("the local table of the damaged index is lost too: the next pull "
                        "fetches every job again (files already there are skipped)")
            return {}

    def _replaced(self, env: lmdb.Environment) -> bool:
        """Whether `env`, which an operation began in, is being or has been replaced."""
        return self._replacing or env is not self.env

    def _lmdb_open(self) -> lmdb.Environment:
        _reserve(self.path / "lock.mdb", 64 * 1024)
        try:
            env = self._lmdb_env()
        except lmdb.Error as exc:
            if "already open" not in str(exc):
                raise
            # lmdb >= 3 refuses files it takes for those of an environment still open in
            # this process; after the index was replaced, that is an old environment only a
            # reference cycle keeps (an exception's frames, in a thread that met the
            # damage): collected, it is closed and forgotten. Without this, 1 in 3 runs of
            # the threaded replacement test failed here.
            gc.collect()
            env = self._lmdb_env()
        _check_not_truncated(env, self.path / "data.mdb")
        _prefetch(self.path / "data.mdb")
        self.blobs = env.open_db(b"blobs")
        self.packs = env.open_db(b"packs")
        self.jobs = env.open_db(b"jobs")
        self.datasets = env.open_db(b"datasets")
        self.by_created = env.open_db(b"by_created")  # created, kind, id: the newest first
        self.by_input = env.open_db(b"by_input")  # an input's kind/name, then its consumer's
        self.meta = env.open_db(b"meta")
        self.local = env.open_db(b"local")
        self.stored = env.open_db(b"stored")  # `_STORED`: the packs' summed size (statfs)
        return env

    def _lmdb_env(self) -> lmdb.Environment:
        return lmdb.open(str(self.path), map_size=_MAP_SIZE, max_dbs=16, readahead=False,
                         mode=0o600, lock=True)

    def _check_identity(self) -> bool:
        """True when the index is new (or was for another store) and needs a full sync."""
        with self._write() as txn:
            if txn.get(b"store_id", db=self.meta) == self.store_id and txn.get(
                b"schema", db=self.meta
            ) == SCHEMA:
                return txn.get(b"synced", db=self.meta) is None
            for db in (self.blobs, self.packs, self.jobs, self.datasets, self.local,
                       *self._by_record, self.stored):
                txn.drop(db, delete=False)
            txn.put(b"store_id", self.store_id, db=self.meta)
            txn.put(b"schema", SCHEMA, db=self.meta)
            for key in (b"synced", b"full_synced", b"log_cursor"):
                txn.delete(key, db=self.meta)
        return True

    def close(self) -> None:
        self.closed = True
        with self._map_lock:
            self.env.close()

    def release_pages(self) -> None:
        """Unmap the pages of the index this process has read (MADV_DONTNEED: they stay in
        the page cache, and a lookup maps again the few it reads). LMDB reads through a
        shared map of data.mdb and never unmaps a page: after `cat` of a million small files
        through the mount, every leaf of the blob table had been read once and counted in
        the daemon's RSS (166 MiB at a million blobs). Lookups call this when the process
        maps MAPPED_BUDGET more file pages than after the last release (a look every
        CHECK_EVERY lookups: /proc/self/statm). The current environment's map only, found
        in /proc/self/maps (a map of a replaced index's file says "(deleted)"), never while
        the index is being replaced or closed."""
        with self._damage_lock, self._map_lock:
            env = self.env  # (held: not closed by the collector meanwhile)
            if self.closed:
                return
            known = self._map
            if known is None or known[0]() is not env:
                found = _mapped(str(self.path / "data.mdb"), _MAP_SIZE)
                known = self._map = None if found is None else (weakref.ref(env), found)
            if known is not None:  # (the pages in use: the rest of the map is never read)
                used = (env.info()["last_pgno"] + 1) * _PAGE
                _madvise(known[1], min(used, _MAP_SIZE), _MADV_DONTNEED)
            del env
        self._mapped_limit = _file_pages() + MAPPED_BUDGET

    def _check_mapped(self) -> None:
        self._lookups = 0
        if _file_pages() > self._mapped_limit:
            self.release_pages()

    # blobs --------------------------------------------------------------------------------
    def lookup(self, blob_id: bytes) -> Location | None:
        return self.lookup_many((blob_id,))[0]

    def lookup_many(self, blob_ids: Sequence[bytes]) -> list[Location | None]:
        """`lookup` of each of `blob_ids`, in one read transaction (a copy's small files)."""
        self._lookups += len(blob_ids)  # (not atomic: a look may come a few lookups late)
        if self._lookups >= CHECK_EVERY:
            self._check_mapped()
        env = self.env
        try:  # the hot path: no context manager of our own
            with env.begin(buffers=False) as txn:
                raws = [txn.get(blob_id, db=self.blobs) for blob_id in blob_ids]
            return [None if raw is None else _location(raw) for raw in raws]
        except _DAMAGE as exc:
            self._damaged(exc, env)
        except lmdb.Error as exc:
            if self._replaced(env):
                self._damaged(exc, env)
            raise

    def add_pack(self, pack_id: str, size: int, entries: list[PackEntry], replace: bool = False) -> None:
        """Record a durable pack and its blobs (`replace`: point blobs here even if known)."""
        self.add_pack_table(pack_id, size, entry_table(entries), replace)

    def add_pack_table(self, pack_id: str, size: int, table: bytes | bytearray,
                       replace: bool = False) -> None:
        """`add_pack` of a pack's entries as a table of `TABLE` records (`PackBuilder.table`).

        The blobs are written in order of their ids, `INDEX_BATCH` to a transaction: a write
        transaction copies every page it changes into memory, which LMDB keeps for reuse
        until the environment closes, and each commit moves those pages elsewhere in the
        file, which a lookup then maps. One transaction per pack of 100,000 small blobs
        (random ids) rewrote the whole blob table each time: a push of 1,000,000 files held
        ~130 MiB of such pages and had mapped a 366 MiB file (the table: 131 MiB). In id
        order, a batch changes only the pages of its range of ids.

        The pack's own record comes first, noted as being added (`_ADDING` in `meta`) until
        its last batch: a sync completes a pack a crash left half added, or removes it."""
        pack_raw = bytes.fromhex(pack_id)
        table = bytes(table)
        ids = sorted(table[i : i + TABLE.size] for i in range(0, len(table), TABLE.size))
        adding = _ADDING + pack_raw
        for first in range(0, max(len(ids), 1), INDEX_BATCH):
            last = first + INDEX_BATCH >= len(ids)
            with self._write() as txn:
                if first == 0:
                    txn.put(pack_raw, _PACK.pack(size) + b"".join(r[:32] for r in ids),
                            db=self.packs)
                    _count_stored(txn, self.stored, self.packs, 1, size)  # (added again: a recount)
                    if not last:
                        txn.put(adding, b"", db=self.meta)
                elif last:
                    txn.delete(adding, db=self.meta)
                for record in ids[first : first + INDEX_BATCH]:
                    txn.put(record[:32], pack_raw + record[32:], db=self.blobs, overwrite=replace)

    def remove_pack(self, pack_id: str) -> None:
        """Forget a pack and those of its blobs that the index places in it, `INDEX_BATCH` to
        a transaction; the pack's record goes last (a crash leaves it for the next sync)."""
        pack_raw = bytes.fromhex(pack_id)
        with self._read() as txn:
            raw = txn.get(pack_raw, db=self.packs)
        ids = sorted(raw[i : i + 32] for i in range(_PACK.size, len(raw), 32)) if raw else []
        for first in range(0, len(ids), INDEX_BATCH):
            with self._write() as txn:
                for blob in ids[first : first + INDEX_BATCH]:
                    loc = txn.get(blob, db=self.blobs)
                    if loc is not None and loc[:32] == pack_raw:
                        txn.delete(blob, db=self.blobs)
        with self._write() as txn:
            if txn.delete(pack_raw, db=self.packs) and raw:
                _count_stored(txn, self.stored, self.packs, -1, -_PACK.unpack_from(raw)[0])
            txn.delete(_ADDING + pack_raw, db=self.meta)

    def _half_added(self) -> set[str]:
        """Packs whose `add_pack_table` a crash interrupted."""
        with self._read() as txn:
            cursor = txn.cursor(db=self.meta)
            found = set()
            if cursor.set_range(_ADDING):
                for key in cursor.iternext(values=False):
                    if not key.startswith(_ADDING):
                        break
                    found.add(bytes(key[len(_ADDING):]).hex())
            return found

    def pack_sizes(self) -> dict[str, int]:
        """Each pack's size, without copying (or mapping) its list of blob ids."""
        with self._txn(write=False, buffers=True) as txn:
            return {bytes(k).hex(): _PACK.unpack_from(v)[0] for k, v in txn.cursor(db=self.packs)}

    def stored_bytes(self) -> int:
        """The sum of `pack_sizes` (statfs): the running total (`_STORED`) while it counts
        as many packs as the table holds, else summed from every pack's record and kept."""
        with self._read() as txn:
            kept = txn.get(_STORED, db=self.stored)
            packs = txn.stat(self.packs)["entries"]
            if kept is not None:
                count, total = _STORED_VALUE.unpack(kept)
                if count == packs:
                    return total
        with self._txn(write=True, buffers=True) as txn:  # (buffers: no copy of each list)
            total = sum(_PACK.unpack_from(v)[0] for v in txn.cursor(db=self.packs).iternext(
                keys=False, values=True))
            txn.put(_STORED, _STORED_VALUE.pack(txn.stat(self.packs)["entries"], total),
                    db=self.stored)
            return total

    def blob_count(self) -> int:
        """How many blobs the index knows (gc and verify size their marks with it)."""
        with self._read() as txn:
            return txn.stat(self.blobs)["entries"]

    def pack_blob_ids(self, pack_id: str) -> list[bytes]:
        with self._read() as txn:
            raw = txn.get(bytes.fromhex(pack_id), db=self.packs) or b""
        ids = raw[_PACK.size :]
        return [ids[i : i + 32] for i in range(0, len(ids), 32)]

    def packs_holding(self, blob_id: bytes) -> list[str]:
        """The packs whose blob lists name `blob_id`: a walk of the packs table, for repairs."""
        found = []
        with self._read() as txn:
            for key, value in txn.cursor(db=self.packs):
                at = value.find(blob_id, _PACK.size)
                while at != -1 and (at - _PACK.size) % 32:
                    at = value.find(blob_id, at + 1)
                if at != -1:
                    found.append(bytes(key).hex())
        return found

    # records ------------------------------------------------------------------------------
    def _db(self, kind: str):
        return self.jobs if kind == JOB else self.datasets

    def put_record(self, record: JobRecord) -> None:
        with self._write() as txn:
            self._put_record(txn, record)

    def remove_record(self, kind: str, name: str) -> None:
        with self._write() as txn:
            self._delete_record(txn, kind, name)

    @property
    def _by_record(self) -> tuple:
        """The tables kept from the records (dropped with them)."""
        return (self.by_created, self.by_input)

    def _put_record(self, txn: lmdb.Transaction, record: JobRecord) -> None:
        name = record.id.encode()
        old = txn.get(name, db=self._db(record.kind))
        if old is not None:
            self._unkey(txn, record.kind, record.id, old)
        txn.put(name, encode_record(record), db=self._db(record.kind))
        txn.put(_created_key(record.created, record.kind, record.id), b"", db=self.by_created)
        for key in _input_keys(record):
            txn.put(key, b"", db=self.by_input)

    def _delete_record(self, txn: lmdb.Transaction, kind: str, name: str) -> None:
        old = txn.pop(name.encode(), db=self._db(kind))
        if old is not None:
            self._unkey(txn, kind, name, old)

    def _unkey(self, txn: lmdb.Transaction, kind: str, name: str, raw: bytes) -> None:
        """Remove what the tables kept from a record being replaced or removed (one that
        cannot be read left nothing there to remove: it was checked when it was put)."""
        try:
            old = decode_record(bytes(raw))
        except FormatError:
            return
        txn.delete(_created_key(old.created, kind, name), db=self.by_created)
        for key in _input_keys(old):
            txn.delete(key, db=self.by_input)

    def consumers(self, kind: str, name: str) -> list[JobRecord]:
        """The records whose inputs name the job or dataset `name` of `kind`, by name: read
        from `by_input`, not by decoding every record."""
        prefix = f"{kind}/{name}/".encode()
        found = []
        with self._read() as txn:
            cursor = txn.cursor(db=self.by_input)
            if not cursor.set_range(prefix):
                return found
            for key in cursor.iternext(values=False):
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                user_kind, _, user = key[len(prefix):].decode().partition("/")
                raw = txn.get(user.encode(), db=self._db(user_kind))
                if raw is not None:
                    found.append(_keyed_record(user.encode(), raw))
        return found

    def newest(self, kind: str, since: float | None = None) -> Iterator[JobRecord]:
        """Records of `kind`, the most recently created first, down to `since`: as many as
        the caller takes, each read when reached (`ls --limit 20` of 100,000 jobs reads 20)."""
        tag = f"/{kind}/".encode()
        with self._read() as txn:
            cursor = txn.cursor(db=self.by_created)
            if not cursor.last():
                return
            while True:
                key = bytes(cursor.key())
                created = _CREATED.unpack_from(key)[0]
                if since is not None and created < since:
                    return
                if key[_CREATED.size:].startswith(tag):
                    name = key[_CREATED.size + len(tag):]
                    raw = txn.get(name, db=self._db(kind))
                    if raw is not None:
                        yield _keyed_record(name, raw)
                if not cursor.prev():
                    return

    def record_batch(self, kind: str, by_created: bool, after: bytes | None, count: int,
                     since: float | None = None) -> list[tuple[bytes, JobRecord]]:
        """Up to `count` records of `kind` that come after the key `after` (None: from the
        first; `since`: the first created then), in the order of their names or of their
        creation, each with its key to go on from: a listing of 100,000 jobs is read a
        batch at a time, in a transaction of its own, never held whole."""
        found: list[tuple[bytes, JobRecord]] = []
        with self._read() as txn:
            records = self._db(kind)
            if by_created:
                cursor = txn.cursor(db=self.by_created)
                start = after if after is not None else (
                    _CREATED.pack(since) if since is not None else b"")
                tag = f"/{kind}/".encode()
            else:
                cursor = txn.cursor(db=records)
                start = after if after is not None else b""
            if not cursor.set_range(start):
                return found
            if after is not None and cursor.key() == after and not cursor.next():
                return found
            while len(found) < count:
                key = bytes(cursor.key())
                if not by_created:
                    found.append((key, _keyed_record(key, cursor.value())))
                elif key[_CREATED.size:].startswith(tag):
                    name = key[_CREATED.size + len(tag):]
                    raw = txn.get(name, db=records)
                    if raw is not None:  # (a key whose record is gone: skipped, as `newest`)
                        found.append((key, _keyed_record(name, raw)))
                if not cursor.next():
                    break
        return found

    def record(self, kind: str, name: str) -> JobRecord | None:
        with self._read() as txn:
            raw = txn.get(name.encode(), db=self._db(kind))
            return _keyed_record(name.encode(), raw) if raw is not None else None

    def records(self, kind: str = JOB) -> list[JobRecord]:
        with self._read() as txn:
            raws = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=self._db(kind))]
            return [_keyed_record(key, raw) for key, raw in raws]

    def record_count(self, kind: str = JOB) -> int:
        with self._read() as txn:
            return txn.stat(self._db(kind))["entries"]

    def has_record(self, kind: str, name: str) -> bool:
        with self._read() as txn:
            return txn.get(name.encode(), db=self._db(kind)) is not None

    def record_keys(self, kind: str, after: bytes | None, count: int) -> list[bytes]:
        """Up to `count` names (keys) of records of `kind` after `after`, in order."""
        with self._read() as txn:
            cursor = txn.cursor(db=self._db(kind))
            if not (cursor.set_range(after) if after is not None else cursor.first()):
                return []
            keys: list[bytes] = []
            for key in cursor.iternext(values=False):
                if key == after:
                    continue
                keys.append(bytes(key))
                if len(keys) == count:
                    break
            return keys

    def record_names(self, kind: str = JOB) -> set[str]:
        with self._read() as txn:
            return {bytes(k).decode() for k in txn.cursor(db=self._db(kind)).iternext(values=False)}

    # local state --------------------------------------------------------------------------
    def local_get(self, key: str) -> bytes | None:
        with self._read() as txn:
            return txn.get(key.encode(), db=self.local)

    def local_put(self, key: str, value: bytes) -> None:
        with self._write() as txn:
            txn.put(key.encode(), value, db=self.local)

    # sync with the store ------------------------------------------------------------------
    def sync(self, store: Store, packs: bool = True, refs: bool = True,
             full: bool = False) -> None:
        """Bring the index up to date with the store (cheap when nothing changed). It walks
        the packs and records: damage it meets is repaired by starting a new index.

        On a store with a change log (`ref_log`), a sync of refs reads only the log's
        entries since the last sync (a few requests, however many refs the store has) and
        leaves packs to the reader, which relearns them when a blob is missing; a full
        listing of refs and packs is made when `full`, on a new index, and every
        `FULL_EVERY` seconds, and heals what the log missed (a writer that crashed between
        ref and log entry, or an older c3fs that writes no log)."""
        try:
            if refs and not full and self._log_usable(store) and self._sync_changes(store):
                return
            if refs and packs and not full and self._from_snapshot(store):
                return
            started_ms = self._sync(store, packs, refs)
            if refs and packs:
                self._snapshot_if_due(store, started_ms)
        except IndexDamaged as exc:
            self.heal(exc, store)

    def _log_usable(self, store: Store) -> bool:
        if store.config.ref_log < 1:
            return False
        every = full_sync_every()
        with self._read() as txn:
            full = txn.get(b"full_synced", db=self.meta)
            cursor = txn.get(b"log_cursor", db=self.meta)
            return (full is not None and cursor is not None
                    and 0 <= time.time() - float(bytes(full)) < every)

    def _sync_changes(self, store: Store) -> bool:
        """Apply the change log's entries since the cursor (less `LOG_SLACK_MS`), each once
        per process; an entry applied again by a new process is cheap: an add of a known
        ref fetches nothing, a removal of an unknown one does nothing. False if the index
        has no cursor (then the caller lists everything)."""
        with self._sync_lock:
            now_ms = int(time.time() * 1000)
            with self._read() as txn:
                raw = txn.get(b"log_cursor", db=self.meta)
            if raw is None:  # forgotten since `_log_usable` (a rebuild): list everything
                return False
            cursor = int(bytes(raw))
            since = min(cursor, now_ms) - LOG_SLACK_MS
            changes = [c for c in store.changes(since) if c.key not in self._changes_seen]
            last: dict[tuple[str, str], str] = {}
            removed = set()  # refs removed (and perhaps made again: a new record)
            for change in changes:  # in time order: the last op on a ref wins
                last[(change.kind, change.name)] = change.op
                if change.op == "rm":
                    removed.add((change.kind, change.name))
            fetch = []
            with self._read() as txn:
                for ref, op in last.items():
                    if op == "add" and (ref in removed
                                        or txn.get(ref[1].encode(), db=self._db(ref[0])) is None):
                        fetch.append(ref)
            with ThreadPoolExecutor(REF_FETCHES, thread_name_prefix="c3fs-ref") as pool:
                records = list(pool.map(lambda ref: self._fetch_ref(store, *ref), fetch))
            with self._write() as txn:
                for (kind, name), op in last.items():
                    if op == "rm" or (kind, name) in removed:
                        self._delete_record(txn, kind, name)
                for record in records:
                    if record is not None:
                        self._put_record(txn, record)
                txn.put(b"log_cursor", str(now_ms).encode(), db=self.meta)
                txn.put(b"synced", repr(time.time()).encode(), db=self.meta)
            for change in changes:
                self._changes_seen[change.key] = change.ms
            for key, ms in list(self._changes_seen.items()):
                if ms <= since:
                    del self._changes_seen[key]
        return True

    def heal(self, exc: IndexDamaged, store: Store) -> None:
        """After `exc`, `_damaged` has put a new, empty index in place: fill it from the store
        (the caller may then try again what met the damage)."""
        log.warning("%s; rebuilding it from the store", exc.reason)
        self._sync(store, packs=True, refs=True)

    def _sync(self, store: Store, packs: bool, refs: bool) -> int:
        """List packs and refs, learn what is new, forget what is gone; returns the moment
        (ms) the listing began: the log is read from there on."""
        started_ms = int(time.time() * 1000)
        with self._sync_lock, ThreadPoolExecutor(3, thread_name_prefix="c3fs-sync") as pool:
            # packs, jobs and datasets are learned side by side: on a remote store each is
            # round trips (a fresh machine's mount waits for all three; with 2 threads the
            # datasets' listing waited for the jobs': one more round trip to mount)
            done = [pool.submit(self._sync_packs, store)] if packs else []
            if refs:
                done += [pool.submit(self._sync_refs, store, kind) for kind in (JOB, DATASET)]
            for future in done:
                future.result()
            with self._write() as txn:
                txn.put(b"synced", repr(time.time()).encode(), db=self.meta)
                if packs and refs:
                    txn.put(b"full_synced", repr(started_ms / 1000).encode(), db=self.meta)
                    txn.put(b"log_cursor", str(started_ms).encode(), db=self.meta)
        return started_ms

    # ref snapshots (c3fs.objects.refsnap) ---------------------------------------------------
    def _from_snapshot(self, store: Store) -> bool:
        """A new index on a store with the log: learn the packs, take the records from the
        newest ref snapshot, then the log since the snapshot's moment, instead of fetching
        every ref. False (nothing learned) if there is no index-free start to make this way:
        the index has synced before, the store has no log or no recent snapshot, or the
        snapshot cannot be read (then the caller lists everything)."""
        if store.config.ref_log < 1 or not store.config.ref_snapshots:
            return False
        with self._read() as txn:  # a new index only: nothing known that may be gone
            if (txn.get(b"full_synced", db=self.meta) is not None
                    or any(txn.stat(db)["entries"] for db in (self.jobs, self.datasets))):
                return False
        try:
            newest = store.snapshots()
        except StoreError as exc:
            log.info("cannot list the store's ref snapshots (%s): listing every ref", exc)
            return False
        now_ms = int(time.time() * 1000)
        usable = [s for s in newest if now_ms - SNAPSHOT_MAX_AGE * 1000 <= s[0]
                  <= now_ms + LOG_SLACK_MS]
        if not usable:
            return False
        ms, want, key = usable[-1]
        with self._sync_lock, ThreadPoolExecutor(1, thread_name_prefix="c3fs-sync") as pool:
            packs = pool.submit(self._sync_packs, store)  # side by side, as a full sync does
            learned = self._learn_snapshot(store, ms, want, key)
            packs.result()
            if not learned:
                return False
            with self._write() as txn:
                txn.put(b"synced", repr(time.time()).encode(), db=self.meta)
                txn.put(b"full_synced", repr(time.time()).encode(), db=self.meta)
                txn.put(b"log_cursor", str(ms).encode(), db=self.meta)
        return self._sync_changes(store)

    def _learn_snapshot(self, store: Store, ms: int, want: str, key: str) -> bool:
        try:
            data = store.backend.get(key)
            batch: list[JobRecord] = []
            for record in refsnap.decode(data, ms, want):
                batch.append(record)
                if len(batch) >= SNAPSHOT_BATCH:
                    self.put_records(batch)
                    batch.clear()
            self.put_records(batch)
            return True
        except KeyMissing:  # deleted by gc since it was listed
            log.info("ref snapshot %s is gone: listing every ref", key)
        except FormatError as exc:
            log.warning("skipping a damaged ref snapshot (%s): %s; listing every ref", key, exc)
        except StoreError as exc:
            log.info("cannot read ref snapshot %s (%s): listing every ref", key, exc)
        with self._write() as txn:  # what a damaged one said is not kept
            for db in (self.jobs, self.datasets, *self._by_record):
                txn.drop(db, delete=False)
        return False

    def _snapshot_if_due(self, store: Store, started_ms: int) -> None:
        """After a full listing: store a ref snapshot of what it learned, if the store's
        newest is older than `SNAPSHOT_EVERY` and the store is big enough to need one. Best
        effort: a machine that may not write (read-only credentials) only logs it."""
        if store.config.ref_log < 1:
            return
        with self._read() as txn:
            count = sum(txn.stat(db)["entries"] for db in (self.jobs, self.datasets))
        if count < SNAPSHOT_MIN_REFS:
            return
        try:
            made = store.snapshots()
            if made and started_ms - made[-1][0] < SNAPSHOT_EVERY * 1000:
                return
            with self._read() as txn:
                data = refsnap.encode(started_ms, (bytes(value) for db in (self.jobs, self.datasets)
                                                   for _, value in txn.cursor(db=db)))
            key = store.put_snapshot(started_ms, data)
            if not store.config.ref_snapshots:  # from now on new machines look for them
                fresh = Store.open(store.backend, create=False)  # what others changed since
                fresh.save_config(ref_snapshots=1)
                store.config = fresh.config
            log.info("stored ref snapshot %s (%d records, %d bytes)", key, count, len(data))
        except StoreError as exc:
            log.info("could not store a ref snapshot: %s", exc)

    def _sync_packs(self, store: Store) -> None:
        known = self.pack_sizes()
        half = self._half_added()
        present = dict(store.list_packs())
        for pack_id in (known.keys() | half) - present.keys():
            log.info("pack %s is gone from the store; forgetting its blobs", pack_id)
            self.remove_pack(pack_id)
        new = sorted((present.keys() - known.keys()) | (half & present.keys()))
        for first in range(0, len(new), LEARN_BATCH):
            self._learn_packs(store, {p: present[p] for p in new[first : first + LEARN_BATCH]})

    def _learn_packs(self, store: Store, sizes: dict[str, int]) -> None:
        """Index packs another writer stored. In a local store that writer may not have made
        them durable yet (packs are fsynced in batches, before the writer's own ref), so they
        are fsynced here first: a push that dedups against them never names a pack that a
        power loss could take away. Learning 3,000 packs already on disk: 0.87 -> 1.17 s."""
        learned = {}
        with ThreadPoolExecutor(REF_FETCHES, thread_name_prefix="c3fs-pack") as pool:
            trailers = pool.map(lambda item: self._trailer(store, *item), sizes.items())
            for pack_id, entries in zip(sizes, trailers, strict=True):
                if entries is not None:
                    learned[pack_id] = entries
        try:
            store.sync_packs(list(learned))
        except (KeyMissing, OSError):  # one was deleted (gc) since, or the disk failed
            for pack_id in list(learned):
                try:
                    store.sync_packs([pack_id])
                except KeyMissing:
                    del learned[pack_id]
                except OSError as exc:
                    log.error("skipping pack %s: cannot make it durable: %s", pack_id, exc)
                    del learned[pack_id]
        for pack_id, entries in learned.items():
            self.add_pack(pack_id, sizes[pack_id], entries)

    @staticmethod
    def _trailer(store: Store, pack_id: str, size: int) -> list | None:
        """A pack's trailer entries (requests: fetched `REF_FETCHES` packs at a time), or None
        if it is gone or damaged (logged)."""
        try:
            return store.pack_entries(pack_id, size)
        except KeyMissing:
            return None
        except FormatError as exc:
            log.error("skipping damaged pack %s: %s", pack_id, exc)
            return None

    def _sync_refs(self, store: Store, kind: str) -> None:
        """Forget refs gone from the store and learn new ones. The store's names (sorted,
        in spilled runs past `REF_BATCH`) are walked beside the index's, `REF_BATCH` of each
        at a time, so neither side is held whole: 100,000 refs were two sets of ~20 MB.
        New refs are fetched `REF_FETCHES` at a time (each is a request on a remote store)
        and recorded a batch to a transaction (a commit is an fsync: one per ref made a new
        machine's first `ls` of 2,000 jobs take 10 s, 7.6 s of it in commits)."""
        present = sorted_spilled((name.encode() for name in store.list_refs(kind)),
                                 REF_SORT_RUN)
        ahead = next(present, None)  # the store's next name, not yet taken
        after: bytes | None = None
        with ThreadPoolExecutor(REF_FETCHES, thread_name_prefix="c3fs-ref") as pool:
            while True:
                known = self.record_keys(kind, after, REF_BATCH)
                end = known[-1] if len(known) == REF_BATCH else None  # None: the index's end
                listed: list[bytes] = []
                while ahead is not None and (end is None or ahead <= end):
                    if len(listed) == REF_BATCH:  # the rest of this stretch: next round
                        end = listed[-1]
                        known = [key for key in known if key <= end]
                        break
                    listed.append(ahead)
                    ahead = next(present, None)
                gone = sorted(set(known).difference(listed))
                if gone:
                    with self._write() as txn:
                        for key in gone:
                            self._delete_record(txn, kind, key.decode())
                new = sorted(set(listed).difference(known))
                if new:  # all at or before `end`: the next round's keys come after it
                    fetched = pool.map(lambda key: self._fetch_ref(store, kind, key.decode()),
                                       new)
                    self.put_records([record for record in fetched if record is not None])
                if end is None:  # (the index's end, and the store's: else `end` was set)
                    return
                after = end

    def put_records(self, records: list[JobRecord]) -> None:
        with self._write() as txn:
            for record in records:
                self._put_record(txn, record)

    def learn_ref(self, store: Store, kind: str, name: str) -> JobRecord | None:
        record = self._fetch_ref(store, kind, name)
        if record is not None:
            self.put_record(record)
        return record

    def _fetch_ref(self, store: Store, kind: str, name: str) -> JobRecord | None:
        """The record of a ref from the store, or None (damaged or unreadable: logged)."""
        try:
            record = store.get_ref(kind, name)
        except FormatError as exc:
            if (kind, name) not in self._damaged_refs:  # once per command (per Index)
                self._damaged_refs.add((kind, name))
                log.error("skipping a damaged ref: %s", exc)
            return None
        except NotFound:  # removed since it was listed (`rm`, gc): nothing to learn
            return None
        except StoreError as exc:
            log.warning("cannot read %s ref %s: %s", kind, name, exc)
            return None
        return record

    def rebuild(self, store: Store) -> None:
        """Forget everything but local state and relearn it from the store."""
        try:
            with self._sync_lock, self._write() as txn:
                for db in (self.blobs, self.packs, self.jobs, self.datasets, *self._by_record,
                           self.stored):
                    txn.drop(db, delete=False)
        except IndexDamaged as exc:  # dropping walks every page: a new one is in its place
            self.heal(exc, store)
            return
        self.sync(store, full=True)

    def iter_blobs(self) -> Iterator[tuple[bytes, Location]]:
        with self._read() as txn:
            items = [(bytes(k), _LOC.unpack(v)) for k, v in txn.cursor(db=self.blobs)]
        for blob_id, (pack_raw, offset, length, plain_len, codec, kind) in items:
            yield blob_id, Location(pack_raw.hex(), offset, length, plain_len, codec, kind)


_CREATED = struct.Struct(">d")  # a time >= 0 (records are checked): bytes sort as numbers


def _keyed_record(key: bytes, raw) -> JobRecord:
    """The record the index holds under `key`, which must be its id: LMDB keeps no
    checksums, and a damaged key would list one job twice (a sync, not finding it under its
    name, adds it again) or under a name nobody gave it. A mismatch is damage (healed)."""
    record = decode_record(bytes(raw))
    if record.id.encode() != key:
        raise FormatError(f"the index holds the record of {record.id!r} under {key!r}")
    return record


def _input_keys(record: JobRecord) -> set[bytes]:
    """`by_input` keys of a record: the kind and name of each job or dataset its inputs
    name, then its own (`job/a/job/b`: b read a). Names hold no `/`: they are checked."""
    own = f"/{record.kind}/{record.id}"
    return {f"{ref[0]}/{ref[1]}{own}".encode()
            for ref in map(input_ref, record.inputs) if ref is not None}


def _created_key(created: float, kind: str, name: str) -> bytes:
    return _CREATED.pack(created) + f"/{kind}/{name}".encode()


def full_sync_every() -> float:
    """Seconds between full listings: $C3FS_FULL_SYNC_EVERY, else `FULL_EVERY`."""
    raw = os.environ.get(FULL_EVERY_ENV)
    if not raw:
        return FULL_EVERY
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{FULL_EVERY_ENV}={raw!r} is not a number of seconds") from None


def _already_open(exc: lmdb.Error) -> bool:
    """py-lmdb's refusal to open files this process has open (a plain lmdb.Error)."""
    return "already open in this process" in str(exc)


def _reserve(path: Path, size: int) -> None:
    """Allocate the blocks of LMDB's lock file before LMDB maps it: it writes the file through
    the map, and on a full tmpfs that write is SIGBUS; here it is ENOSPC, a clear error."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def _prefetch(path: Path) -> None:
    """Ask the kernel to read an index of up to `PREFETCH_MAX` bytes in the background.

    LMDB maps the file with MADV_RANDOM (`readahead=False`, right for an index much larger
    than memory), so with a cold page cache every lookup that lands on a new page waits for a
    4 KiB read. The indexes of most stores are a few MB: one sequential read of the whole
    file costs less than its first few random ones (`cp -r` of the bench's 5,000 log files,
    cold: Index.lookup was 14% of the copying thread; 0.80-0.89 s -> 0.64-0.84 s).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size <= PREFETCH_MAX:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _count_stored(txn: lmdb.Transaction, stored, packs_db, packs: int, size: int) -> None:
    """Add `packs` and `size` to the running total of stored bytes (`_STORED`), if kept, or
    start it with the first pack of an empty table."""
    kept = txn.get(_STORED, db=stored)
    if kept is None:
        if packs == 1 and txn.stat(packs_db)["entries"] == 1:
            txn.put(_STORED, _STORED_VALUE.pack(1, size), db=stored)
        return
    count, total = _STORED_VALUE.unpack(kept)
    if count + packs >= 0 and total + size >= 0:
        txn.put(_STORED, _STORED_VALUE.pack(count + packs, total + size), db=stored)
    else:
        txn.delete(_STORED, db=stored)


def _check_not_truncated(env: lmdb.Environment, data_file: Path) -> None:
    """LMDB maps data.mdb: a page past the end of a truncated file is SIGBUS, not an error.
    The meta page (read with read(), always there) says how many pages must exist."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    actual = os.path.getsize(data_file)
    if actual < needed:
        env.close()
        raise lmdb.CorruptedError(f"data.mdb is truncated ({actual} of {needed} bytes)")


def _mapped(path: str, size: int) -> int | None:
    """The address of the one map of `size` bytes of the file at `path` in this process
    (None if there is none, or more than one)."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.endswith(path + "\n"):
                    low, high = line.split(None, 1)[0].split("-")
                    if int(high, 16) - int(low, 16) == size:
                        found.append(int(low, 16))
    except OSError:  # not Linux: nothing is released
        return None
    return found[0] if len(found) == 1 else None


def _file_pages() -> int:
    """Bytes of files (and shared memory) this process maps in memory: its RSS less the
    anonymous part (/proc/self/statm; 0 if unknown)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _madvise(address: int, length: int, advice: int) -> None:
    global _libc
    import ctypes  # (here: its import costs every command ~5 ms, and few call this)

    try:
        if _libc is None:
            _libc = ctypes.CDLL(None)
        _libc.madvise(ctypes.c_void_p(address), ctypes.c_size_t(length), ctypes.c_int(advice))
    except (OSError, AttributeError):
        pass


_libc = None  # a ctypes.CDLL, made on first use


def _remove_tree(path: Path) -> None:
    import shutil  # (here: it imports bz2 and lzma, ~2.5 ms of every command's start)

    shutil.rmtree(path, ignore_errors=True)


def _reason(exc: Exception, path: Path) -> str:
    """The error, or "disk full" when it is (LMDB may then report EIO instead of ENOSPC)."""
    text = getattr(exc, "strerror", None) or str(exc)
    try:
        fs = os.statvfs(path)
        full = fs.f_bavail * fs.f_frsize < 1024 * 1024
    except OSError:
        full = False
    return "disk full" if full or "No space left" in text else text


def open_index(store: Store) -> Index:
    remember_store(store.url, store.config.store_id)
    index = Index(index_path(store.config.store_id), store.config.store_id)
    if index.fresh:
        index.sync(store)
    return index
