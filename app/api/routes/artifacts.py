"""Tokenizers and models: the same read-only shape, mounted twice.

No ``from __future__ import annotations`` here: FastAPI must resolve the per-router dependency
aliases defined inside ``make_router`` at import time.
"""

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response, StreamingResponse

from app.api import downloads
from app.api.deps import (
    ModelPageParams,
    PageParams,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from app.api.errors import ErrorResponse
from app.artifacts import service
from app.artifacts.schemas import ArtifactFile, ArtifactRead
from app.artifacts.tables import Artifact
from app.errors import NotFound
from app.jobs.schemas import Page

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
RANGES: dict[int | str, dict[str, Any]] = {
    206: {"description": "The byte range asked for (`Range`)"},
    416: {"model": ErrorResponse},
}
REDIRECT: dict[int | str, dict[str, Any]] = {
    307: {"description": "A short-lived presigned URL (when presigned downloads are on)"}
}


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
        response_class=StreamingResponse,
        responses={**NOT_FOUND, **RANGES, **REDIRECT},
        summary=f"Download one file of a {kind} (Range requests welcome)",
    )
    def download_artifact_file(
        artifact: ArtifactDep,
        request: Request,
        settings: SettingsDep,
        store: StoreDep,
        path: Annotated[str, Path(max_length=500)],
    ) -> Response:
        key, entry = service.file_entry(store=store, artifact=artifact, name=path)
        filename = path.rsplit("/", 1)[-1]
        redirect = downloads.presigned(settings, store, key, filename)
        if redirect is not None:
            return redirect
        download = downloads.stored_object(store, key, filename=None, sha256=entry.sha256)
        return downloads.respond(request, store, download)

    @router.get(
        "/{artifact_id}/content",
        response_class=StreamingResponse,
        responses={**NOT_FOUND, **RANGES},
        summary=f"Download a {kind} as a .tar archive (streamed, Range requests welcome)",
    )
    def download_artifact(artifact: ArtifactDep, request: Request, store: StoreDep) -> Response:
        pieces = service.tar_pieces(store=store, artifact=artifact)
        download = downloads.Download(
            pieces,
            media_type="application/x-tar",
            etag=downloads.etag_of(pieces),
            headers={"Content-Disposition": f'attachment; filename="{artifact.id}.tar"'},
        )
        return downloads.respond(request, store, download)

    return router


tokenizers = make_router("tokenizer", "tokenizers")
models = make_router("model", "models")
