"""``POST /v1/models``: bring a model of your own (reading models is in ``artifacts``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from starlette.concurrency import run_in_threadpool

from app import layout
from app.api import uploads
from app.api.deps import SessionDep, SettingsDep, StoreDep, TenantDep
from app.api.errors import ErrorResponse
from app.artifacts import service
from app.artifacts.schemas import ArtifactRead
from app.artifacts.tables import Artifact
from app.broker import enqueue
from app.compat.schemas import ModelDeleted
from app.errors import InvalidInput

router = APIRouter(prefix="/models", tags=["models"], responses={401: {"model": ErrorResponse}})

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".tar, .tar.gz or .zip of a Hugging Face model folder "
                            "(config.json, safetensors weights, tokenizer files)",
                        },
                        "name": {"type": "string", "maxLength": 255},
                        "sha256": {"type": "string", "description": "Checked against the upload"},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ArtifactRead,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
    openapi_extra=UPLOAD_BODY,
    summary="Upload a model (multipart, streamed); it is checked before it is ready",
)
async def create_model(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
) -> ArtifactRead:
    """Safetensors only: pickled weights are refused and never loaded (`validating` → `ready`)."""
    limit = settings.max_upload_bytes
    check_quota = uploads.quota_check(session, settings, tenant_id)
    await check_quota(uploads.declared_size(request, limit))
    model_id = service.new_artifact_id("model")
    try:
        key = layout.model_upload(model_id)
        received, writer = await uploads.receive_file(request, store, key, limit, code="model")
        fields = received.fields
        if set(fields) - {"name", "sha256"}:
            raise InvalidInput("Only 'file', 'name' and 'sha256' are accepted here.")
        name = (fields.get("name") or received.filename or model_id).strip()[:255] or model_id
        await check_quota(writer.size)
        artifact, job = await run_in_threadpool(
            lambda: service.register_model_upload(
                session=session,
                tenant_id=tenant_id,
                model_id=model_id,
                name=name,
                filename=received.filename,
                size_bytes=writer.size,
                sha256=writer.sha256,
                max_attempts=settings.max_attempts,
            )
        )
    except BaseException:
        store.delete(layout.artifact("model", model_id))
        raise
    enqueue(job.id, job.queue)
    return service.to_read(artifact)


# Model names may hold '/' (``org/name`` style ids): matched last, after the id routes.
by_name = APIRouter(prefix="/models", tags=["models"], responses={401: {"model": ErrorResponse}})


def _model(model: str, session: SessionDep, tenant_id: TenantDep) -> Artifact:
    return service.find_model(session=session, tenant_id=tenant_id, model=model)


ModelDep = Annotated[Artifact, Depends(_model)]


@by_name.get("/{model:path}", response_model=ArtifactRead, include_in_schema=False)
def read_model_by_name(artifact: ModelDep) -> ArtifactRead:
    return service.to_read(artifact)


@by_name.delete(
    "/{model:path}",
    response_model=ModelDeleted,
    responses={404: {"model": ErrorResponse}, 400: {"model": ErrorResponse}},
    summary="Delete one of your models (refused while a job uses it)",
)
def delete_model(artifact: ModelDep, session: SessionDep, store: StoreDep) -> ModelDeleted:
    model_id = artifact.id
    service.delete_model(session=session, store=store, artifact=artifact)
    return ModelDeleted(id=model_id)
