"""Access traces (learned prefetch): the order in which a mount's readers asked for a job's
chunks, shared through the store, so that the next mount of that job, on any machine,
fetches them in that order ahead of its readers (a training job re-reading its input each
epoch, the next stage of a pipeline).

A mount of one job or dataset on a remote store records each chunk the first time a reader
asks for it (a READ, or the lookup of a small file: `cat` of a file the mount already read
ahead sends no READ), at most `MAX_IDS` of them, and at unmount stores the trace at

    traces/<kind>/<name>/<blake3 of the object>      (kind: job or dataset)

create-only and named by its content (two mounts that read alike store one object); at most
`MAX_TRACES` per job (a mount stores none once there are that many).
Format (version 1): `MAGIC`, then zstd of the 32-byte chunk ids in order. A trace is
untrusted input: used only if its bytes match its name and hold whole ids, at most
`MAX_IDS`; anything else is skipped with one warning. The next mount reads the largest
trace of its job and asks the reader to fetch its chunks in order (`BlobSource.prefetch`:
merged ranged GETs, bounded; chunks it does not know are skipped).
"""

from __future__ import annotations

import logging
import threading

import blake3
import zstandard

from c3fs.errors import StoreError
from c3fs.store.backend import KeyExists, KeyMissing
from c3fs.store.store import Store

log = logging.getLogger(__name__)
MAGIC = b"C3TRACE1"
ID = 32
MAX_IDS = 131_072  # 4 MiB of chunk ids: a trace is small, whatever the job
MAX_BYTES = MAX_IDS * ID + 4096  # the largest object read back as a trace
MAX_TRACES = 8  # traces kept per job: a mount stores none once there are this many


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


def prefix(kind: str, name: str) -> str:
    return f"traces/{kind}/{name}/"


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
