"""Tokenizers and models: the same read-only shape, mounted twice.

No ``from __future__ import annotations`` here: FastAPI must resolve the per-router dependency
aliases defined inside ``make_router`` at import time.
"""

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from fastapi.responses import FileResponse, StreamingResponse

from app.api.deps import ModelPageParams, PageParams, SessionDep, StoreDep, TenantDep
from app.api.errors import ErrorResponse
from app.artifacts import service
from app.artifacts.schemas import ArtifactFile, ArtifactRead
from app.artifacts.tables import Artifact
from app.errors import NotFound
from app.jobs.schemas import Page

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def make_router(kind: str, plural: str) -> APIRouter:
    router = APIRouter(
        prefix=f"/{plural}", tags=[plural], responses={401: {"model": ErrorResponse}}
    )

    def valid(artifact_id: str, session: SessionDep, tenant_id: TenantDep) -> Artifact:
        if kind == "model":  # by id, or by the name a fine-tune is known by (ft:…)
            return service.find_model(session=session, tenant_id=tenant_id, model=artifact_id)
        return service.get_artifact(
            session=session, tenant_id=tenant_id, category=kind, artifact_id=artifact_id
        )

    ArtifactDep = Annotated[Artifact, Depends(valid)]
    Paging = Annotated[PageParams, Depends(ModelPageParams if kind == "model" else PageParams)]

    @router.get("", response_model=Page[ArtifactRead], summary=f"List {plural}, newest first")
    def list_artifacts(
        session: SessionDep, tenant_id: TenantDep, page: Paging
    ) -> Page[ArtifactRead]:
        after = page.after
        if after is not None and service.fine_tuned_by(after):  # a page may end with an ft: name
            with contextlib.suppress(NotFound):  # one deleted since sorts first: the list ends
                after = service.find_model(session=session, tenant_id=tenant_id, model=after).id
        rows, has_more = service.list_artifacts(
            session=session, tenant_id=tenant_id, category=kind, limit=page.limit, after=after
        )
        return Page[ArtifactRead](data=[service.to_read(r) for r in rows], has_more=has_more)

    @router.get(
        "/{artifact_id}", response_model=ArtifactRead, responses=NOT_FOUND, summary=f"Get a {kind}"
    )
    def read_artifact(artifact: ArtifactDep) -> ArtifactRead:
        return service.to_read(artifact)

    @router.get(
        "/{artifact_id}/files",
        response_model=Page[ArtifactFile],
        responses=NOT_FOUND,
        summary=f"List a {kind}'s files",
    )
    def list_artifact_files(artifact: ArtifactDep, store: StoreDep) -> Page[ArtifactFile]:
        return Page[ArtifactFile](
            data=service.list_files(store=store, artifact=artifact), has_more=False
        )

    @router.get(
        "/{artifact_id}/files/{path:path}",
        response_class=FileResponse,
        responses=NOT_FOUND,
        summary=f"Download one file of a {kind}",
    )
    def download_artifact_file(
        artifact: ArtifactDep, store: StoreDep, path: Annotated[str, Path(max_length=500)]
    ) -> FileResponse:
        return FileResponse(
            service.file_path(store=store, artifact=artifact, name=path),
            media_type="application/octet-stream",
        )

    @router.get(
        "/{artifact_id}/content",
        response_class=StreamingResponse,
        responses=NOT_FOUND,
        summary=f"Download a {kind} as a .tar archive (streamed)",
    )
    def download_artifact(artifact: ArtifactDep, store: StoreDep) -> StreamingResponse:
        return StreamingResponse(
            service.stream_tar(store=store, artifact=artifact),
            media_type="application/x-tar",
            headers={"Content-Disposition": f'attachment; filename="{artifact.id}.tar"'},
        )

    return router


tokenizers = make_router("tokenizer", "tokenizers")
models = make_router("model", "models")
