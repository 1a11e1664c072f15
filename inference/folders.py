"""Where the service finds the folders the API names by store key: the store's own folder when
it is local (as it always was), else this machine's read-through cache of the bucket.

On object storage a model folder is downloaded once (a thread, never on the event loop), then
kept pinned in the cache while the service runs, so later requests for it touch neither the
bucket nor the disk and a bucket outage does not stop models already here. Two requests that
want the same model at once share one download: the cache's ``flock`` keeps processes apart,
and a lock per key here keeps this process's requests from reading the manifest twice. At most
``PINNED`` folders stay pinned; the least recently asked for is unpinned first (its files stay
until the cache needs the room, and come back from the bucket if evicted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from pathlib import Path

from app.store import FolderIncomplete, ObjectNotFound, Store, open_store
from app.store.cache import BlobCache
from app.store.copies import LocalCopies, is_local
from app.store.local import LocalStore
from app.store.settings import StorageSettings
from inference.engine import ModelNotFound, ModelRef
from inference.protocol import ModelSpec, resolve_key

log = logging.getLogger("gristmill.inference")

PINNED = 32
"""Model folders (bases and adapters) kept pinned in the cache at once."""


class ModelFolders:
    """Local folders for the store keys a request names (``root`` for a local store, or a store
    and its cache for object storage; neither: every model is refused)."""

    def __init__(
        self,
        root: Path | None = None,
        *,
        store: Store | None = None,
        cache: BlobCache | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.cache = cache
        self._pinned: OrderedDict[str, tuple[LocalCopies, Path]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def configured(self) -> bool:
        return self.root is not None or self.store is not None

    async def ref(self, spec: ModelSpec) -> ModelRef:
        """The model's folders on this machine, downloaded first if need be.

        Raises:
            ModelNotFound: no store, or no complete folder under a key.
            StorageUnavailable: the bucket did not answer (the service answers 503).
        """
        if self.root is not None:
            adapter = resolve_key(self.root, spec.adapter_path) if spec.adapter_path else None
            return ModelRef(spec.id, resolve_key(self.root, spec.path), adapter, spec.format)
        if self.store is None:
            raise ModelNotFound("this service has no model store configured", param="model")
        path = await self._local(spec.path, gguf=spec.format == "gguf")
        adapter = await self._local(spec.adapter_path, gguf=False) if spec.adapter_path else None
        return ModelRef(spec.id, path, adapter, spec.format)

    async def _local(self, key: str, *, gguf: bool) -> Path:
        pinned = self._pinned.get(key)
        if pinned is not None:
            self._pinned.move_to_end(key)
            return pinned[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pinned = self._pinned.get(key)
            if pinned is None:
                copies = LocalCopies(self._s3(), self.cache)
                try:
                    path = await asyncio.to_thread(_materialize, copies, key, gguf)
                except BaseException:
                    copies.close()
                    raise
                pinned = self._pinned[key] = (copies, path)
                self._unpin_beyond(PINNED)
        self._locks.pop(key, None)
        if key in self._pinned:  # (unless as many others came in since: it is unpinned)
            self._pinned.move_to_end(key)
        return pinned[1]

    def _s3(self) -> Store:
        assert self.store is not None
        return self.store

    def _unpin_beyond(self, limit: int) -> None:
        while len(self._pinned) > limit:
            _, (copies, _) = self._pinned.popitem(last=False)
            copies.close()

    @property
    def downloads(self) -> int | None:
        """Objects fetched from the bucket by this service (None on a local store)."""
        return self.cache.downloads if self.cache is not None else None

    def close(self) -> None:
        self._unpin_beyond(0)


def _materialize(copies: LocalCopies, key: str, gguf: bool) -> Path:
    """A complete folder under ``key``; for a GGUF model also a lone ``.gguf`` object."""
    try:
        return copies.folder(key)
    except FolderIncomplete:
        if not (gguf and key.endswith(".gguf")):
            raise ModelNotFound("no such model on the store", param="model") from None
    try:
        return copies.file(key)
    except ObjectNotFound:
        raise ModelNotFound("no such model on the store", param="model") from None


def open_model_folders(
    model_root: Path | None, storage: StorageSettings | None, data_dir: Path
) -> ModelFolders:
    """The folders the settings name: ``model_root`` when set (a local store's folder), else
    the store of ``storage`` (``<data_dir>/store`` by default, as the API's), read through
    ``<data_dir>/store-cache`` when it is object storage."""
    if model_root is not None or storage is None:
        return ModelFolders(model_root)
    store = open_store(storage.store_config(default_root=data_dir / "store"))
    if is_local(store):
        assert isinstance(store, LocalStore)
        return ModelFolders(store.root)
    cache = BlobCache(
        storage.cache_dir(default=data_dir / "store-cache"), storage.storage_cache_max_bytes
    )
    log.info("models come from %s through the cache in %s", storage.storage_url, cache.root)
    return ModelFolders(store=store, cache=cache)
