"""The artifact store as the API and the job layer open it, from :class:`app.settings.Settings`.

The store itself (the interface, the local-folder and S3 backends, folders with manifests, the
read-through cache) is :mod:`app.store`, which the inference service imports too; this module
keeps the names the API has always imported from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from app.store import CHUNK, Store, open_store
from app.store.cache import BlobCache
from app.store.copies import LocalCopies, is_local, publish_file, publish_folder, scratch_root
from app.store.local import (
    DIR_MODE,
    FILE_MODE,
    AtomicWriter,
    LocalStore,
    make_private_dirs,
    sha256_of,
)

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "CHUNK",
    "DIR_MODE",
    "FILE_MODE",
    "AtomicWriter",
    "LocalCopies",
    "LocalStore",
    "Store",
    "is_local",
    "job_scratch_root",
    "local_copies",
    "make_private_dirs",
    "open_cache",
    "open_configured_store",
    "publish_file",
    "publish_folder",
    "sha256_of",
]


def open_configured_store(settings: Settings) -> Store:
    """The store the settings name (``GRISTMILL_STORAGE_URL``, else the local folder)."""
    return open_store(settings.resolved_store)


def open_cache(settings: Settings) -> BlobCache:
    """This machine's read-through cache of store objects (workers, the inference service)."""
    return BlobCache(settings.resolved_cache_dir, settings.storage_cache_max_bytes)


def local_copies(settings: Settings, store: Store) -> LocalCopies:
    """Local paths for stored objects on this machine (through its cache on object storage)."""
    return LocalCopies(store, None if is_local(store) else open_cache(settings))


def job_scratch_root(settings: Settings, store: Store) -> Path:
    """Where this machine keeps jobs' work and output folders (see ``scratch_root``)."""
    return scratch_root(store, settings.resolved_scratch_dir)
