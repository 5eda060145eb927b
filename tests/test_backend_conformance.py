"""One conformance suite for every backend (local directory, S3 via a moto server).

Then S3-only cases: bad credentials, missing bucket, a dead or hung server, retries, and a
Store on S3.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from memkit import traced_peak
from s3server import MotoServer

from c3fs.objects.job import JOB, JobRecord
from c3fs.objects.pack import page_buffer
from c3fs.store import local as local_mod
from c3fs.store import s3 as s3mod
from c3fs.store.backend import (
    LOCAL,
    Backend,
    BackendError,
    Deadline,
    KeyExists,
    KeyMissing,
    RetryingBackend,
    StoreTimeout,
    TemporaryBackendError,
)
from c3fs.store.cache import BlockCache
from c3fs.store.local import TMP_PREFIX, LocalBackend
from c3fs.store.s3 import S3Backend, open_s3_backend, parse_s3_url
from c3fs.store.store import Store, open_backend

MiB = 1024 * 1024
PACK_A = "ab" + "0" * 62
PACK_B = "ab" + "1" * 62
PACK_C = "cd" + "2" * 62


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "local":
        return LocalBackend(tmp_path / "store")
    return open_backend(request.getfixturevalue("s3_url"))


# conformance ------------------------------------------------------------------------------
def test_get_full_and_ranged(backend: Backend) -> None:
    backend.put("obj", b"0123456789")
    assert backend.get("obj") == b"0123456789"
    assert backend.get("obj", 2, 3) == b"234"
    assert backend.get("obj", 0, 1) == b"0"
    assert backend.get("obj", 7) == b"789"
    assert backend.get("obj", 9, 1) == b"9"
    assert backend.get("obj", 8, 100) == b"89"  # a range past the end is cut short
    assert backend.get("obj", 10) == b""
    assert backend.get("obj", 4, 0) == b""


def test_every_verb_exists_where_it_means_nothing(backend: Backend) -> None:
    """Lazy puts, temp files, caches: every backend has the verbs, so callers never probe."""
    assert not backend.occupied()  # a new store may be made here
    parts = [b"pack ", b"in ", b"parts"]
    backend.put(Store.pack_key(PACK_A), parts, sync=False)
    backend.flush([Store.pack_key(PACK_A)])
    assert backend.get(Store.pack_key(PACK_A)) == b"pack in parts"
    assert backend.uncached.get(Store.pack_key(PACK_A), 5, 2) == b"in"
    assert backend.direct.get(Store.pack_key(PACK_A), 5, 2) == b"in"
    assert backend.sweep_temp() == 0
    assert backend.invalidate(Store.pack_key(PACK_B), 0, 10) is False
    assert (LOCAL in backend.capabilities) == isinstance(backend, LocalBackend)


def test_size(backend: Backend) -> None:
    backend.put("a/b/c", b"x" * 1234)
    assert backend.size("a/b/c") == 1234


def test_put_replaces(backend: Backend) -> None:
    backend.put("config", b"first version")
    backend.put("config", b"second")
    assert backend.get("config") == b"second"
    assert backend.size("config") == 6


def test_create_refuses_to_overwrite(backend: Backend) -> None:
    backend.create("refs/jobs/job_1", b"original")
    with pytest.raises(KeyExists) as info:
        backend.create("refs/jobs/job_1", b"intruder")
    assert info.value.key == "refs/jobs/job_1"
    assert backend.get("refs/jobs/job_1") == b"original"
    backend.put("plain", b"put first")
    with pytest.raises(KeyExists):
        backend.create("plain", b"create second")
    assert backend.get("plain") == b"put first"
    assert {key for key, _ in backend.list("")} == {"refs/jobs/job_1", "plain"}


@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.get("nope"),
        lambda b: b.get("no/such/key", 5, 10),
        lambda b: b.get("nope", 0, 0),
        lambda b: b.size("packs/ab/nope"),
    ],
    ids=["get", "get-range", "get-empty-range", "size"],
)
def test_missing_key(backend: Backend, call: Callable[[Backend], object]) -> None:
    backend.put("other", b"x")
    with pytest.raises(KeyMissing) as info:
        call(backend)
    assert "no such object" in str(info.value)


def test_delete(backend: Backend) -> None:
    backend.delete("never/existed")
    backend.put("doomed", b"x")
    backend.delete("doomed")
    with pytest.raises(KeyMissing):
        backend.get("doomed")
    assert list(backend.list("")) == []
    backend.delete("doomed")


def test_list_by_prefix(backend: Backend) -> None:
    objects = {
        "config": b"c",
        f"packs/ab/{PACK_A}": b"a" * 10,
        f"packs/ab/{PACK_B}": b"b" * 20,
        f"packs/cd/{PACK_C}": b"c" * 30,
        "packsack": b"not a pack",
        "refs/jobs/job_1": b"1",
        "refs/jobs/job_2": b"22",
        "refs/datasets/mnist": b"333",
    }
    for key, data in objects.items():
        backend.put(key, data)
    with pytest.raises(KeyExists):
        backend.create("refs/jobs/job_1", b"again")  # a failed create leaves nothing behind

    def listed(prefix: str) -> dict[str, int]:
        found = list(backend.list(prefix))
        assert len(found) == len({key for key, _ in found}), "a key listed twice"
        return dict(found)

    def expected(prefix: str) -> dict[str, int]:
        return {key: len(data) for key, data in objects.items() if key.startswith(prefix)}

    for prefix in ["", "packs/", "packs/ab/", "packs/ab", "packs", "refs/jobs/", "refs/", "config"]:
        assert listed(prefix) == expected(prefix), prefix
    assert listed("nothing/here/") == {}


def test_empty_object(backend: Backend) -> None:
    backend.put("empty", b"")
    assert backend.get("empty") == b""
    assert backend.get("empty", 0) == b""
    assert backend.size("empty") == 0
    assert dict(backend.list("emp")) == {"empty": 0}
    backend.create("empty-too", b"")
    assert backend.get("empty-too") == b""


def test_large_object_round_trip(backend: Backend) -> None:
    data = os.urandom(20 * MiB)
    backend.put(f"packs/ab/{PACK_A}", data)
    assert backend.size(f"packs/ab/{PACK_A}") == len(data)
    assert backend.get(f"packs/ab/{PACK_A}") == data
    assert backend.get(f"packs/ab/{PACK_A}", 13 * MiB + 7, 4096) == data[13 * MiB + 7 :][:4096]
    assert backend.get(f"packs/ab/{PACK_A}", len(data) - 100) == data[-100:]


def test_concurrent_creates_one_wins(backend: Backend) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    winners: list[int] = []
    losers: list[int] = []
    errors: list[BaseException] = []

    def create(index: int) -> None:
        barrier.wait()
        try:
            backend.create("refs/jobs/contested", b"writer %d" % index)
            winners.append(index)
        except KeyExists:
            losers.append(index)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [threading.Thread(target=create, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert len(winners) == 1 and len(losers) == threads - 1
    assert backend.get("refs/jobs/contested") == b"writer %d" % winners[0]


def test_local_temp_files_are_not_listed(tmp_path) -> None:
    backend = LocalBackend(tmp_path / "store")
    backend.put("packs/ab/real", b"x")
    (tmp_path / "store" / "packs" / "ab" / f"{TMP_PREFIX}half.123").write_bytes(b"crash")
    assert dict(backend.list("packs/")) == {"packs/ab/real": 1}


def test_local_list_holds_no_folder_whole(tmp_path) -> None:
    """A folder of many keys (refs/jobs/ of a store with 100,000 jobs) is listed as it is
    read: listing 4,000 keys takes the Python memory listing 400 does (held, an entry with
    the stat cached in it was ~800 B)."""

    backend = LocalBackend(tmp_path / "store")
    folder = tmp_path / "store" / "refs" / "jobs"

    def peak(keys: int) -> int:
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(keys):
            (folder / f"job{n:05d}").write_bytes(b"{}")
        with traced_peak() as traced:
            listed = sum(size for _, size in backend.list("refs/jobs/"))
        assert listed == 2 * keys
        return traced.peak

    few, many = peak(400), peak(4_000)
    assert many - few < 200_000, (few, many)


@pytest.mark.parametrize("size", [0, 4095, MiB - 1, MiB, 3 * MiB + 123, 8 * MiB])
@pytest.mark.parametrize("sync", [True, False])
def test_pack_parts_in_page_aligned_memory(backend: Backend, size: int, sync: bool) -> None:
    """A pack given as parts whose first is a page-aligned buffer (`PackBuilder`'s; a local
    store writes its whole blocks with O_DIRECT, the rest through the page cache) is
    stored byte for byte, whatever its length; as is one that starts off a page."""
    buffer = page_buffer(size + 1)
    buffer[:] = os.urandom(size + 1)
    key = f"packs/ab/{PACK_A}"
    for first in (memoryview(buffer)[:size], memoryview(buffer)[1:]):
        parts = [first, b"trailer", b"footer!"]
        expect = b"".join(parts)
        backend.put(key, parts, sync=sync)
        backend.flush([key])
        assert backend.size(key) == len(expect)
        assert backend.get(key) == expect


def test_local_pack_blocks_skip_the_page_cache(tmp_path) -> None:
    """The whole blocks of a pack in page-aligned memory reach the disk without a copy in
    the page cache (O_DIRECT): reading them without waiting for the disk fails. (Only
    that: whether the last partial block, written through the cache, is still there
    depends on anyone's drop_caches.)"""
    backend = LocalBackend(tmp_path / "store")
    try:
        os.close(os.open(tmp_path / "probe", os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o600))
    except OSError:
        pytest.skip("no O_DIRECT on this file system")
    size = 4 * MiB
    buffer = page_buffer(size)
    buffer[:] = os.urandom(size)
    backend.put(f"packs/ab/{PACK_A}", [memoryview(buffer)[: size - 100], b"tail"])
    fd = os.open(tmp_path / "store" / "packs" / "ab" / PACK_A, os.O_RDONLY)
    try:
        for block in (0, size // 2, size - 2 * 4096):
            with pytest.raises(BlockingIOError):  # EAGAIN: not in the page cache
                os.preadv(fd, [bytearray(4096)], block, os.RWF_NOWAIT)
    finally:
        os.close(fd)
    assert backend.get(f"packs/ab/{PACK_A}") == buffer[: size - 100] + b"tail"


def test_local_pack_without_direct_io(tmp_path, monkeypatch) -> None:
    """A file system that refuses O_DIRECT gets the same bytes through the page cache."""
    real = local_mod.fcntl.fcntl

    def refuse(fd, cmd, arg=0):
        if cmd == local_mod.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    monkeypatch.setattr(local_mod.fcntl, "fcntl", refuse)
    backend = LocalBackend(tmp_path / "store")
    buffer = page_buffer(2 * MiB)
    buffer[:] = os.urandom(2 * MiB)
    backend.put(f"packs/ab/{PACK_A}", [memoryview(buffer), b"tail"])
    assert backend.get(f"packs/ab/{PACK_A}") == bytes(buffer) + b"tail"


# S3 only ----------------------------------------------------------------------------------
SECRET = "s3cr3t-Do-Not-Print-Me-0123456789abcdef"
TOKEN = "t0ken-Do-Not-Print-Me-FQoGZXIvYXdzEJr"


@pytest.fixture(scope="module")
def auth_server():
    """A moto server of its own that checks credentials (and knows none)."""
    server = MotoServer.launch()
    try:
        server.create_bucket("guarded")
        server.require_auth()
        yield server
    finally:
        server.stop()


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


@pytest.mark.s3
def test_url_parsing_and_url_attribute(s3_url: str) -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    for bad in ["s3://", "s3:///prefix", "http://bucket/x", "s3://b/x?versionId=1"]:
        with pytest.raises(BackendError):
            parse_s3_url(bad)
    backend = open_backend(s3_url)  # the whole stack: a disk cache over retries over S3
    assert isinstance(backend, BlockCache) and isinstance(backend.inner, RetryingBackend)
    assert isinstance(backend.inner.inner, S3Backend)
    assert backend.url == s3_url
    raw = open_backend(s3_url, cache=False)
    assert isinstance(raw, RetryingBackend) and raw.url == s3_url


@pytest.mark.s3
@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.get("config"),
        lambda b: b.size("config"),
        lambda b: b.put("x", b"1"),
        lambda b: b.create("x", b"1"),
        lambda b: list(b.list("")),
        lambda b: Store.open(b),
    ],
    ids=["get", "size", "put", "create", "list", "store-open"],
)
def test_bad_credentials_hide_the_secret(auth_server, monkeypatch, call) -> None:
    for name, value in auth_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEBADKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    backend = open_s3_backend("s3://guarded/c3")
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        call(backend)
    assert time.monotonic() - started < 5, "a permanent error must not be retried"
    error = info.value
    assert not isinstance(error, TemporaryBackendError | KeyMissing)
    assert "refused access" in str(error) and "'guarded'" in str(error)
    assert "\n" not in str(error)
    for secret in (SECRET, TOKEN):
        assert secret not in str(error) and secret not in repr(error)
        assert secret not in _full_text(error)


