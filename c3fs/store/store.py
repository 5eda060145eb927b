"""The store: packs and refs on a backend, with a format version in `config`.

Keys::

    config                       StoreConfig (JSON)
    packs/<xx>/<pack id>         packs (see c3fs.objects.pack)
    refs/jobs/<job id>           job records, create-only
    refs/datasets/<name>         dataset records, create-only
    locks/<name>                 push and gc locks, mount leases, run -j reservations
                                 (see c3fs.store.locks)
    tags/<project>/<tag>/<gen>   tag records, create-only (see c3fs.jobs.tags)
    changes/<hour>/<ms>-<rand>-<add|rm>-<kind>-<name>
                                 the ref change log (`ref_log` 1 in config): empty objects,
                                 create-only, written right after the ref is made or removed
    snapshots/refs/<ms>-<blake3>  every record as of `ms` (c3fs.objects.refsnap), so that a
                                 new machine reads one object, then the log; optional (a
                                 store without any is read by listing every ref), create-only

The store's objects are the truth; the LMDB index is rebuilt from them.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator

import msgspec

from c3fs.errors import DamagedRef, FormatError, NotFound, StoreError, StoreVersionError
from c3fs.objects import pack as packfmt
from c3fs.objects import refsnap
from c3fs.objects.ids import check_name, is_name, token_hex
from c3fs.objects.job import DATASET, JOB, JobRecord, decode_record, encode_record
from c3fs.objects.nesting import check_json_depth
from c3fs.store.backend import Backend, Data, Deadline, KeyExists, KeyMissing
from c3fs.store.local import LocalBackend

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
KiB, MiB = 1024, 1024 * 1024
REF_PREFIX = {JOB: "refs/jobs/", DATASET: "refs/datasets/"}
REF_LOG = 1  # the ref change log's format version (`StoreConfig.ref_log`)
CHANGES = "changes/"
CHANGES_KEEP = 86400.0  # seconds gc keeps change log entries (readers need FULL_EVERY of them)
SNAPSHOTS = "snapshots/refs/"
SNAPSHOTS_KEPT = 2  # gc deletes all but the newest ones


class Change(msgspec.Struct, frozen=True):
    """One entry of the ref change log: `op` ("add" or "rm") of ref `kind`/`name`, stamped
    `ms` (milliseconds since the epoch, by the writer's clock)."""

    key: str
    ms: int
    op: str
    kind: str
    name: str


_stamp_lock = threading.Lock()
_last_stamp = 0


def change_stamp() -> int:
    """Now in milliseconds, strictly after this process's previous stamp: a process's own
    changes (an add then an rm in the same millisecond) keep their order in the log."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(int(time.time() * 1000), _last_stamp + 1)
        return _last_stamp


def change_key(ms: int, op: str, kind: str, name: str) -> str:
    hour = time.strftime("%Y%m%d%H", time.gmtime(ms / 1000))
    return f"{CHANGES}{hour}/{ms:013d}-{token_hex(4)}-{op}-{kind}-{name}"


def changes_after_key(ms: int) -> str:
    """The key every entry stamped after `ms` sorts after (`Backend.list`'s `after`)."""
    ms = max(ms, 0)
    return f"{CHANGES}{time.strftime('%Y%m%d%H', time.gmtime(ms / 1000))}/{ms:013d}"


def parse_change(key: str) -> Change | None:
    try:
        hour, _, rest = key[len(CHANGES):].partition("/")
        ms, _rand, op, kind, name = rest.split("-", 4)
    except ValueError:
        return None
    if not (key.startswith(CHANGES) and len(hour) == 10 and ms.isdigit() and op in ("add", "rm")
            and kind in REF_PREFIX and is_name(name)):
        return None
    return Change(key, int(ms), op, kind, name)


class StoreConfig(msgspec.Struct, kw_only=True):
    format: str = "c3fs"
    version: int = FORMAT_VERSION
    store_id: str
    created: float
    chunk_min: int = 64 * KiB
    chunk_avg: int = 128 * KiB
    chunk_max: int = 1 * MiB
    zstd_level: int = 1
    pack_target: int = 32 * MiB
    quota: int | None = None
    # 1: refs made or removed are also noted in `changes/` (readers poll that for what is
    # new); 0: a store made before the log (readers list all refs). Older c3fs ignores it.
    ref_log: int = 0
    # 1: `snapshots/refs/` holds ref snapshots (set by the first one stored), so that a new
    # machine looks for one only where there are some: a small store's mount makes no
    # request for them
    ref_snapshots: int = 0


class Store:
    def __init__(self, backend: Backend, config: StoreConfig) -> None:
        self.backend = backend
        self.config = config
        self._odd_keys: set[str] = set()  # odd keys under refs/ already warned about

    @property
    def url(self) -> str:
        return self.backend.url

    @functools.cached_property
    def uncached(self) -> Store:
        """This store read without any cache (`verify` must check the store itself)."""
        backend = self.backend.uncached
        return self if backend is self.backend else Store(backend, self.config)

    @functools.cached_property
    def direct(self) -> Store:
        """This store, each read fetching exactly its range and caching it nowhere (a copy's
        merged reads ahead, see `Backend.direct`)."""
        backend = self.backend.direct
        return self if backend is self.backend else Store(backend, self.config)

    # config -------------------------------------------------------------------------------
    @classmethod
    def open(cls, backend: Backend, create: bool = True) -> Store:
        try:
            raw = backend.get("config")
        except KeyMissing:
            if not create:
                raise StoreError(f"no c3fs store at {backend.url} (a push or a run creates "
                                 "it; check --store, C3FS_STORE or `store` in the c3fs config)") from None
            return cls._create(backend)
        return cls(backend, _decode_config(raw, backend.url))

    @classmethod
    def _create(cls, backend: Backend) -> Store:
        if backend.occupied():  # never turn someone's folder into a store
            raise StoreError(f"{backend.url} is not a c3fs store, and not empty: a new "
                             "store needs a new or empty directory")
        config = StoreConfig(store_id=token_hex(8), created=time.time(), ref_log=REF_LOG)
        try:
            backend.create("config", msgspec.json.encode(config))
        except KeyExists:  # another process created it first: use theirs
            return cls.open(backend, create=False)
        return cls(backend, config)

    def save_config(self, **changes) -> None:
        self.config = msgspec.structs.replace(self.config, **changes)
        self.backend.put("config", msgspec.json.encode(self.config))

    # packs --------------------------------------------------------------------------------
    @staticmethod
    def pack_key(pack_id: str) -> str:
        return f"packs/{pack_id[:2]}/{pack_id}"

    def put_pack(self, pack_id: str, data: Data, sync: bool = True) -> None:
        """Write a pack, given whole or as parts (a local disk writes them with writev; a
        remote store joins them, see `backend.joined`). sync=False may defer durability
        until `sync_packs`."""
        self.backend.put(self.pack_key(pack_id), data, sync=sync)

    def sync_packs(self, pack_ids: list[str]) -> None:
        """Make packs written with sync=False durable (a no-op where a put is durable)."""
        if pack_ids:
            self.backend.flush([self.pack_key(p) for p in pack_ids])

    def read(self, pack_id: str, offset: int, length: int) -> bytes:
        """`length` bytes of a pack from `offset`; KeyMissing if the pack is gone."""
        return self.backend.get(self.pack_key(pack_id), offset, length)

    def invalidate(self, pack_id: str, offset: int, length: int) -> bool:
        """Drop cached copies of this range of a pack (its bytes failed their check); True
        if there were any, so that reading it again may help."""
        return self.backend.invalidate(self.pack_key(pack_id), offset, length)

    def pack_size(self, pack_id: str) -> int:
        return self.backend.size(self.pack_key(pack_id))

    def list_packs(self) -> Iterator[tuple[str, int]]:
        for key, size in self.backend.list("packs/"):
            pack_id = key.rpartition("/")[2]
            if len(pack_id) == 64:
                yield pack_id, size

    def pack_entries(self, pack_id: str, size: int | None = None) -> list[packfmt.PackEntry]:
        """The trailer of a pack, read with two ranged gets (footer, then trailer)."""
        key = self.pack_key(pack_id)
        if size is None:
            size = self.backend.size(key)
        if size < len(packfmt.MAGIC) + packfmt.FOOTER.size:
            raise FormatError(f"pack {pack_id} is truncated ({size} bytes)")
        footer = self.backend.get(key, size - packfmt.FOOTER.size, packfmt.FOOTER.size)
        try:
            length, digest = packfmt.parse_footer(footer, size)
            start = size - packfmt.FOOTER.size - length
            trailer = self.backend.get(key, start, length)
            if digest.hex() != pack_id:
                raise FormatError("trailer digest is not the pack id")
            return packfmt.parse_trailer(trailer, digest, start)
        except FormatError as exc:
            raise FormatError(f"pack {pack_id}: {exc}") from None

    def delete_pack(self, pack_id: str) -> None:
        self.backend.delete(self.pack_key(pack_id))

    # refs ---------------------------------------------------------------------------------
    def ref_key(self, kind: str, name: str) -> str:
        return REF_PREFIX[kind] + check_name(name, "dataset name" if kind == DATASET else "job id")

    def create_ref(self, record: JobRecord) -> None:
        """Register a job or dataset: create-only, so an id can never be taken twice."""
        self.backend.create(self.ref_key(record.kind, record.id), encode_record(record))
        self.note_change("add", record.kind, record.id)

    def note_change(self, op: str, kind: str, name: str) -> None:
        """Add an entry to the ref change log (after the ref itself: a crash between the two
        leaves a ref that readers learn at their next full listing, see `Index.sync`)."""
        if self.config.ref_log < REF_LOG:
            return
        try:
            self.backend.create(change_key(change_stamp(), op, kind, name), b"")
        except StoreError as exc:
            log.warning("%s %s %s, but noting it in the store's change log failed (%s): "
                        "other machines learn it at their next full listing", kind, name,
                        "registered" if op == "add" else "removed", exc)

    def changes(self, since_ms: int) -> list[Change]:
        """The change log's entries stamped after `since_ms`, in key (time) order: requests
        for these entries only, not for every ref."""
        found = []
        for key, _ in self.backend.list(CHANGES, after=changes_after_key(since_ms)):
            change = parse_change(key)
            if change is not None and change.ms > since_ms:
                found.append(change)
        found.sort(key=lambda change: change.key)
        return found

    def prune_changes(self, keep: float = CHANGES_KEEP) -> int:
        """Delete change log entries older than `keep` seconds (gc): a reader that last
        synced longer ago than `Index.FULL_EVERY` lists every ref and never reads them."""
        cutoff = int((time.time() - keep) * 1000)
        removed = 0
        for key, _ in self.backend.list(CHANGES):
            change = parse_change(key)
            if change is not None and change.ms < cutoff:
                self.backend.delete(key)
                removed += 1
        return removed

    # ref snapshots (c3fs.objects.refsnap) ----------------------------------------------
    def snapshots(self) -> list[tuple[int, str, str]]:
        """(moment in ms, content digest, key) of each ref snapshot, oldest first: one
        LIST request of a few keys."""
        found = []
        for key, _ in self.backend.list(SNAPSHOTS):
            ms, _, want = key[len(SNAPSHOTS):].partition("-")
            if ms.isdigit() and len(ms) == 13 and len(want) == refsnap.DIGEST_HEX:
                found.append((int(ms), want, key))
        return sorted(found)

    def put_snapshot(self, ms: int, data: bytes) -> str:
        key = f"{SNAPSHOTS}{ms:013d}-{refsnap.digest(data)}"
        try:
            self.backend.create(key, data)
        except KeyExists:  # the same records at the same moment: the same object
            pass
        return key

    def prune_snapshots(self, keep: int = SNAPSHOTS_KEPT) -> int:
        """Delete all but the newest `keep` snapshots (gc); a reader that meets one deleted
        under it lists every ref instead."""
        old = self.snapshots()[:-keep] if keep else self.snapshots()
        for _, _, key in old:
            self.backend.delete(key)
        return len(old)

    def get_ref(self, kind: str, name: str) -> JobRecord:
        try:
            raw = self.backend.get(self.ref_key(kind, name))
        except KeyMissing:
            raise NotFound(f"no {kind} {name!r} in the store") from None
        try:
            record = decode_record(raw)
        except FormatError as exc:
            raise DamagedRef(kind, name, str(exc)) from None
        if record.id != name or record.kind != kind:  # never let a ref speak for another
            raise DamagedRef(kind, name, f"it holds the record of {record.kind} "
                             f"{record.id!r}, not of {kind} {name!r}")
        return record

    def list_refs(self, kind: str) -> Iterator[str]:
        """The names of the refs of `kind`. A key that cannot be one (`.DS_Store`, `bad
        name`, `sub/x`) is skipped, with one warning per Store (per command) naming it."""
        prefix = REF_PREFIX[kind]
        for key, _ in self.backend.list(prefix):
            name = key[len(prefix) :]
            if is_name(name):
                yield name
            elif key not in self._odd_keys:
                self._odd_keys.add(key)
                log.warning("ignoring %s in the store: not a %s ref (a ref is named with 1-128 "
                            "of A-Z a-z 0-9 . _ -)", _shorten(key), kind)

    def delete_ref(self, kind: str, name: str) -> None:
        key = self.ref_key(kind, name)
        try:
            self.backend.size(key)
        except KeyMissing:
            raise NotFound(f"no {kind} {name!r} in the store") from None
        self.backend.delete(key)
        self.note_change("rm", kind, name)


def _shorten(key: str, keep: int = 100) -> str:
    """`key`, with the middle of a very long one (a deep tree of folders) left out."""
    return key if len(key) <= 2 * keep else f"{key[:keep]}...{key[-keep:]}"


def _decode_config(raw: bytes, url: str) -> StoreConfig:
    try:
        check_json_depth(raw, "store config", limit=2)
        head = msgspec.json.decode(raw)
        version = head.get("version") if isinstance(head, dict) else None
    except (FormatError, msgspec.DecodeError, UnicodeDecodeError):
        raise StoreError(f"{url}: the store config is damaged") from None
    if not isinstance(head, dict) or head.get("format") != "c3fs":
        raise StoreError(f"{url} is not a c3fs store")
    if version != FORMAT_VERSION:
        raise StoreVersionError(
            f"{url} is a c3fs store of format version {version}; this c3fs reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        return msgspec.json.decode(raw, type=StoreConfig)
    except msgspec.ValidationError as exc:
        raise StoreError(f"{url}: the store config is damaged: {exc}") from None


def store_url(url: str | None) -> str:
    """The store a command uses: `url` (--store), else $C3FS_STORE, else the config file's,
    else the default path (`c3fs.settings`)."""
    from c3fs import settings

    return url or settings.value("store")


def open_backend(url: str | None, create: bool = True, *, cache: bool = True,
                 disk_cache_bytes: int | None = None, deadline: Deadline | None = None) -> Backend:
    """The whole backend of a store, composed here and only here: `s3://bucket/prefix` ->
    S3 with retries (their requests bounded by `deadline`) under a disk cache of pack blocks
    (`cache`, `disk_cache_bytes`: see `open_s3_backend`); anything else is a local directory
    path (made if missing when `create`)."""
    url = store_url(url)
    if url.startswith("s3://"):
        from c3fs.store.s3 import open_s3_backend  # obstore: only for S3 stores

        return open_s3_backend(url, cache, disk_cache_bytes, deadline)
    if "://" in url:
        raise StoreError(f"unsupported store URL {url!r}: use a directory path or s3://bucket/prefix")
    return LocalBackend(url, create=create)
