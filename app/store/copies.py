"""Local files for stored objects, and stored objects from local files: the one seam between the
code that works on paths (the pipeline, transformers, llama.cpp, the API's archive checks) and
the store.

On the local folder a stored object *is* a file, so its local copy is its own path and publishing
is a rename, as fast as it always was. On object storage a read goes through this machine's
read-through cache (each copy pinned until the :class:`LocalCopies` is closed, so eviction never
deletes a file a job is reading), and publishing uploads, verifies nothing is missing, then
removes the local source.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType

from app.store.base import Store, check_key
from app.store.cache import BlobCache
from app.store.errors import ObjectNotFound, StorageError
from app.store.folders import put_file, put_folder
from app.store.local import LocalStore, make_private_dirs


def is_local(store: Store) -> bool:
    """Whether stored objects are files on this machine (the embedded default, a shared folder)."""
    return isinstance(store, LocalStore)


class LocalCopies:
    """Paths for stored objects, valid until :meth:`close` (use it as a context manager)."""

    def __init__(self, store: Store, cache: BlobCache | None = None) -> None:
        if not is_local(store) and cache is None:
            raise StorageError("reading object storage needs this machine's cache folder")
        self.store = store
        self.cache = cache
        self._stack = ExitStack()
        self._scratch: Path | None = None

    def file(self, key: str, *, sha256: str | None = None, size: int | None = None) -> Path:
        """The object ``key`` as a local file (read-only on object storage). ``sha256`` (the
        digest recorded when it was stored) lets the cache share it and verify it; without one
        it is downloaded to a private folder removed on close."""
        check_key(key)
        if isinstance(self.store, LocalStore):
            path = self.store.local_path(key)
            if not path.is_file():
                raise ObjectNotFound(f"no object {key!r}")
            return path
        if sha256 is not None:
            assert self.cache is not None
            return self._stack.enter_context(self.cache.use(self.store, key, sha256, size))
        target = self._private() / key
        self.store.get_file(key, target)
        return target

    def folder(self, key: str) -> Path:
        """The folder ``key`` (a model, a tokenizer, a checkpoint) as a local folder; on object
        storage only a complete one (its manifest written), else FolderIncomplete."""
        check_key(key)
        if isinstance(self.store, LocalStore):
            path = self.store.local_path(key)
            if not path.is_dir():
                raise ObjectNotFound(f"no folder {key!r}")
            return path
        assert self.cache is not None
        return self._stack.enter_context(self.cache.use_folder(self.store, key))

    def _private(self) -> Path:
        if self._scratch is None:
            root = self.cache.root / "tmp" if self.cache is not None else None
            self._scratch = Path(tempfile.mkdtemp(prefix="copies-", dir=root))
            self._stack.callback(shutil.rmtree, self._scratch, True)
        return self._scratch

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalCopies:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish_file(store: Store, key: str, path: Path) -> None:
    """Move the local file ``path`` into the store as ``key`` (a rename on the local folder, an
    upload then a delete on object storage). A failed upload stores nothing and leaves ``path``
    in place."""
    check_key(key)
    if isinstance(store, LocalStore):
        target = store.local_path(key)
        make_private_dirs(target.parent)
        os.replace(path, target)
        return
    put_file(store, key, path)
    path.unlink(missing_ok=True)


def publish_folder(store: Store, key: str, folder: Path) -> None:
    """Move the local folder ``folder`` into the store as the folder ``key``, replacing what was
    there. On object storage its manifest goes last, so readers see the old folder, nothing, or
    the whole new one; on failure the local folder stays for another try."""
    check_key(key)
    if isinstance(store, LocalStore):
        target = store.local_path(key)
        make_private_dirs(target.parent)
        if target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
        return
    put_folder(store, key, folder)
    shutil.rmtree(folder, ignore_errors=True)


def scratch_root(store: Store, default: Path) -> Path:
    """Where jobs keep their work and output folders on this machine: inside the local store
    (so publishing is a rename on one filesystem), else ``default`` (a folder of this machine's
    own; checkpoints reach the bucket by upload)."""
    if isinstance(store, LocalStore):
        return store.root
    make_private_dirs(default)
    return default.resolve()
