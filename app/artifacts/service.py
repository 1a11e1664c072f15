"""Tokenizers and models: folders in the store, registered with a manifest and their lineage."""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.artifacts.schemas import ArtifactFile, ArtifactRead, Lineage
from app.artifacts.tables import Artifact
from app.db import paginate
from app.errors import InvalidInput, NotFound
from app.storage import CHUNK, LocalStore, sha256_of

PREFIXES = {"tokenizer": "tok", "model": "mdl"}
MANIFEST = "manifest.json"


def manifest(folder: Path) -> list[dict[str, Any]]:
    """Every file under ``folder`` with its size and sha256, in a stable order."""
    return [
        {
            "path": p.relative_to(folder).as_posix(),
            "size_bytes": p.stat().st_size,
            "sha256": sha256_of(p),
        }
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def write_manifest(folder: Path) -> tuple[int, str]:
    """Write ``manifest.json``; return the folder's total size and identity hash."""
    files = manifest(folder)
    text = json.dumps(files, indent=1, sort_keys=True)
    (folder / MANIFEST).write_text(text)
    return sum(f["size_bytes"] for f in files), hashlib.sha256(text.encode()).hexdigest()


def to_read(artifact: Artifact) -> ArtifactRead:
    return ArtifactRead(
        id=artifact.id,
        object=artifact.kind,
        name=artifact.name,
        format=artifact.format,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        lineage=Lineage(**artifact.lineage),
        details=artifact.details,
        created_at=artifact.created_at,
    )


def get_artifact(*, session: Session, tenant_id: str, kind: str, artifact_id: str) -> Artifact:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.tenant_id != tenant_id or artifact.kind != kind:
        raise NotFound(f"No {kind} with id '{artifact_id}'.", code=f"{kind}.not_found")
    return artifact


def require_artifact(
    *, session: Session, tenant_id: str, kind: str, artifact_id: str, param: str
) -> Artifact:
    """An artifact a job may read; unknown and foreign ids are the same 400."""
    try:
        return get_artifact(
            session=session, tenant_id=tenant_id, kind=kind, artifact_id=artifact_id
        )
    except NotFound as err:
        raise InvalidInput(err.message, code=err.code, param=param) from None


def list_artifacts(
    *, session: Session, tenant_id: str, kind: str, limit: int, after: str | None
) -> tuple[list[Artifact], bool]:
    stmt = select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.kind == kind)
    if after is not None:
        stmt = stmt.where(Artifact.id < after)
    return paginate(session, stmt.order_by(Artifact.id.desc()), limit=limit)


def list_files(*, store: LocalStore, artifact: Artifact) -> list[ArtifactFile]:
    path = store.local_path(artifact.uri) / MANIFEST
    return [ArtifactFile(**entry) for entry in json.loads(path.read_text())]


def file_path(*, store: LocalStore, artifact: Artifact, name: str) -> Path:
    """One file of the artifact, only if the manifest lists it (no path games)."""
    if name not in {f.path for f in list_files(store=store, artifact=artifact)}:
        raise NotFound(f"No file '{name}' in {artifact.id}.", code="file.not_found", param="path")
    return store.local_path(artifact.uri) / name


def stream_tar(*, store: LocalStore, artifact: Artifact) -> Iterator[bytes]:
    """A ``.tar`` of the artifact folder, produced file by file: memory stays flat."""
    folder = store.local_path(artifact.uri)
    names = [f.path for f in list_files(store=store, artifact=artifact)] + [MANIFEST]
    for name in names:
        path = folder / name
        info = tarfile.TarInfo(f"{artifact.id}/{name}")
        info.size = path.stat().st_size
        info.mtime = int(path.stat().st_mtime)
        info.mode = 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        with path.open("rb") as handle:
            while data := handle.read(CHUNK):
                yield data
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)
