"""Tokenizers and models: folders in the store, registered with a manifest and their lineage."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import layout
from app.artifacts.schemas import ArtifactFile, ArtifactRead, Lineage
from app.artifacts.tables import Artifact
from app.db import find_owned, get_owned, paginate
from app.errors import InvalidInput, NotFound, public_reasons, shown
from app.ids import new_id
from app.storage import Store, sha256_of
from app.store import ObjectInfo, ObjectNotFound
from app.store.folders import MANIFEST as STORE_MANIFEST

Category = Literal["tokenizer", "model"]
PREFIXES: dict[Category, str] = {"tokenizer": "tok", "model": "mdl"}
MANIFEST = "manifest.json"
FINE_TUNED_NAME = re.compile(
    r"ft:[^:]+:[^:]+:(?P<job_id>job_[0-9A-Z]{26})(?::adapter|:ckpt-step-\d+)?"
)
"""The name a ``finetune`` job gives its model, adapter and kept checkpoints
(``ft:<base>:<suffix>:<job id>[:adapter|:ckpt-step-N]``): unique, as it ends with the job's id."""


def new_artifact_id(category: Category) -> str:
    return new_id(PREFIXES[category])


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


def fine_tuned_by(name: str) -> str | None:
    """The job whose fine-tune ``name`` names, or None for any other name."""
    match = FINE_TUNED_NAME.fullmatch(name)
    return match.group("job_id") if match else None


def public_id(artifact: Artifact) -> str:
    """The id OpenAI's API knows the model by: a fine-tune's ``ft:`` name (its job made it, so it
    is unique), else the registry id. An upload that merely calls itself ``ft:…`` keeps its id."""
    if artifact.job_id is not None and fine_tuned_by(artifact.name) == artifact.job_id:
        return artifact.name
    return artifact.id


def to_read(artifact: Artifact) -> ArtifactRead:
    return ArtifactRead(
        id=public_id(artifact),
        registry_id=artifact.id,
        object=artifact.category,
        name=artifact.name,
        status=artifact.status,
        format=artifact.format,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        lineage=Lineage(**artifact.lineage),
        details=artifact.details,
        errors=public_reasons(artifact.errors),
        created_at=artifact.created_at,
        created=int(artifact.created_at.timestamp()),
        owned_by=artifact.tenant_id,
    )


def get_artifact(
    *, session: Session, tenant_id: str, category: str, artifact_id: str, lock: bool = False
) -> Artifact:
    """The tenant's artifact of this category: another tenant's looks exactly like a missing one.
    ``lock`` takes a shared row lock until commit (a job about to read it is being submitted).

    Raises:
        NotFound: no such artifact for this tenant.
    """
    return get_owned(
        session,
        Artifact,
        artifact_id,
        tenant_id=tenant_id,
        where=lambda artifact: artifact.category == category,
        lock="read" if lock else None,
        missing=NotFound(
            f"No {category} with id '{shown(artifact_id)}'.", code=f"{category}.not_found"
        ),
    )


def find_model(*, session: Session, tenant_id: str, model: str, lock: bool = False) -> Artifact:
    """A model by registry id, by the ``ft:`` name OpenAI's API knows a fine-tune by, or by name
    (the newest of that name). An ``ft:`` name finds only the model its own job made. ``lock``
    as for :func:`get_artifact`.

    Raises:
        NotFound: no such model for this tenant.
    """
    artifact = find_owned(
        session,
        Artifact,
        model,
        tenant_id=tenant_id,
        where=lambda a: a.category == "model",
        lock="read" if lock else None,
    )
    if artifact is None:
        by_name = select(Artifact).where(
            Artifact.tenant_id == tenant_id, Artifact.category == "model", Artifact.name == model
        )
        job_id = fine_tuned_by(model)
        if job_id is not None:
            by_name = by_name.where(Artifact.job_id == job_id)
        by_name = by_name.order_by(Artifact.id.desc()).limit(1)
        if lock:  # as find_owned: the locked row as it is now, not a copy loaded before
            by_name = by_name.with_for_update(read=True).execution_options(populate_existing=True)
        artifact = session.scalar(by_name)
    if artifact is None:
        raise NotFound(
            f"The model '{shown(model)}' does not exist.", code="model_not_found", param="model"
        )
    return artifact


def lock_for_delete(*, session: Session, artifact_id: str) -> Artifact | None:
    """An exclusive row lock until commit: a submission that holds (or waits for) its shared lock
    on the artifact is seen by the caller's reader check. The row as it is now (None: gone)."""
    return session.get(Artifact, artifact_id, with_for_update=True, populate_existing=True)


def delete_model(*, session: Session, store: Store, artifact: Artifact) -> None:
    """Delete the model's row (committed with whatever the caller wrote), then its files."""
    uri = artifact.uri
    session.delete(artifact)
    session.commit()
    store.delete(uri)


