"""A machine-local read-through cache of store objects, for workers and the inference service.

Content-addressed: a blob is stored once under its sha256, whatever key it was read by, and is
checked against that sha256 on the way in (a mismatch is discarded and raised). Published by a
rename only after the check, so a partial or corrupt file is never served. Size-bounded:
after each download the least recently used blobs (by mtime, touched on every use) are evicted
until the cache fits, skipping blobs in use.

Processes on one machine coordinate with ``flock`` on two lock files per blob: ``.dl`` makes one
process download while the others wait for it, and ``.pin`` is held shared by every user of the
blob, so an evictor (which needs it exclusively, without waiting) never deletes a blob in use.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from app.store.base import Store
from app.store.errors import FolderIncomplete, IntegrityError, StorageError
from app.store.folders import FileEntry, read_manifest, verify
from app.store.local import make_private_dirs

log = logging.getLogger("gristmill.store.cache")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
STALE_TMP_S = 24 * 3600


class BlobCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes
        for sub in ("blobs", "locks", "tmp", "folders"):
            make_private_dirs(self.root / sub)
        self.downloads = 0
        """Objects this instance fetched from the store (hits are not counted)."""

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    @contextmanager
    def use(self, store: Store, key: str, sha256: str, size: int | None = None) -> Iterator[Path]:
        """The verified local copy of ``key`` (recorded with ``sha256``), kept while inside."""
        pin = self._pin(store, key, sha256, size)
        try:
            yield self.blob_path(sha256)
        finally:
            os.close(pin)

    def fetch(self, store: Store, key: str, sha256: str, size: int | None = None) -> Path:
        """Like :meth:`use`, unpinned: open the file at once (an open file outlives eviction)."""
        with self.use(store, key, sha256, size) as path:
            return path

    @contextmanager
    def use_folder(self, store: Store, prefix: str) -> Iterator[Path]:
        """A complete store folder as a local folder of links to verified blobs (the layout of
        the Hugging Face cache), kept while inside; FolderIncomplete without its manifest."""
        manifest = read_manifest(store, prefix)
        if manifest is None:
            raise FolderIncomplete(f"the folder {prefix!r} is incomplete or absent")
        with ExitStack() as stack:
            for entry in manifest.files:
                stack.enter_context(
                    self.use(store, f"{prefix}/{entry.path}", entry.sha256, entry.size)
                )
            yield self._view(manifest.digest, manifest.files)

    def _pin(self, store: Store, key: str, sha256: str, size: int | None) -> int:
        if not _SHA256.match(sha256):
            raise StorageError(f"not a sha256: {sha256!r}")
        blob = self.blob_path(sha256)
        pin = _lock(self._lock_path(sha256, "pin"), fcntl.LOCK_SH)
        assert pin is not None  # a blocking lock always comes back
        try:
            fetched = not blob.exists() and self._download_once(store, key, sha256, size)
            os.utime(blob)  # most recently used
            if fetched:
                self._evict(keep=sha256)
        except BaseException:
            os.close(pin)
            raise
        return pin

    def _download_once(self, store: Store, key: str, sha256: str, size: int | None) -> bool:
        """Download and publish the blob unless another process did while we waited."""
        gate = _lock(self._lock_path(sha256, "dl"), fcntl.LOCK_EX)  # waits for another download
        assert gate is not None
        try:
            blob = self.blob_path(sha256)
            if blob.exists():
                return False
            tmp = self.root / "tmp" / f"{sha256}.{uuid.uuid4().hex}"
            try:
                digest = store.get_file(key, tmp)
                got = tmp.stat().st_size
                verify(FileEntry(key, got if size is None else size, sha256), digest, got, what=key)
                os.chmod(tmp, 0o400)  # a job must not change an input other jobs share
                make_private_dirs(blob.parent)
                os.replace(tmp, blob)
                self.downloads += 1
                return True
            except IntegrityError:
                log.error("discarded %s from the cache: its content does not match", key)
                raise
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            os.close(gate)

    def _view(self, digest: str, files: tuple[FileEntry, ...]) -> Path:
        view = self.root / "folders" / digest
        if view.is_dir():
            return view
        staging = view.with_name(f".{digest}.{uuid.uuid4().hex}.tmp")
        for entry in files:
            link = staging / entry.path
            make_private_dirs(link.parent)
            link.symlink_to(self.blob_path(entry.sha256))
        make_private_dirs(staging)
        try:
            os.rename(staging, view)
        except OSError:  # another process built it first
            _remove_tree(staging)
        return view

    def _lock_path(self, sha256: str, kind: str) -> Path:
        return self.root / "locks" / f"{sha256}.{kind}"

    def size(self) -> int:
        return sum(size for _, size, _ in self._blobs())

    def _blobs(self) -> list[tuple[float, int, str]]:
        found = []
        for shard in os.scandir(self.root / "blobs"):
            for blob in os.scandir(shard.path):
                try:
                    info = blob.stat()
                except FileNotFoundError:
                    continue
                found.append((info.st_mtime, info.st_size, blob.name))
        return found

    def _evict(self, *, keep: str) -> None:
        gate = _lock(self.root / "locks" / "evict", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if gate is None:
            return  # another process is evicting
        try:
            blobs = sorted(self._blobs())
            total = sum(size for _, size, _ in blobs)
            for _, size, sha in blobs:
                if total <= self.max_bytes:
                    break
                if sha != keep and self._evict_one(sha):
                    total -= size
            self._sweep_tmp()
        finally:
            os.close(gate)

    def _evict_one(self, sha256: str) -> bool:
        pin_path = self._lock_path(sha256, "pin")
        pin = _lock(pin_path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if pin is None:
            return False  # in use
        try:
            self.blob_path(sha256).unlink(missing_ok=True)
            pin_path.unlink(missing_ok=True)  # under the lock: see _lock
            log.info("evicted %s from the cache", sha256[:12])
            return True
        finally:
            os.close(pin)

    def _sweep_tmp(self) -> None:
        """Downloads and folder views a killed process left half made."""
        cutoff = time.time() - STALE_TMP_S
        leftovers = [*(self.root / "tmp").iterdir(), *(self.root / "folders").glob(".*.tmp")]
        for path in leftovers:
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    _remove_tree(path)
                else:
                    path.unlink()
            except FileNotFoundError:
                continue


def _lock(path: Path, operation: int) -> int | None:
    """An fd holding ``flock(operation)`` on ``path``, or None if LOCK_NB found it taken.

    A holder may unlink the lock file (eviction does); whoever locked the unlinked file then
    sees the path no longer names its inode, and retries on the new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _remove_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)
