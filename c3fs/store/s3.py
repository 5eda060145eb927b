"""The S3-compatible backend: one object per key under `s3://bucket/prefix`, through obstore.

Serves AWS S3, MinIO, Ceph RGW, R2 and GCS's S3 API alike. Endpoint (an `http://` one is
allowed), region and credentials are found as the AWS CLI finds them (`c3fs.store.aws`:
c3fs settings, AWS_* variables, profiles of ~/.aws, SSO, container and instance roles).

- missing key: `get`/`size` raise KeyMissing; `delete` ignores it. A missing bucket is a
  BackendError naming the bucket, never KeyMissing.
- repeated write: `put` replaces (an S3 PUT is atomic: readers see the old object or the new
  one); `create` sends `If-None-Match: *`, so the server refuses to overwrite and we raise
  KeyExists; of two racing creators the server lets exactly one win.
- crash half-way: a single PUT is all or nothing, so nothing is visible. Objects over
  MULTIPART_THRESHOLD go up in parts; a killed multipart upload leaves invisible parts that a
  bucket lifecycle rule (AbortIncompleteMultipartUpload) should remove.

Errors: connection failures, timeouts, 5xx and throttling raise TemporaryBackendError, which
RetryingBackend retries (obstore's own retries are off, so there is one retry policy). Bad
credentials, denied access and a missing bucket raise BackendError with a one-line message
that never contains the secret key or session token. A `create` retried after its reply was
lost may meet its own object and raise KeyExists.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import blake3
import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    GenericError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from c3fs.preload import cache_dir
from c3fs.store.aws import DEFAULT_REGION
from c3fs.store.aws import resolve as resolve_aws
from c3fs.store.backend import (
    Backend,
    BackendDefaults,
    BackendError,
    Data,
    Deadline,
    KeyExists,
    KeyMissing,
    RetryingBackend,
    TemporaryBackendError,
    joined,
)
from c3fs.store.cache import BlockCache

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
# A request must finish within its timeout (obstore has no idle timeout). Most requests are
# small, and a hung server should cost seconds, not the minutes a big upload may need:
REQUEST_TIMEOUT = 20.0  # requests that move at most QUICK_BYTES (>= 400 KiB/s)
BULK_TIMEOUT = 120.0  # bigger ones: packs (32 MiB), multipart parts, whole objects
QUICK_BYTES = 8 * 1024 * 1024
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
LIST_PAGE = 1000

_STATUS = re.compile(r"status code: (\d{3})")
_S3_CODE = re.compile(r"<Code>(\w+)</Code>")
_TEMPORARY_STATUS = frozenset({408, 425, 429})
_TEMPORARY_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError", "Throttling",
     "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
)  # fmt: skip
_ACCESS_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
     "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AuthorizationHeaderMalformed"}
)  # fmt: skip


class S3Backend(BackendDefaults):
    """One bucket (and key prefix) of an S3-compatible service. Thread-safe."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str = DEFAULT_REGION,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        credential_provider: Any = None,
        credentials_source: str = "",
        connect_timeout: float = CONNECT_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        bulk_timeout: float = BULK_TIMEOUT,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._secrets = tuple(s for s in (secret_access_key, session_token) if s)
        self._provider = credential_provider
        self._credentials_source = credentials_source
        self._bucket_seen = False
        self._views = False  # ranged reads as buffers, not bytes (`direct`)
        credentials = {
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "session_token": session_token,
        }
        config = {"region": region, "endpoint": endpoint, **credentials}
        with self._errors("configure", self.url):
            self.store, self._bulk = (
                S3Store(
                    bucket,
                    prefix=self.prefix or None,
                    config={name: value for name, value in config.items() if value},
                    client_options=_client_options(endpoint, connect_timeout, timeout),
                    retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=timeout)},
                    credential_provider=credential_provider,
                )
                for timeout in (request_timeout, bulk_timeout)
            )

    @functools.cached_property
    def direct(self) -> S3Backend:
        """This bucket, its ranged reads returned as read-only buffers of the bytes obstore
        received (`Backend.direct`): `to_bytes` would copy each one again (a copy's merged
        GETs: 4 MiB each, the copy and its fresh pages ~8% of a remote pull's CPU)."""
        view = copy.copy(self)
        view._views = True
        return view

    def _client(self, nbytes: int | None) -> S3Store:
        """The client whose timeout suits a request moving `nbytes` (None: not known)."""
        return self.store if nbytes is not None and nbytes <= QUICK_BYTES else self._bulk

    @classmethod
    def from_env(cls, bucket: str, prefix: str = "", **kwargs) -> S3Backend:
        """Endpoint, region and credentials found as the AWS CLI finds them (`aws.resolve`:
        c3fs settings, the environment, ~/.aws, SSO, container and instance roles);
        `kwargs` override them."""
        names = ("endpoint", "region", "access_key_id", "secret_access_key", "session_token")
        found = resolve_aws(**{k: kwargs.pop(k) for k in names if k in kwargs})
        return cls(bucket, prefix, endpoint=found.endpoint, region=found.region,
                   **(found.credentials or {}), credential_provider=found.provider,
                   credentials_source=found.source, **kwargs)

    # verbs --------------------------------------------------------------------------------
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise BackendError(f"get {key}: bad range offset={offset} length={length}")
        if length == 0:
            self.size(key)  # KeyMissing if absent, like a zero-byte read of a file
            return b""
        with self._errors("get", key):
            try:
                return self._read(_check_key(key), offset, length)
            except GenericError as exc:
                if _status(str(exc)) != 416:
                    raise
        return b""  # 416: the range starts at or past the end of the object

    def _read(self, key: str, offset: int, length: int | None) -> bytes:
        if length is not None:
            got = obstore.get_range(self._client(length), key, start=offset, length=length)
            return memoryview(got) if self._views else got.to_bytes()
        # Whole objects are metadata (config, refs, locks): data is always read by range.
        client, options = (self._bulk, {"range": {"offset": offset}}) if offset else (self.store, None)
        return obstore.get(client, key, options=options).bytes().to_bytes()

    def size(self, key: str) -> int:
        try:
            with self._errors("stat", key):
                return obstore.head(self.store, _check_key(key))["size"]
        except KeyMissing:
            self._check_bucket()  # a HEAD 404 has no body: make sure it is the key, not the bucket
            raise

    def put(self, key: str, data: Data, *, sync: bool = True) -> None:
        """Durable once it returns, whatever `sync` says (S3 has no lazy puts)."""
        data = joined(data)
        multipart = len(data) > MULTIPART_THRESHOLD
        with self._errors("put", key):
            obstore.put(
                self._client(len(data)),
                _check_key(key),
                data,
                use_multipart=multipart,
                chunk_size=MULTIPART_CHUNK,
            )

    def create(self, key: str, data: bytes) -> None:
        with self._errors("create", key):
            obstore.put(self._client(len(data)), _check_key(key), data, mode="create",
                        use_multipart=False)

    def list(self, prefix: str, after: str | None = None) -> Iterator[tuple[str, int]]:
        base = prefix.rpartition("/")[0] or None  # obstore matches whole path segments
        with self._errors("list", prefix or "/"):
            for page in obstore.list(self.store, base, offset=after, chunk_size=LIST_PAGE):
                for meta in page:
                    if meta["path"].startswith(prefix):
                        yield meta["path"], meta["size"]

    def delete(self, key: str) -> None:
        try:
            with self._errors("delete", key):
                obstore.delete(self.store, _check_key(key))
        except KeyMissing:
            pass

    # errors -------------------------------------------------------------------------------
    def _check_bucket(self) -> None:
        if not self._bucket_seen:
            with self._errors("list", "/"):
                obstore.list_with_delimiter(self.store, None)
            self._bucket_seen = True

    @contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        """Translate obstore's exceptions into the backend's typed errors."""
        try:
            yield
        except BackendError:
            raise
        except FileNotFoundError as exc:
            if "NoSuchBucket" in str(exc):
                raise self._no_bucket() from None
            raise KeyMissing(key) from None
        except (AlreadyExistsError, PreconditionError):
            raise KeyExists(key) from None
        except Exception as exc:
            raise self._failure(what, key, exc) from None

    def _failure(self, what: str, key: str, exc: Exception) -> BackendError:
        text = str(exc)
        status, code = _status(text), _s3_code(text)
        if code == "NoSuchBucket":
            return self._no_bucket()
        if _is_denied(exc, status, code):
            return BackendError(self._scrub(self._denied(code or status)))
        message = self._scrub(f"{what} {key}: {self._describe(text, status, code)}")
        if _is_temporary(text, status, code):
            return TemporaryBackendError(message)
        return BackendError(message)

    def _describe(self, text: str, status: int | None, code: str | None) -> str:
        where = self.endpoint or "S3"
        if status is not None:
            return f"{where} answered {status}{' ' + code if code else ''}"
        if "ConnectionRefused" in text:
            return f"cannot connect to {where}: connection refused"
        if "Timeout" in text or "TimedOut" in text:
            return f"no answer from {where}: timed out"
        if "HTTP error" in text:
            return f"cannot reach {where}: {_first_line(text).rpartition(' - ')[2]}"
        return _first_line(text)

    def _no_bucket(self) -> BackendError:
        return BackendError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint or 'AWS'}")

    def _denied(self, reason: str | int | None) -> str:
        check = ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                 if self._provider is None else f"the credentials of {self._credentials_source}")
        return (f"S3 at {self.endpoint or 'AWS'} refused access to bucket {self.bucket!r} "
                f"({reason}): check {check}")

    def _scrub(self, message: str) -> str:
        provided = self._provider.secrets() if self._provider is not None else ()
        for secret in self._secrets + provided:
            message = message.replace(secret, "***")
        return message


