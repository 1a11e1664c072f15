"""Gristmill's artifact store: one small interface over a local folder and S3-compatible storage.

A top-level package, beside ``app``, ``workers``, ``pipeline`` and ``inference``, because all of
them read and write the store and the import contracts keep the inference service and the
pipeline out of ``app``; it imports none of them. Importing it is cheap: boto3 is imported only
when an S3 store is opened.
"""

from app.store.base import CHUNK, ObjectInfo, Store, Writer
from app.store.config import S3Options, StoreConfig, open_store
from app.store.errors import (
    FolderIncomplete,
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    is_retryable,
)

__all__ = [
    "CHUNK",
    "FolderIncomplete",
    "IntegrityError",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "S3Options",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "Store",
    "StoreConfig",
    "Writer",
    "is_retryable",
    "open_store",
]
