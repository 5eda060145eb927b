"""Fetching ahead (c3fs/reader/ahead.py) on a store whose GETs wait until the test lets them
answer: a blob wanted while a GET that holds its bytes is queued or in flight is taken from
that GET, never fetched again; `first` puts spans before those queued earlier."""

from __future__ import annotations

import os
import threading

import pytest

from c3fs.index import open_index
from c3fs.objects import codec
from c3fs.objects.ids import blob_id
from c3fs.objects.pack import CHUNK, PackBuilder
from c3fs.reader import BlobSource
from c3fs.reader.ahead import Ahead
from c3fs.store.local import LocalBackend
from c3fs.store.store import Store

KiB = 1024


class Gated:
    """A backend whose pack GETs, once `armed`, are recorded and each wait until `allow`
    lets one through (the real local backend answers it then)."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.armed = False
        self.gets: list[tuple[int, int]] = []
        self.started = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)

    def allow(self, n: int = 1) -> None:
        for _ in range(n):
            self._gate.release()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.armed and key.startswith("packs/"):
            self.gets.append((offset, length))
            self.started.release()
            assert self._gate.acquire(timeout=10)
        return self.inner.get(key, offset, length)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


@pytest.fixture
def pack(store_env) -> tuple[Store, Gated, list[bytes], dict[bytes, bytes]]:
    """One pack of 12 blobs of 100 KiB (random, so stored as they are), side by side."""
    store_env.store.mkdir(parents=True)
    plain = Store.open(LocalBackend(store_env.store))
    builder = PackBuilder()
    blobs = {}
    for _ in range(12):
        data = os.urandom(100 * KiB)
        codec_id, stored = codec.encode(data)
        builder.add(CHUNK, blob_id(data), codec_id, stored, len(data))
        blobs[blob_id(data)] = data
    plain.put_pack(*builder.finish())
    gated = Gated(LocalBackend(store_env.store))
    return Store(gated, plain.config), gated, list(blobs), blobs


def ahead_on(store: Store, budget: int) -> Ahead:
    index = open_index(store)  # (reads the pack's trailer)
    store.backend.armed = True
    return Ahead(store, index, BlobSource._decode, budget=budget)


def test_a_blob_inside_a_get_in_flight_joins_it(pack) -> None:
    store, gated, ids, blobs = pack
    ahead = ahead_on(store, budget=64 * 1024 * KiB)
    try:
        ahead.want([ids[0], ids[2]], lambda b: False)  # one GET over ids[1] (a gap < GAP)
        assert gated.started.acquire(timeout=10)
        ahead.want([ids[1]], lambda b: False)  # its bytes are in that GET already
        gated.allow(3)
        assert [ahead.take(b) for b in ids[:3]] == [blobs[b] for b in ids[:3]]
        assert len(gated.gets) == 1
        ahead.want([ids[1], ids[5]], lambda b: False)  # taken already, and a new one
        assert ahead.take(ids[1]) == blobs[ids[1]] and ahead.take(ids[5]) == blobs[ids[5]]
        assert len(gated.gets) == 3  # that GET was over: each fetched again, exactly
        assert gated.gets[1:] == sorted(gated.gets[1:])
    finally:
        ahead.close()


def test_a_blob_inside_a_queued_get_joins_it_and_first_goes_first(pack) -> None:
    store, gated, ids, blobs = pack
    ahead = ahead_on(store, budget=350 * KiB)  # one span in flight at a time, here
    try:
        ahead.want([ids[0], ids[2]], lambda b: False)  # 200 KiB: starts at once, waits
        assert gated.started.acquire(timeout=10)
        ahead.want([ids[4], ids[6]], lambda b: False)  # 200 KiB more: queued (over ids[5])
        ahead.want([ids[10]], lambda b: False)  # queued behind it
        # ids[5] joins the queued span, which goes first with ids[8]'s, in the order wanted
        ahead.want([ids[5], ids[8]], lambda b: False, first=True)
        for wave, gets in (([0, 2], 1), ([4, 5, 6], 1), ([8, 10], 2)):  # (8 and 10 fit at once)
            gated.allow(gets)
            assert [ahead.take(ids[i]) for i in wave] == [blobs[ids[i]] for i in wave]
        offsets = [offset for offset, _ in gated.gets]
        at = {i: ahead.index.lookup(ids[i]).offset for i in (0, 4, 8, 10)}
        assert offsets[:2] == [at[0], at[4]] and sorted(offsets[2:]) == [at[8], at[10]]
    finally:
        ahead.close()