@pytest.mark.s3
@pytest.mark.parametrize(
    "call",
    [
        lambda b: b.get("config"),
        lambda b: b.get("config", 3, 4),
        lambda b: b.size("config"),
        lambda b: b.put("x", b"1"),
        lambda b: b.create("x", b"1"),
        lambda b: list(b.list("refs/")),
        lambda b: b.delete("x"),
        lambda b: Store.open(b),
    ],
    ids=["get", "get-range", "size", "put", "create", "list", "delete", "store-open"],
)
def test_missing_bucket_is_a_clear_error(s3_url: str, call) -> None:
    backend = open_backend("s3://no-such-bucket-c3fs/c3")
    with pytest.raises(BackendError) as info:
        call(backend)
    assert not isinstance(info.value, KeyMissing | TemporaryBackendError)
    assert str(info.value).startswith("S3 bucket 'no-such-bucket-c3fs' does not exist at http://")


@pytest.mark.s3
def test_server_down_is_temporary_and_bounded(s3_server, s3_url: str) -> None:
    """A server that has answered and then refuses connections (a restart) is retried until
    the deadline; one that never answered this command (a wrong endpoint) only a few times."""
    backends = [open_backend(s3_url, deadline=Deadline(6.0)) for _ in range(2)]
    for backend in backends:  # two commands, each with its deadline
        backend.put("packs/ab/x", b"data")
    s3_server.stop()
    try:
        for call in (lambda: backends[0].get("packs/ab/x", 0, 2),
                     lambda: backends[1].put("y", b"1")):
            started = time.monotonic()
            with pytest.raises(TemporaryBackendError) as info:
                call()
            assert 1.5 < time.monotonic() - started < 12  # the deadline, less one backoff
            assert "connection refused" in str(info.value)
        with pytest.raises(StoreTimeout):  # the deadline is spent: a command is over
            backends[0].size("packs/ab/x")
        started = time.monotonic()
        with pytest.raises(TemporaryBackendError, match="connection refused"):
            open_backend(s3_url).get("packs/ab/x")  # never answered: 5 tries, not 60 s
        assert time.monotonic() - started < 10
    finally:
        s3_server.start()