def list_artifacts(
    *, session: Session, tenant_id: str, category: str, limit: int, after: str | None
) -> tuple[list[Artifact], bool]:
    stmt = select(Artifact).where(Artifact.tenant_id == tenant_id, Artifact.category == category)
    if after is not None:
        stmt = stmt.where(Artifact.id < after)
    return paginate(session, stmt.order_by(Artifact.id.desc()), limit=limit)


def list_files(*, store: Store, artifact: Artifact) -> list[ArtifactFile]:
    """The files of a ready artifact (one still validating, or refused, has none to offer), as
    its ``manifest.json`` lists them: never the store's own folder manifest."""
    if artifact.status != "ready":
        return []
    try:
        with store.open_read(f"{artifact.uri}/{MANIFEST}") as handle:
            entries: list[dict[str, Any]] = json.load(handle)
    except ObjectNotFound:
        return []
    return [ArtifactFile(**e) for e in entries if e.get("path") != STORE_MANIFEST]


def file_entry(*, store: Store, artifact: Artifact, name: str) -> tuple[str, ArtifactFile]:
    """The store key and manifest entry of one file of the artifact, only if the manifest lists
    it (no path games)."""
    for entry in list_files(store=store, artifact=artifact):
        if entry.path == name:
            return f"{artifact.uri}/{name}", entry
    raise NotFound(
        f"No file '{shown(name)}' in {artifact.id}.", code="file.not_found", param="path"
    )


def tar_pieces(*, store: Store, artifact: Artifact) -> list[bytes | ObjectInfo]:
    """A ``.tar`` of the artifact folder as tar headers and stored objects in order: its size is
    known before a byte is read, so it can be sent with a length and in ranges, file by file.

    Raises:
        NotFound: the artifact is not ready (nothing to download yet, or it was refused), or a
            file it lists is missing; raised before the first byte, so the caller answers with a
            clean error.
    """
    if artifact.status != "ready":
        raise NotFound(
            f"{artifact.category.title()} '{artifact.id}' is {artifact.status}: nothing to "
            "download.",
            code=f"{artifact.category}.not_ready",
        )
    names = [f.path for f in list_files(store=store, artifact=artifact)] + [MANIFEST]
    stored = {info.key: info for info in store.list(artifact.uri)}
    pieces: list[bytes | ObjectInfo] = []
    for name in names:
        info = stored.get(f"{artifact.uri}/{name}")
        if info is None:
            raise NotFound(
                f"{artifact.category.title()} '{artifact.id}' is missing '{shown(name)}'.",
                code="file.not_found",
            )
        header = tarfile.TarInfo(f"{artifact.id}/{name}")
        header.size = info.size
        header.mtime = int(info.modified)
        header.mode = 0o644
        pieces += [header.tobuf(format=tarfile.PAX_FORMAT), info]
        if info.size % tarfile.BLOCKSIZE:
            pieces.append(b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE))
    pieces.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    return pieces


def check_ready(artifact: Artifact, *, param: str) -> None:
    """Raises InvalidInput unless the artifact passed validation (a job may read it)."""
    if artifact.status != "ready":
        raise InvalidInput(
            f"{artifact.category.title()} '{artifact.id}' is {artifact.status}, not ready.",
            code=f"{artifact.category}.not_ready",
            param=param,
        )


def upload_name(fields: Mapping[str, str], filename: str | None, *, default: str) -> str:
    """An uploaded model's name: the ``name`` field, else the file's name, else ``default``.

    Raises:
        InvalidInput: a field other than ``name`` and ``sha256`` was sent.
    """
    if set(fields) - {"name", "sha256"}:
        raise InvalidInput("Only 'file', 'name' and 'sha256' are accepted here.")
    return (fields.get("name") or filename or default).strip()[:255] or default


def add_model_upload(
    *,
    session: Session,
    tenant_id: str,
    model_id: str,
    name: str,
    filename: str | None,
    size_bytes: int,
    sha256: str,
) -> Artifact:
    """Add an uploaded model archive as ``validating`` (flushed, not committed): the caller
    queues the job that imports it, links it with :func:`link_import` and commits both."""
    artifact = Artifact(
        id=model_id,
        tenant_id=tenant_id,
        category="model",
        name=name[:255],
        uri=layout.artifact("model", model_id),
        format="huggingface",
        status="validating",
        size_bytes=size_bytes,
        sha256=sha256,
        details={"upload": {"filename": filename, "size_bytes": size_bytes, "sha256": sha256}},
    )
    session.add(artifact)
    session.flush()
    return artifact


def link_import(artifact: Artifact, job_id: str) -> None:
    """Name the job that imports the upload, as its lineage too (its model came from it)."""
    artifact.job_id = job_id
    artifact.lineage = {"job_id": job_id}
