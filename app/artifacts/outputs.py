"""What a job hands over to become, or to complete, a tokenizer or model of the tenant.

Every output type has the same three steps (the protocol in ``workers/handlers/base.py``), so the
runner handles outputs without knowing their types: ``place`` puts the files in the store before
the job's final transaction; the placed output ``record``\\ s its row in that transaction, so an
artifact exists exactly when its job succeeded; if the transaction does not happen (the job was
cancelled while finishing, or another attempt owns it now) it is ``discard``\\ ed instead.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app import layout
from app.artifacts.service import Category, write_manifest
from app.artifacts.tables import Artifact
from app.storage import Store, publish_folder


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

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> PlacedArtifact:
        """Move (or copy) the folder into the store, its ``manifest.json`` written first: a
        rename on the local folder, an upload on object storage (complete once the store's own
        folder manifest lands, after every file)."""
        key = layout.artifact(self.category, self.id)
        folder = self.folder
        if self.copy:  # a copy beside the source, on the same filesystem as the store's folder
            folder = self.folder.with_name(f"{self.folder.name}.{self.id}")
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(self.folder, folder)
        size, digest = write_manifest(folder)
        publish_folder(store, key, folder)
        row = Artifact(
            id=self.id,
            tenant_id=tenant_id,
            job_id=job_id,
            category=self.category,
            name=self.name[:255],
            uri=key,
            format=self.format,
            size_bytes=size,
            sha256=digest,
            lineage={k: v for k, v in self.lineage.items() if v is not None},
            details=dict(self.details),
        )
        return PlacedArtifact(row)


@dataclass(frozen=True)
class PlacedArtifact:
    """An artifact whose files are in the store; its row is not written yet."""

    row: Artifact

    def record(self, *, session: Session) -> None:
        session.add(self.row)

    def discard(self, *, store: Store) -> None:
        store.delete(self.row.uri)


@dataclass(frozen=True)
class ImportVerdict:
    """What importing an uploaded model found: its unpacked folder, or why it was refused."""

    artifact_id: str
    folder: Path | None
    details: Mapping[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    format: str = "huggingface"
    """What import found the weights to be (``gptq`` for a GPTQ model): jobs check it."""

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> PlacedImport:
        """Put an accepted model's files in its folder, replacing the archive (which goes
        either way); published before the archive is dropped, so a failed upload can retry."""
        key = layout.artifact("model", self.artifact_id)
        if self.folder is None:  # a refused model keeps no folder and counts no bytes
            store.delete(key)
            values = {"status": "failed", "errors": self.errors or [], "size_bytes": 0}
            return PlacedImport(self.artifact_id, values)
        size, digest = write_manifest(self.folder)
        publish_folder(store, key, self.folder)
        store.delete(layout.model_upload(self.artifact_id))
        values = {"status": "ready", "format": self.format, "size_bytes": size, "sha256": digest}
        return PlacedImport(self.artifact_id, {**values, "details": dict(self.details)})


@dataclass(frozen=True)
class PlacedImport:
    """An imported model's files in its folder, and the row values its verdict sets."""

    artifact_id: str
    values: Mapping[str, Any]

    def record(self, *, session: Session) -> None:
        artifact = session.get_one(Artifact, self.artifact_id)
        details = {**artifact.details, **self.values.get("details", {})}
        for name, value in {**self.values, "details": details}.items():
            setattr(artifact, name, value)

    def discard(self, *, store: Store) -> None:
        """Nothing to undo: the files sit in the model's own folder (its delete removes them),
        and without the verdict the model stays ``validating``, as it was."""