def test_refused_connections_are_retried_until_the_deadline_once_the_store_answered() -> None:
    """8 refusals in a row (about 10 s of a restarting server) with 5 attempts: a store that
    answered before is waited for; one that never answered gives up after 5."""
    answered = _Refusing(failures=0)
    backend = RetryingBackend(answered, attempts=5, base_delay=0.01, deadline=Deadline(30.0))
    assert backend.get("k") == b"x"  # the store answers
    answered.failures_left = 8
    assert backend.get("k") == b"x"
    assert answered.calls == 1 + 9
    fresh = _Refusing(failures=8)
    with pytest.raises(TemporaryBackendError, match="refused 5"):
        RetryingBackend(fresh, attempts=5, base_delay=0.01, deadline=Deadline(30.0)).get("k")
    assert fresh.calls == 5


class _Refusing:
    """A backend whose next `failures_left` gets fail as a refused connection does."""

    url = "refusing://"
    capabilities = frozenset()

    def __init__(self, failures: int) -> None:
        self.failures_left, self.calls = failures, 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.calls += 1
        if self.failures_left:
            self.failures_left -= 1
            raise TemporaryBackendError(f"get {key}: connection refused {self.calls}")
        return b"x"


@pytest.mark.s3
def test_hung_server_times_out(s3_server, s3_url: str) -> None:
    """A server that takes requests and never answers (SIGSTOP): small requests give up after
    the short timeout, big or unsized ones after the bulk timeout, and the retries stop at
    the deadline instead of running every attempt."""
    bucket, prefix = parse_s3_url(s3_url)
    backend = S3Backend.from_env(bucket, prefix, connect_timeout=1.0, request_timeout=1.0,
                                 bulk_timeout=4.0)
    backend.put("k", b"v" * 100)
    s3_server.pause()
    try:
        for call, least, most in ((lambda: backend.get("k", 0, 10), 0.9, 3.5),
                                  (lambda: backend.size("k"), 0.9, 3.5),
                                  (lambda: backend.get("k"), 0.9, 3.5),  # metadata: small
                                  (lambda: backend.get("k", 1), 3.9, 10)):  # unsized
            started = time.monotonic()
            with pytest.raises(TemporaryBackendError) as info:
                call()
            assert least <= time.monotonic() - started < most
            assert "timed out" in str(info.value)
        retrying = RetryingBackend(backend, attempts=20, base_delay=0.01, deadline=2.5)
        started = time.monotonic()
        with pytest.raises(TemporaryBackendError):
            retrying.get("k", 0, 10)
        assert 2.5 <= time.monotonic() - started < 8  # 3 or 4 attempts of 1 s, not 20
    finally:
        s3_server.resume()
    assert backend.get("k") == b"v" * 100


