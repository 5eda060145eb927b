"""Jobs written straight into a store, blob by blob: what an attacker, a bug or an older
c3fs could have left there, which the normal push path would never write."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.job import JobRecord
from c3fs.objects.pack import PackBuilder
from c3fs.store.local import LocalBackend
from c3fs.store.store import Store


def craft_job(store_dir: Path, job_id: str, build: Callable, project: str = "evil") -> None:
    """Pack the blobs `build(add)` makes into the store and register `job_id` on the root
    id it returns; `add(kind, plain)` stores one blob and returns its id."""
    store = Store.open(LocalBackend(store_dir))
    builder = PackBuilder()

    def add(kind: int, plain: bytes) -> bytes:
        codec_id, stored = codec.encode(plain)
        builder.add(kind, blob_id(plain), codec_id, stored, len(plain))
        return blob_id(plain)

    root = build(add)
    pack_id, data = builder.finish()
    store.put_pack(pack_id, data)
    store.create_ref(JobRecord(id=job_id, project=project, created=1.0, root=root.hex()))
