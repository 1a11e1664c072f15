"""Tokenizers and models: folders in the store, registered with a manifest and their lineage."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, exists, select
from sqlalchemy.orm import Session

from app import layout
from app.artifacts.schemas import ArtifactFile, ArtifactRead, Lineage
from app.artifacts.tables import Artifact
from app.db import paginate
from app.errors import InvalidInput, NotFound
from app.ids import new_id
from app.jobs import service as jobs
from app.jobs.states import FINAL_STATES
from app.jobs.tables import Job, JobInput
from app.storage import CHUNK, LocalStore, sha256_of

Category = Literal["tokenizer", "model"]
PREFIXES: dict[Category, str] = {"tokenizer": "tok", "model": "mdl"}
MANIFEST = "manifest.json"


def new_artifact_id(category: Category) -> str:
    return new_id(PREFIXES[category])


@dataclass(frozen=True)
class NewArtifact:
    """A finished folder a job hands over to become a registered tokenizer or model.

    ``format`` says how to read it (``huggingface``, ``peft-adapter``, ``gguf``, ``gptq``, ...).
    ``copy`` keeps the source folder in place, for a job that still reads it.
    """

    id: str
    category: Category
    folder: Path
    name: str
    format: str = "huggingface"
    lineage: Mapping[str, str | None] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    copy: bool = False


def place_artifact(
    *, store: LocalStore, tenant_id: str, job_id: str | None, output: NewArtifact
) -> Artifact:
    """Move (or copy) the folder into the store; the returned row is added by the caller in the
    transaction that finishes the job, so an artifact exists exactly when its job succeeded."""
    key = layout.artifact(output.category, output.id)
    target = store.local_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if output.copy:
        shutil.copytree(output.folder, target)
    else:
        shutil.move(output.folder, target)
    size, digest = write_manifest(target)
    return Artifact(
        id=output.id,
        tenant_id=tenant_id,
        job_id=job_id,
        category=output.category,
        name=output.name[:255],
        uri=key,
        format=output.format,
        size_bytes=size,
        sha256=digest,
        lineage={k: v for k, v in output.lineage.items() if v is not None},
        details=dict(output.details),
    )


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
        object=artifact.category,
        name=artifact.name,
        status=artifact.status,
        format=artifact.format,
        size_bytes=artifact.size_bytes,
        sha256=artifact.sha256,
        lineage=Lineage(**artifact.lineage),
        details=artifact.details,
        errors=artifact.errors,
        created_at=artifact.created_at,
        created=int(artifact.created_at.timestamp()),
        owned_by=artifact.tenant_id,
    )


def get_artifact(*, session: Session, tenant_id: str, category: str, artifact_id: str) -> Artifact:
    """The tenant's artifact of this category: another tenant's looks exactly like a missing one.

    Raises:
        NotFound: no such artifact for this tenant.
    """
    artifact = session.get(Artifact, artifact_id)
    if artifact is None or artifact.tenant_id != tenant_id or artifact.category != category:
        raise NotFound(f"No {category} with id '{artifact_id}'.", code=f"{category}.not_found")
    return artifact


def find_model(*, session: Session, tenant_id: str, model: str) -> Artifact:
    """A model by id or by name (``ft:<base>:<suffix>:<job>``): the OpenAI surface names fine-tunes.

    Raises:
        NotFound: no such model for this tenant.
    """
    artifact = session.get(Artifact, model)
    if artifact is None or artifact.category != "model" or artifact.tenant_id != tenant_id:
        artifact = session.scalar(
            select(Artifact)
            .where(
                Artifact.tenant_id == tenant_id,
                Artifact.category == "model",
                Artifact.name == model,
            )
            .order_by(Artifact.id.desc())
            .limit(1)
        )
    if artifact is None:
        raise NotFound(
            f"The model '{model}' does not exist.", code="model_not_found", param="model"
        )
    return artifact


def delete_model(*, session: Session, store: LocalStore, artifact: Artifact) -> None:
    """Delete a model and its files, unless a job that has not finished reads it.

    Raises:
        InvalidInput: a queued or running job uses it (wait or cancel it first).
    """
    busy = session.scalar(
        select(exists().where(
            JobInput.object_id == artifact.id,
            JobInput.job_id == Job.id,
            Job.status.not_in([s.value for s in FINAL_STATES]),
        ))
    )  # fmt: skip
    if busy:
        raise InvalidInput(
            f"Model '{artifact.id}' is used by a job that has not finished; cancel it or wait.",
            code="model.in_use",
            param="model",
        )
    uri = artifact.uri
    session.execute(delete(JobInput).where(JobInput.object_id == artifact.id))
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


def list_files(*, store: LocalStore, artifact: Artifact) -> list[ArtifactFile]:
    """The files of a ready artifact (one still validating, or refused, has none to offer)."""
    path = store.local_path(artifact.uri) / MANIFEST
    if artifact.status != "ready" or not path.exists():
        return []
    return [ArtifactFile(**entry) for entry in json.loads(path.read_text())]


def file_path(*, store: LocalStore, artifact: Artifact, name: str) -> Path:
    """One file of the artifact, only if the manifest lists it (no path games)."""
    if name not in {f.path for f in list_files(store=store, artifact=artifact)}:
        raise NotFound(f"No file '{name}' in {artifact.id}.", code="file.not_found", param="path")
    return store.local_path(artifact.uri) / name


def stream_tar(*, store: LocalStore, artifact: Artifact) -> Iterator[bytes]:
    """A ``.tar`` of the artifact folder, produced file by file: memory stays flat.

    Raises:
        NotFound: the artifact is not ready (nothing to download yet, or it was refused); raised
            before the first byte, so the caller answers with a clean error.
    """
    if artifact.status != "ready":
        raise NotFound(
            f"{artifact.category.title()} '{artifact.id}' is {artifact.status}: nothing to "
            "download.",
            code=f"{artifact.category}.not_ready",
        )
    names = [f.path for f in list_files(store=store, artifact=artifact)] + [MANIFEST]
    return _tar_chunks(store.local_path(artifact.uri), artifact.id, names)


def _tar_chunks(folder: Path, root: str, names: list[str]) -> Iterator[bytes]:
    for name in names:
        path = folder / name
        info = tarfile.TarInfo(f"{root}/{name}")
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


def check_ready(artifact: Artifact, *, param: str) -> None:
    """Raises InvalidInput unless the artifact passed validation (a job may read it)."""
    if artifact.status != "ready":
        raise InvalidInput(
            f"{artifact.category.title()} '{artifact.id}' is {artifact.status}, not ready.",
            code=f"{artifact.category}.not_ready",
            param=param,
        )


def register_model_upload(
    *,
    session: Session,
    tenant_id: str,
    model_id: str,
    name: str,
    filename: str | None,
    size_bytes: int,
    sha256: str,
    max_attempts: int,
) -> tuple[Artifact, Job]:
    """Record an uploaded model archive as ``validating`` with the job that imports it."""
    job = jobs.add_job(
        session=session,
        tenant_id=tenant_id,
        job_type="import_model",  # created by the service only (not submittable)
        params={"model_id": model_id},
        queue="cpu",
        max_attempts=max_attempts,
        inputs=[model_id],
    )
    artifact = Artifact(
        id=model_id,
        tenant_id=tenant_id,
        job_id=job.id,
        category="model",
        name=name[:255],
        uri=layout.artifact("model", model_id),
        format="huggingface",
        status="validating",
        size_bytes=size_bytes,
        sha256=sha256,
        lineage={"job_id": job.id},
        details={"upload": {"filename": filename, "size_bytes": size_bytes, "sha256": sha256}},
    )
    session.add(artifact)
    session.commit()
    return artifact, job


@dataclass(frozen=True)
class ImportVerdict:
    """What importing an uploaded model found: its unpacked folder, or why it was refused."""

    artifact_id: str
    folder: Path | None
    details: Mapping[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None


def place_import(*, store: LocalStore, verdict: ImportVerdict) -> dict[str, Any]:
    """Move an accepted model's files into its folder (the archive is dropped); return the row
    values the finishing transaction writes."""
    folder = store.local_path(layout.artifact("model", verdict.artifact_id))
    store.delete(layout.model_upload(verdict.artifact_id))
    if verdict.folder is None:
        return {"status": "failed", "errors": verdict.errors or []}
    folder.mkdir(parents=True, exist_ok=True)
    for item in verdict.folder.iterdir():
        shutil.move(item, folder / item.name)
    size, digest = write_manifest(folder)
    return {
        "status": "ready",
        "size_bytes": size,
        "sha256": digest,
        "details": dict(verdict.details),
    }


def record_import(*, session: Session, artifact_id: str, values: Mapping[str, Any]) -> None:
    artifact = session.get_one(Artifact, artifact_id)
    details = {**artifact.details, **values.get("details", {})}
    for name, value in {**values, "details": details}.items():
        setattr(artifact, name, value)