class _ErrorHandler(BaseHTTPRequestHandler):
    """Answers every request with the status and S3 error code the server was given."""

    def _answer(self) -> None:
        status, code = self.server.answer  # type: ignore[attr-defined]
        body = f"<Error><Code>{code}</Code><Message>test</Message></Error>".encode()
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def error_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.s3
@pytest.mark.parametrize(
    ("status", "code", "temporary"),
    [
        (503, "SlowDown", True),
        (500, "InternalError", True),
        (429, "TooManyRequests", True),
        (400, "InvalidArgument", False),
        (501, "NotImplemented", False),  # e.g. no conditional puts: retrying cannot help
    ],
)
def test_server_errors_are_classified(error_server, status, code, temporary) -> None:
    error_server.answer = (status, code)
    endpoint = f"http://127.0.0.1:{error_server.server_address[1]}"
    backend = S3Backend("bkt", "c3", endpoint=endpoint, access_key_id="k", secret_access_key=SECRET)
    for call in (lambda: backend.get("x"), lambda: backend.put("x", b"1")):
        with pytest.raises(BackendError) as info:
            call()
        assert isinstance(info.value, TemporaryBackendError) == temporary
        assert f"answered {status} {code}" in str(info.value)
        assert SECRET not in _full_text(info.value)


