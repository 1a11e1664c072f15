"""Whole files and folders in and out of any store; a folder counts only once complete.

A folder (a model, a checkpoint) is the objects under ``prefix/`` plus a manifest object,
``prefix/.manifest.json``, written *last*, that lists every file with its size and sha256.
Readers trust the manifest alone: a folder without one is incomplete (being written, or
abandoned when a worker died) and is never read, and files it does not list are ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from app.store.base import CHUNK, Store, check_key, folder_prefix
from app.store.errors import FolderIncomplete, IntegrityError, ObjectNotFound, StorageError
from app.store.local import make_private_dirs

MANIFEST = ".manifest.json"
FORMAT = "gristmill.folder/1"


@dataclass(frozen=True)
class FileEntry:
    path: str
    """Relative to the folder, slash-separated."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_json(self) -> bytes:
        files = [{"path": e.path, "size": e.size, "sha256": e.sha256} for e in self.files]
        return json.dumps({"format": FORMAT, "files": files}, indent=1).encode()

    @property
    def digest(self) -> str:
        """The sha256 of the manifest: one id for this exact folder content."""
        return hashlib.sha256(self.to_json()).hexdigest()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown manifest format {data.get('format')!r}")
            files = tuple(
                FileEntry(check_key(str(f["path"])), int(f["size"]), str(f["sha256"]))
                for f in data["files"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"a folder manifest does not parse: {exc}") from exc
        return cls(files)


def put_file(store: Store, key: str, path: Path) -> FileEntry:
    """Upload one local file, hashed as it is read; the entry records what was stored."""
    size = path.stat().st_size
    with path.open("rb") as source, store.open_write(key, size_hint=size) as writer:
        while data := source.read(CHUNK):
            writer.write(data)
        writer.commit()
        return FileEntry(key, writer.size, writer.sha256)


def put_bytes(store: Store, key: str, data: bytes) -> FileEntry:
    with store.open_write(key, size_hint=len(data)) as writer:
        writer.write(data)
        writer.commit()
        return FileEntry(key, writer.size, writer.sha256)


def read_bytes(store: Store, key: str) -> bytes:
    with store.open_read(key) as handle:
        return handle.read()


def put_folder(store: Store, prefix: str, folder: Path) -> Manifest:
    """Upload every file under ``folder`` to ``prefix/``, then the manifest; objects left under
    the prefix by an earlier version of the folder are deleted once the new one is complete."""
    check_key(prefix)
    store.delete(f"{prefix}/{MANIFEST}")  # incomplete from here until the new manifest lands
    entries = []
    for path in _files(folder):
        relative = path.relative_to(folder).as_posix()
        if relative == MANIFEST:
            raise StorageError(f"a folder to store may not contain its own {MANIFEST}")
        stored = put_file(store, f"{prefix}/{relative}", path)
        entries.append(FileEntry(relative, stored.size, stored.sha256))
    manifest = Manifest(tuple(entries))
    put_bytes(store, f"{prefix}/{MANIFEST}", manifest.to_json())
    listed = {f"{prefix}/{entry.path}" for entry in entries} | {f"{prefix}/{MANIFEST}"}
    for item in store.list(prefix):
        if item.key not in listed:
            store.delete(item.key)
    return manifest


def read_manifest(store: Store, prefix: str) -> Manifest | None:
    """The folder's manifest, or None while the folder is incomplete (or absent)."""
    try:
        return Manifest.from_json(read_bytes(store, f"{check_key(prefix)}/{MANIFEST}"))
    except ObjectNotFound:
        return None


def get_folder(store: Store, prefix: str, dest: Path) -> Manifest:
    """Download a complete folder to ``dest``, every file verified against the manifest; ``dest``
    appears whole (built beside it, then renamed) and replaces what was there."""
    manifest = read_manifest(store, prefix)
    if manifest is None:
        raise FolderIncomplete(f"the folder {prefix!r} is incomplete or absent")
    make_private_dirs(dest.parent)
    staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    try:
        for entry in manifest.files:
            target = staging / entry.path
            digest = store.get_file(f"{prefix}/{entry.path}", target)
            verify(entry, digest, target.stat().st_size, what=f"{prefix}/{entry.path}")
        _swap_in(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def children(store: Store, prefix: str) -> dict[str, float]:
    """Each folder or object directly under ``prefix/``, with the newest modification time of
    anything in it: garbage collection's view of ``jobs/``, ``models/``, ``datasets/``, which
    works alike on a folder tree and on a bucket (where folders have no time of their own)."""
    base = folder_prefix(prefix)
    newest: dict[str, float] = {}
    for item in store.list(prefix):
        name = item.key[len(base) :].split("/", 1)[0]
        newest[name] = max(newest.get(name, 0.0), item.modified)
    return newest


def verify(entry: FileEntry, sha256: str, size: int, *, what: str) -> None:
    if sha256 != entry.sha256 or size != entry.size:
        raise IntegrityError(
            f"{what}: got {size} bytes with sha256 {sha256[:12]}…, "
            f"recorded {entry.size} bytes with sha256 {entry.sha256[:12]}…"
        )


def _files(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, _, names in os.walk(folder):
        found.extend(Path(root, name) for name in names if Path(root, name).is_file())
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _swap_in(staging: Path, dest: Path) -> None:
    make_private_dirs(staging)  # an empty folder still arrives as a folder
    if not dest.exists():
        os.replace(staging, dest)
        return
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.old")
    os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)
