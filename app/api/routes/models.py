"""``POST /v1/models``: bring a model of your own (reading models is in ``artifacts``)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from app.api.deps import IdempotencyKey, ModelDep, SessionDep, SettingsDep, StoreDep, TenantDep
from app.api.errors import ErrorResponse
from app.api.uploads import upload_body
from app.artifacts import service
from app.artifacts.schemas import ArtifactRead
from app.compat.schemas import ModelDeleted
from app.flows import deletion, uploads

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
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ArtifactRead:
    """Safetensors only: pickled weights are refused and never loaded (`validating` → `ready`).
    Same Idempotency-Key and archive, same model."""
    uploader = uploads.Uploader(
        session, settings, store, tenant_id, idempotency_key=idempotency_key
    )
    body = upload_body(request, settings.max_upload_bytes)
    artifact, created = await uploads.upload_model(uploader, body)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return service.to_read(artifact)


# Model names may hold '/' (``org/name`` style ids): matched last, after the id routes.
by_name = APIRouter(prefix="/models", tags=["models"], responses={401: {"model": ErrorResponse}})


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
    model_id = service.public_id(artifact)  # a fine-tune's ft: name, as OpenAI answers
    deletion.delete_model(session=session, store=store, artifact=artifact)
    return ModelDeleted(id=model_id)