@pytest.mark.s3
def test_multipart_put(s3_url: str, monkeypatch) -> None:
    monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", 6 * MiB)
    monkeypatch.setattr(s3mod, "MULTIPART_CHUNK", 5 * MiB)  # S3's smallest part
    backend = open_backend(s3_url)
    data = os.urandom(12 * MiB + 3)
    backend.put("packs/ab/big", data)
    assert backend.get("packs/ab/big") == data
    assert dict(backend.list("packs/")) == {"packs/ab/big": len(data)}


class FlakyBackend:
    """Fault injection: the first `failures` calls of each verb raise TemporaryBackendError."""

    def __init__(self, inner: Backend, failures: int) -> None:
        self.inner = inner
        self.url = inner.url
        self.failures = failures
        self.calls: dict[str, int] = {}

    def _maybe_fail(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        if self.calls[verb] <= self.failures:
            raise TemporaryBackendError(f"{verb}: injected fault {self.calls[verb]}")

    def __getattr__(self, verb: str):
        method = getattr(self.inner, verb)

        def call(*args, **kwargs):
            self._maybe_fail(verb)
            return method(*args, **kwargs)

        return call


@pytest.mark.s3
def test_retrying_backend_retries_temporary_errors(s3_url: str) -> None:
    bucket, prefix = parse_s3_url(s3_url)
    flaky = FlakyBackend(S3Backend.from_env(bucket, prefix), failures=2)
    backend = RetryingBackend(flaky, attempts=3, base_delay=0.001)
    backend.put("k", b"value")
    assert backend.get("k", 1, 3) == b"alu"
    assert dict(backend.list("")) == {"k": 5}
    assert flaky.calls == {"put": 3, "get": 3, "list": 3}
    honest = FlakyBackend(flaky.inner, failures=0)
    with pytest.raises(KeyMissing):
        RetryingBackend(honest, base_delay=0.001).get("nope")
    assert honest.calls == {"get": 1}, "a permanent error is not retried"
    hopeless = RetryingBackend(FlakyBackend(flaky.inner, failures=5), attempts=3, base_delay=0.001)
    with pytest.raises(TemporaryBackendError, match="injected fault 3"):
        hopeless.size("k")


@pytest.mark.s3
def test_store_on_s3(s3_url: str) -> None:
    store = Store.open(open_backend(s3_url))
    assert store.url == s3_url and LOCAL not in store.backend.capabilities
    assert store.backend.get("config")
    again = Store.open(open_backend(s3_url), create=False)
    assert again.config.store_id == store.config.store_id
    record = JobRecord(id="job_1", project="demo", created=time.time(), root="ab" * 32, files=3)
    store.create_ref(record)
    assert again.get_ref(JOB, "job_1") == record
    assert list(again.list_refs(JOB)) == ["job_1"]
    with pytest.raises(KeyExists):
        again.create_ref(record)
    store.put_pack(PACK_A, b"pack bytes")
    assert dict(store.list_packs()) == {PACK_A: 10}
    assert store.read(PACK_A, 5, 5) == b"bytes"


def test_list_after_gives_only_later_keys(backend: Backend) -> None:
    keys = ["log/2026120615/0001-a", "log/2026120616/0002-b", "log/2026120616/0003-c",
            "log/2026120617/0004-d", "logx", "other/1"]
    for key in keys:
        backend.put(key, b"")
    assert sorted(k for k, _ in backend.list("log/", after=None)) == keys[:4]
    assert sorted(k for k, _ in backend.list("log/", after="log/2026120616/0002")) == keys[1:4]
    assert sorted(k for k, _ in backend.list("log/", after="log/2026120616/0002-b")) == keys[2:4]
    assert sorted(k for k, _ in backend.list("log/", after="log/2026120618")) == []
    assert sorted(k for k, _ in backend.list("log/", after="log/")) == keys[:4]


def test_local_list_after_skips_names_by_prefix_order(tmp_path) -> None:
    """The local backend skips a folder's names that sort before `after` without looking at
    them, but keeps a name that is a prefix of `after`'s part ("ab" of "ab-x": "ab/c" sorts
    after "ab-x", '/' being greater than '-'); checked against a plain filter of every key."""
    import random

    rng = random.Random(7)
    backend = LocalBackend(tmp_path)

    def part() -> str:
        return "".join(rng.choice("ab-0z+") for _ in range(rng.randint(1, 3)))

    keys: list[str] = []
    for key in ["ab/c", *("/".join(part() for _ in range(rng.randint(1, 3))) for _ in range(300))]:
        if any(k.startswith(key + "/") or key.startswith(k + "/") or k == key for k in keys):
            continue  # a file where a folder is, or the other way round
        backend.put(key, b"")
        keys.append(key)
    for after in ["ab-x", "ab", "a", "ab/", *(part() + rng.choice(["", "/" + part()]) for _ in range(200))]:
        assert sorted(k for k, _ in backend.list("", after=after)) == sorted(k for k in keys if k > after), after
