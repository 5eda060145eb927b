"""Access traces (learned prefetch): the order in which a mount's readers asked for a job's
chunks, shared through the store, so that the next mount of that job, on any machine,
fetches them in that order ahead of its readers (a training job re-reading its input each
epoch, the next stage of a pipeline).

A mount on a remote store records, per job or dataset its readers read (`Traces`: one job's
mount, or the whole namespace's, at most `MAX_JOBS` of them), each chunk the first time a
reader asks for it (a READ, or the lookup of a small file: `cat` of a file the mount already
read ahead sends no READ), at most `MAX_IDS` in all, and at unmount stores each trace at

    traces/<kind>/<name>/<blake3 of the object>      (kind: job or dataset)

create-only and named by its content (two mounts that read alike store one object); at most
`MAX_TRACES` per job (a mount stores none once there are that many).
Format (version 1): `MAGIC`, then zstd of the 32-byte chunk ids in order. A trace is
untrusted input: used only if its bytes match its name and hold whole ids, at most
`MAX_IDS`; anything else is skipped with one warning. The next mount reads the largest
trace of its job and asks the reader to fetch its chunks in order (`BlobSource.prefetch`:
merged ranged GETs, bounded; chunks it does not know are skipped): a mount of one job at
once, a namespace mount when its readers first read a job.

`c3fs rm` removes a job's traces with its ref; `gc` removes those of jobs that are gone (a
mount that stored one after the job's `rm`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import blake3
import zstandard

from c3fs.errors import StoreError
from c3fs.store.backend import KeyExists, KeyMissing
from c3fs.store.store import Store

if TYPE_CHECKING:
    from c3fs.reader import BlobSource

log = logging.getLogger(__name__)
MAGIC = b"C3TRACE1"
ID = 32
MAX_IDS = 131_072  # 4 MiB of chunk ids: a trace is small, whatever the job
MAX_BYTES = MAX_IDS * ID + 4096  # the largest object read back as a trace
MAX_TRACES = 8  # traces kept per job: a mount stores none once there are this many
MAX_JOBS = 256  # jobs one mount records traces of (a namespace mount)
ROOT = "traces/"
ENV = "C3FS_TRACE"  # 0: a mount neither replays nor records access traces
Ref = tuple[str, str]  # (kind, name): a job or a dataset


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def replay(store: Store, blobs: BlobSource, kind: str, name: str) -> int:
    """Ask `blobs` for the chunks of the job's stored trace, in its order, at once (fetched
    ahead of readers in one wave of GETs where it can be); how many. A hint only: never
    raises."""
    try:
        ids = load(store, kind, name)
        if ids:
            log.info("replaying an access trace of %d chunks of %s %s", len(ids), kind, name)
            blobs.prefetch(ids, wave=True)
        return len(ids)
    except Exception:
        log.debug("replaying the access trace of %s %s failed", kind, name, exc_info=True)
        return 0


def start_replay(store: Store, blobs: BlobSource, ref: Ref) -> None:
    """`replay` in a thread of its own."""
    threading.Thread(target=replay, args=(store, blobs, *ref), daemon=True,
                     name="c3fs-replay").start()


class Recorder:
    """The chunks readers asked for, each once, in order; at most `limit`. Thread-safe."""

    def __init__(self, limit: int = MAX_IDS) -> None:
        self.limit = limit
        self._seen: set[bytes] = set()
        self._order: list[bytes] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._order)

    def add(self, chunk_ids: list[bytes]) -> None:
        if len(self._order) >= self.limit:
            return
        with self._lock:
            for chunk_id in chunk_ids:
                if chunk_id not in self._seen and len(self._order) < self.limit:
                    self._seen.add(chunk_id)
                    self._order.append(chunk_id)

    def encode(self) -> bytes:
        with self._lock:
            return MAGIC + zstandard.ZstdCompressor(level=3).compress(b"".join(self._order))


class Traces:
    """A mount's recorders, one per job (or dataset) its readers read, at most `MAX_JOBS`,
    `MAX_IDS` chunk ids in all. `first(ref)` is called once per job, when it is first read
    (a namespace mount replays that job's trace then). Thread-safe."""

    def __init__(self, first: Callable[[Ref], None] | None = None, limit: int = MAX_IDS,
                 jobs: int = MAX_JOBS) -> None:
        self.limit, self.jobs = limit, jobs
        self.recorders: dict[Ref, Recorder] = {}
        self._first = first
        self._total = 0
        self._lock = threading.Lock()

    def add(self, ref: Ref | None, chunk_ids: list[bytes]) -> None:
        room = self.limit - self._total
        if ref is None or room <= 0:
            return
        recorder = self.recorders.get(ref) or self.start(ref)
        if recorder is not None:
            before = len(recorder)
            recorder.add(chunk_ids[:room])
            with self._lock:
                self._total += len(recorder) - before

    def start(self, ref: Ref, first: bool = True) -> Recorder | None:
        """The recorder of `ref`, made (and `first` called, unless told not to: its trace
        replays already) if new; None past `jobs`."""
        with self._lock:
            if ref in self.recorders:
                return self.recorders[ref]
            if len(self.recorders) >= self.jobs:
                return None
            recorder = self.recorders[ref] = Recorder(self.limit)
        if self._first is not None and first:
            self._first(ref)
        return recorder

    def save(self, store: Store) -> list[str]:
        """Store every trace recorded (see `save`); the keys stored."""
        keys = [save(store, *ref, recorder) for ref, recorder in list(self.recorders.items())]
        return [key for key in keys if key]


def prefix(kind: str, name: str) -> str:
    return f"{ROOT}{kind}/{name}/"


def remove(store: Store, kind: str, name: str) -> int:
    """Delete the stored traces of this job or dataset (`c3fs rm`); how many. Never raises
    StoreError: what is left is gc's (`orphans`), once the ref is gone."""
    removed = 0
    try:
        for key in [key for key, _ in store.backend.list(prefix(kind, name))]:
            store.backend.delete(key)
            removed += 1
    except StoreError as exc:
        log.info("cannot remove the access traces of %s %s (gc will): %s", kind, name, exc)
    return removed


def orphans(store: Store, live: Callable[[Ref], bool]) -> list[str]:
    """Keys of the stored traces whose job or dataset is not `live` (for gc). Keys of
    another shape under traces/ are not ours to judge: left alone."""
    found = []
    for key, _ in store.backend.list(ROOT):
        parts = key[len(ROOT) :].split("/")
        if len(parts) == 3 and all(parts) and not live((parts[0], parts[1])):
            found.append(key)
    return found


def save(store: Store, kind: str, name: str, recorder: Recorder) -> str | None:
    """Store the trace (if any) beside its job; its key, or None. Never raises StoreError:
    a trace that cannot be stored is logged and lost (it is only a hint)."""
    if not len(recorder):
        return None
    data = recorder.encode()
    key = prefix(kind, name) + blake3.blake3(data).hexdigest()
    try:
        if sum(1 for _ in store.backend.list(prefix(kind, name))) >= MAX_TRACES:
            log.info("%s %s has %d access traces already; not storing another", kind, name,
                     MAX_TRACES)
            return None
        store.backend.create(key, data)
    except KeyExists:
        pass  # the same trace, stored by an earlier mount
    except StoreError as exc:
        log.warning("cannot store the access trace of %s %s: %s", kind, name, exc)
        return None
    log.info("stored an access trace of %d chunks at %s", len(recorder), key)
    return key


def load(store: Store, kind: str, name: str) -> list[bytes]:
    """The chunk ids of the largest valid trace of this job or dataset ([] if none)."""
    try:
        found = sorted(store.backend.list(prefix(kind, name)), key=lambda item: -item[1])
    except StoreError as exc:
        log.info("cannot list the access traces of %s %s: %s", kind, name, exc)
        return []
    for key, size in found:
        if size <= MAX_BYTES:
            ids = _read(store, key)
            if ids is not None:
                return ids
    return []


def _read(store: Store, key: str) -> list[bytes] | None:
    try:
        data = store.backend.get(key)
    except (KeyMissing, StoreError):
        return None
    try:
        if blake3.blake3(data).hexdigest() != key.rpartition("/")[2] or not data.startswith(MAGIC):
            raise ValueError("its bytes do not match its name")
        body = data[len(MAGIC) :]
        if not 0 <= zstandard.frame_content_size(body) <= MAX_IDS * ID:  # -1: size not given
            raise ValueError("it claims too many chunk ids")
        raw = zstandard.ZstdDecompressor().decompress(body)
        if len(raw) % ID or len(raw) > MAX_IDS * ID:
            raise ValueError("not a list of chunk ids")
    except (ValueError, zstandard.ZstdError) as exc:
        log.warning("ignoring the access trace %s: %s", key, exc)
        return None
    return [raw[i : i + ID] for i in range(0, len(raw), ID)]
