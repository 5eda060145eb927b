"""Store layer: backends (local directory, S3-compatible) and the pack/ref layout on them."""

from c3fs.store.backend import Backend, BackendError, KeyExists, KeyMissing, TemporaryBackendError
from c3fs.store.store import Store, StoreConfig, open_backend

__all__ = [
    "Backend",
    "BackendError",
    "KeyExists",
    "KeyMissing",
    "Store",
    "StoreConfig",
    "TemporaryBackendError",
    "open_backend",
]