def _client_options(endpoint: str | None, connect_timeout: float, request_timeout: float) -> dict:
    return {
        "allow_http": bool(endpoint and endpoint.startswith("http://")),
        "connect_timeout": timedelta(seconds=connect_timeout),
        "timeout": timedelta(seconds=request_timeout),
    }


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/") or "\0" in key:
        raise BackendError(f"bad key {key!r}")
    return key


def _status(text: str) -> int | None:
    match = _STATUS.search(text)
    return int(match.group(1)) if match else None


def _s3_code(text: str) -> str | None:
    match = _S3_CODE.search(text)
    return match.group(1) if match else None


def _is_denied(exc: Exception, status: int | None, code: str | None) -> bool:
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return True
    return code in _ACCESS_CODES or status in (401, 403)


def _is_temporary(text: str, status: int | None, code: str | None) -> bool:
    if status is not None:
        return (
            (status >= 500 and status != 501)
            or status in _TEMPORARY_STATUS
            or code in _TEMPORARY_CODES
        )
    return "HTTP error" in text and "credential" not in text.lower()


def _first_line(text: str, limit: int = 200) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise BackendError(f"bad S3 store URL {url!r}: expected s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def open_s3_backend(url: str, cache: bool = True, disk_cache_bytes: int | None = None,
                    deadline: Deadline | None = None) -> Backend:
    """The backend for `s3://bucket/prefix`, configured from the environment, with retries
    bounded by `deadline` (default: a new one of $C3FS_STORE_DEADLINE seconds), under a
    local disk cache of pack blocks (`cache`; `disk_cache_bytes`, default $C3FS_DISK_CACHE
    or 1 GiB) kept per endpoint, bucket and prefix."""
    bucket, prefix = parse_s3_url(url)
    backend = S3Backend.from_env(bucket, prefix)
    log.debug("S3 store %s at %s, credentials from %s", backend.url, backend.endpoint or "AWS",
              backend._credentials_source or "arguments")
    retrying = RetryingBackend(backend, deadline=deadline)
    if not cache:
        return retrying
    where = blake3.blake3(f"{backend.endpoint or 'AWS'} {backend.url}".encode()).hexdigest(8)
    return BlockCache(retrying, Path(cache_dir()) / f"s3-{where}", disk_cache_bytes)
