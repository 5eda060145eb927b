"""A bounded local disk cache of pack reads for remote stores: a wrapper backend.

    backend = BlockCache(open_backend("s3://bucket/prefix"), cache_dir, max_bytes=1 << 30)

Caching is a wrapper, not a flag (desync, restic): `BlockCache` is a `Backend` over another
one and changes nothing but where ranged reads of `packs/` keys come from.

- What is cached: ranged reads of packs, in aligned blocks of `block_size` bytes (1 MiB).
  A miss fetches the whole block with one ranged GET, so the next blobs of the same pack —
  the next chunks of a file, the next small files of a directory — need no request at all.
  A read over several missing blocks in a row fetches them with one ranged GET (the
  reader merges neighbouring blobs of a pack into one read: one round trip, not one each).
  Packs never change under their name, so a block never goes stale. Config, refs and locks
  are never cached (they change), nor whole-object reads or reads longer than `MAX_SPAN`
  blocks.
- Bounded: the block files never add up to more than `max_bytes` (a block that does not fit
  first evicts the least recently used ones, down to `LOW_WATER` of the limit). "Recently
  used" is the file's mtime, bumped on every hit from disk.
- Shared: processes may share the directory. A block is written to a temp file and renamed
  into place; every rename, drop and eviction happens under an flock of `state`, which
  also holds the byte count, so two processes never exceed the limit together. Readers take
  no lock: a block that vanishes under them is a miss.
- Damage: each block file carries the blake3 of its bytes; a file that does not match is
  dropped and fetched again, never served. `invalidate` drops the blocks of a range whose
  bytes failed the reader's own check (the remote once sent wrong bytes): the next read
  refetches them. `uncached` is a view for `verify`, which must check the store itself:
  the same block reads, fetched by this process and kept in memory only. `direct` is the
  backend underneath, for a copy's merged reads ahead (each range exactly, kept nowhere: in
  blocks, a pull fetched 106 MB where its ranges held 70, some blocks three times).
- The inner backend's semantics are unchanged: a missing key is KeyMissing, writes and
  deletes pass through (dropping cached blocks of that key), a crash of this process leaves
  at most temp files, removed by a later eviction pass.
Files are 0600 and directories 0700, like the local store.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from c3fs.errors import UsageError
from c3fs.fsutil import make_private_dir
from c3fs.memo import LRU, SingleFlight
from c3fs.objects.ids import token_hex
from c3fs.store.backend import Backend, Data

log = logging.getLogger(__name__)

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
DEFAULT_MAX_BYTES = 1 * GiB
SIZE_ENV = "C3FS_DISK_CACHE"
BLOCK_SIZE = 1 * MiB
MEMORY_BYTES = 16 * MiB  # decoded blocks kept in memory: the next blobs of a block are free
MAX_SPAN = 16  # a read over more blocks than this goes straight to the inner backend
EXACT_SPAN = 3  # a read over more missing blocks is fetched exactly (its edges not cached)
LOW_WATER = 0.9  # an eviction pass frees space down to this fraction of the limit
TEMP_AGE = 3600.0  # temp files older than this were left by a crashed writer
TMP_PREFIX = ".tmp."

_MAGIC = b"C3BLK1\n\0"
_HEADER = struct.Struct("<8sQ32s")  # magic, payload length, blake3 of the payload
_COUNT = struct.Struct("<Q")
_PACK_KEY = re.compile(r"packs/[0-9a-f]{2}/([0-9a-f]{64})")
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2,
          "mib": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "t": 1000**4,
          "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str) -> int:
    """'512MiB', '2GiB', '1.5GB', '1048576' -> bytes (the same units as the CLI's sizes)."""
    match = _SIZE.fullmatch(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"not a size: {text!r} (examples: 500MiB, 2GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def default_max_bytes() -> int:
    """The cache limit: $C3FS_DISK_CACHE if set (a size such as 2GiB), else 1 GiB."""
    from c3fs import settings

    setting = settings.get("disk_cache")
    if setting.source == "default":
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(setting.value or "")
    except UsageError as exc:
        raise UsageError(f"{exc} (disk_cache, from {setting.source})") from None


@dataclass
class CacheStats:
    hits: int = 0  # blocks served from memory or disk
    misses: int = 0  # blocks fetched from the inner backend
    fetched_bytes: int = 0


class DiskBlocks:
    """Block files under `root`, at most `max_bytes` of them, shared by processes."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._warned = False
        try:
            make_private_dir(root)
        except OSError as exc:
            self._warn(f"cannot create {root}: {_reason(exc)}")

    def path(self, name: str) -> Path:
        return self.root / name[:2] / name

    # reading (no lock) --------------------------------------------------------------------
    def read(self, name: str) -> bytes | None:
        """The block's bytes, or None when it is not cached (or was damaged: then dropped)."""
        path = self.path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot read cached block {path}: {_reason(exc)}")
            return None
        payload = _unwrap(raw)
        if payload is None:
            log.warning("cached block %s is damaged; fetching it again", name)
            self.drop([name])
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # LRU: recently used
        return payload

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    # writing (under the lock) -------------------------------------------------------------
    def write(self, name: str, payload: bytes | memoryview) -> None:
        """Cache a block; a block that cannot be written (full disk) is simply not cached."""
        size = _HEADER.size + len(payload)
        if size > self.max_bytes:
            return
        try:
            self._commit(name, self._write_temp(name, payload), size)
        except OSError as exc:
            self._warn(f"cannot cache block {name} in {self.root}: {_reason(exc)}")

    def _commit(self, name: str, tmp: Path, size: int) -> None:
        """Rename the written block into place, first evicting what it does not fit beside."""
        with self._locked() as state:
            if self.path(name).exists():  # another process fetched it first
                _unlink(tmp)
                return
            used = self._used(state)
            if used + size > self.max_bytes:
                used = self._evict(size)
            try:
                os.rename(tmp, self.path(name))
            except OSError:
                _unlink(tmp)
                raise
            _set_used(state, used + size)

    def _write_temp(self, name: str, payload: bytes | memoryview) -> Path:
        path = self.path(name)
        make_private_dir(path.parent)
        tmp = path.parent / f"{TMP_PREFIX}{name}.{token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            header = _HEADER.pack(_MAGIC, len(payload), blake3.blake3(payload).digest())
            os.write(fd, header)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            _unlink(tmp)
            raise
        finally:
            os.close(fd)
        return tmp

    def drop(self, names: list[str]) -> bool:
        """Remove these blocks if cached; True if any was."""
        dropped = False
        try:
            with self._locked() as state:
                used = self._used(state)
                for name in names:
                    size = _unlink(self.path(name))
                    dropped |= size is not None
                    used -= size or 0
                _set_used(state, max(used, 0))
        except OSError as exc:
            self._warn(f"cannot remove cached blocks from {self.root}: {_reason(exc)}")
        return dropped

    def drop_pack(self, pack_id: str) -> None:
        names = [p.name for p in (self.root / pack_id[:2]).glob(f"{pack_id}.*")]
        if names:
            self.drop(names)

    def _warn(self, message: str) -> None:
        """Cache trouble never fails a read: say so once, then carry on without the cache."""
        log.log(logging.DEBUG if self._warned else logging.WARNING, "disk cache: %s", message)
        self._warned = True

    # accounting and eviction --------------------------------------------------------------
    def used(self) -> int:
        """Bytes of cached blocks, as counted in `state`."""
        with self._locked() as state:
            return self._used(state)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """Hold the cache's lock (threads and processes alike); yields the `state` fd."""
        with self._lock:
            fd = os.open(self.root / "state", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield fd
            finally:
                os.close(fd)  # releases the flock

    def _used(self, state: int) -> int:
        raw = os.pread(state, _COUNT.size, 0)
        if len(raw) == _COUNT.size:
            return _COUNT.unpack(raw)[0]
        return sum(size for _, size, _ in self._scan())  # new or damaged state: count

    def _evict(self, incoming: int) -> int:
        """Delete least recently used blocks until `incoming` more bytes fit below the
        low-water mark; return the bytes still in use (counted afresh, so drift is healed)."""
        blocks = sorted(self._scan())
        used = sum(size for _, size, _ in blocks)
        goal = int(self.max_bytes * LOW_WATER)
        for *_, path in blocks:
            if used + incoming <= goal:
                break
            used -= _unlink(path) or 0
        log.debug("cache %s: evicted down to %d bytes", self.root, used)
        return used

    def _scan(self) -> Iterator[tuple[float, int, Path]]:
        """(mtime, size, path) of every block file; stale temp files are removed."""
        stale = time.time() - TEMP_AGE
        for sub in _listdir(self.root):
            if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
                continue
            for entry in _listdir(Path(sub.path)):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not entry.name.startswith(TMP_PREFIX):
                    yield st.st_mtime, st.st_size, Path(entry.path)
                elif st.st_mtime < stale:
                    _unlink(Path(entry.path))


class BlockCache:
    """A Backend that caches ranged reads of packs from `inner` on local disk. Thread-safe."""

    def __init__(self, inner: Backend, root: str | os.PathLike | None,
                 max_bytes: int | None = None, block_size: int = BLOCK_SIZE,
                 memory_bytes: int = MEMORY_BYTES) -> None:
        """`root` None: blocks are kept in memory only (see `uncached`)."""
        self.inner = inner
        self.url = inner.url
        self.capabilities = inner.capabilities
        self.block_size = block_size
        self.max_bytes = default_max_bytes() if max_bytes is None else max_bytes
        self.disk: DiskBlocks | NoDisk = NoDisk() if root is None else DiskBlocks(
            Path(root) / f"blocks-{block_size // KiB}k", self.max_bytes)
        self.stats = CacheStats()
        self._fresh: BlockCache | None = None
        self._memory: LRU[str, bytes] = LRU(memory_bytes, weigh=len)
        self._fetches: SingleFlight[str, bytes] = SingleFlight()
        self._lock = threading.Lock()

    @property
    def uncached(self) -> BlockCache:
        """For reads that must see the store itself (`verify`): the same block reads, fetched
        from the inner backend by this process and kept in memory only, never on disk."""
        with self._lock:
            if self._fresh is None:
                self._fresh = BlockCache(self.inner, None, block_size=self.block_size)
            return self._fresh

    @property
    def direct(self) -> Backend:
        return self.inner.direct

    # backend verbs ------------------------------------------------------------------------
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        pack_id = _pack_id(key)
        if pack_id is None or not length or offset < 0 or length < 0:
            return self.inner.get(key, offset, length)
        first, last = offset // self.block_size, (offset + length - 1) // self.block_size
        if last - first >= MAX_SPAN:
            return self.inner.get(key, offset, length)
        if first == last:
            data = self._block(key, pack_id, first)
        elif last - first >= EXACT_SPAN and all(
                self._absent(f"{pack_id}.{n}") for n in range(first, last + 1)):
            return self._fetch_range(key, pack_id, offset, length)  # (a reader's merged read)
        else:
            data = b"".join(self._blocks(key, pack_id, first, last))
        start = offset - first * self.block_size
        return data[start : start + length]

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def put(self, key: str, data: Data, *, sync: bool = True) -> None:
        self.inner.put(key, data, sync=sync)
        self._forget_pack(key)

    def flush(self, keys: list[str]) -> None:
        self.inner.flush(keys)

    def create(self, key: str, data: bytes) -> None:
        self.inner.create(key, data)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix, after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._forget_pack(key)

    def sweep_temp(self, older_than: float = TEMP_AGE) -> int:
        """The inner backend's (the cache's own temp files go in its eviction passes)."""
        return self.inner.sweep_temp(older_than)

    def occupied(self) -> bool:
        return self.inner.occupied()

    def invalidate(self, key: str, offset: int, length: int) -> bool:
        """Drop the cached blocks under this range (its bytes proved bad); True if any were."""
        pack_id = _pack_id(key)
        if pack_id is None or length <= 0:
            return False
        first, last = offset // self.block_size, (offset + length - 1) // self.block_size
        names = [f"{pack_id}.{n}" for n in range(first, last + 1)]
        in_memory = [self._memory.pop(name) is not None for name in names]
        return self.disk.drop(names) or any(in_memory)

    # blocks -------------------------------------------------------------------------------
    def _block(self, key: str, pack_id: str, number: int) -> bytes:
        """Block `number` of the pack: from memory, from disk, or fetched (once at a time)."""
        name = f"{pack_id}.{number}"
        data = self._memory.get(name)
        if data is None:
            return self._fetches.run(name, lambda: self._load(key, name, number))
        with self._lock:
            self.stats.hits += 1
        return data

    def _blocks(self, key: str, pack_id: str, first: int, last: int) -> list[bytes]:
        """Blocks `first`..`last`: cached ones as they are, each run of missing ones in a
        row fetched with one ranged GET."""
        found = {n: self._cached(f"{pack_id}.{n}") for n in range(first, last + 1)}
        missing = [n for n, data in found.items() if data is None]
        for run in _runs(missing):
            if len(run) == 1:
                found[run[0]] = self._block(key, pack_id, run[0])
            else:
                data = self._fetch_run(key, pack_id, run[0], run[-1])
                for n in run:
                    found[n] = data[(n - run[0]) * self.block_size : (n - run[0] + 1) * self.block_size]
        return [found[n] for n in range(first, last + 1)]

    def _absent(self, name: str) -> bool:
        return name not in self._memory and not self.disk.has(name)

    def _cached(self, name: str) -> bytes | None:
        """A block from memory or disk (kept in memory then), or None."""
        data = self._memory.get(name)
        if data is None:
            data = self.disk.read(name)
            if data is None:
                return None
            self._memory.put(name, data)
        with self._lock:
            self.stats.hits += 1
        return data

    def _fetch_range(self, key: str, pack_id: str, offset: int, length: int) -> bytes:
        """Exactly this range with one ranged GET (no copy of it made); the blocks it holds
        whole are written to disk."""
        data = self.inner.get(key, offset, length)
        size = self.block_size
        first, end = -(-offset // size), (offset + len(data)) // size
        with self._lock:
            self.stats.misses += max(end - first, 0)
            self.stats.fetched_bytes += len(data)
        view = memoryview(data)
        for n in range(first, end):
            self.disk.write(f"{pack_id}.{n}", view[n * size - offset : (n + 1) * size - offset])
        return data

    def _fetch_run(self, key: str, pack_id: str, first: int, last: int) -> bytes:
        """Blocks `first`..`last` of a pack with one ranged GET (their bytes, joined), each
        written to disk; the last one also kept in memory (where the next read starts)."""
        size = self.block_size
        data = self.inner.get(key, first * size, (last - first + 1) * size)
        with self._lock:
            self.stats.misses += last - first + 1
            self.stats.fetched_bytes += len(data)
        view = memoryview(data)
        for n in range(first, last + 1):
            block = view[(n - first) * size : (n - first + 1) * size]
            if block:
                self.disk.write(f"{pack_id}.{n}", block)
        if len(data) > (last - first) * size:
            self._memory.put(f"{pack_id}.{last}", data[(last - first) * size :])
        return data

    def _load(self, key: str, name: str, number: int) -> bytes:
        data = self._memory.get(name)  # loaded by another caller just now
        if data is None:
            data = self.disk.read(name)
            if data is None:
                return self._fetch(key, name, number)
            self._memory.put(name, data)
        with self._lock:
            self.stats.hits += 1
        return data

    def _fetch(self, key: str, name: str, number: int) -> bytes:
        data = self.inner.get(key, number * self.block_size, self.block_size)
        with self._lock:
            self.stats.misses += 1
            self.stats.fetched_bytes += len(data)
        if data:  # past the end of the pack: nothing worth keeping
            self.disk.write(name, data)
        self._memory.put(name, data)
        return data

    def _forget_pack(self, key: str) -> None:
        pack_id = _pack_id(key)
        if pack_id is None:
            return
        self._memory.pop_where(lambda name: name.startswith(pack_id))
        self.disk.drop_pack(pack_id)


class NoDisk:
    """No disk at all: every block is fetched (by BlockCache.uncached)."""

    def has(self, name: str) -> bool:
        return False

    def read(self, name: str) -> bytes | None:
        return None

    def write(self, name: str, payload: bytes | memoryview) -> None:
        pass

    def drop(self, names: list[str]) -> bool:
        return False

    def drop_pack(self, pack_id: str) -> None:
        pass


def _runs(numbers: list[int]) -> list[list[int]]:
    """Ascending `numbers` cut into runs of consecutive ones: [1, 2, 4] -> [[1, 2], [4]]."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and runs[-1][-1] == n - 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return runs


def _pack_id(key: str) -> str | None:
    match = _PACK_KEY.fullmatch(key)
    return match.group(1) if match else None


def _set_used(state: int, used: int) -> None:
    os.pwrite(state, _COUNT.pack(used), 0)


def _unwrap(raw: bytes) -> bytes | None:
    """The payload of a block file, or None if the file is not whole and intact."""
    if len(raw) < _HEADER.size:
        return None
    magic, length, digest = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size :]
    if magic != _MAGIC or length != len(payload) or blake3.blake3(payload).digest() != digest:
        return None
    return payload


def _unlink(path: Path) -> int | None:
    """Remove `path`; its size, or None if it was already gone."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return None
    return size


def _listdir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _reason(exc: OSError) -> str:
    return "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
