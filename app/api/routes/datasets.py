from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api import downloads
from app.api.deps import (
    DatasetDep,
    IdempotencyKey,
    PageDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from app.api.errors import ErrorResponse
from app.api.uploads import upload_body
from app.datasets import service
from app.datasets.schemas import DatasetRead, DatasetReport
from app.flows import deletion, uploads
from app.jobs.schemas import Page

router = APIRouter(prefix="/datasets", tags=["datasets"], responses={401: {"model": ErrorResponse}})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


TEXT_PATTERN = r"^[^\u0000]*\S[^\u0000]*$"  # something besides spaces, and no NUL
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 255,
                            "pattern": TEXT_PATTERN,
                        },
                        "split": {"type": "string", "enum": list(service.SPLITS)},
                        "column": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 200,
                            "pattern": TEXT_PATTERN,
                            "description": "CSV/Parquet text column",
                        },
                        "sha256": {
                            "type": "string",
                            "pattern": "^[0-9a-fA-F]{64}$",
                            "description": "Checked against the upload",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DatasetRead,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
    openapi_extra=UPLOAD_BODY,
    summary="Upload a dataset (multipart, streamed)",
)
async def create_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> DatasetRead:
    """Stream the file to storage, then validate it in the background (`validating` → `ready`).
    Same Idempotency-Key and file, same dataset."""
    uploader = uploads.Uploader(
        session, settings, store, tenant_id, idempotency_key=idempotency_key
    )
    dataset, created = await uploads.upload_dataset(
        uploader, upload_body(request, settings.max_upload_bytes)
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    views = await run_in_threadpool(service.to_read, session, [dataset])
    return views[0]


@router.get("", response_model=Page[DatasetRead], summary="List datasets, newest first")
def list_datasets(session: SessionDep, tenant_id: TenantDep, page: PageDep) -> Page[DatasetRead]:
    rows, has_more = service.list_datasets(
        session=session, tenant_id=tenant_id, limit=page.limit, after=page.after
    )
    return Page[DatasetRead](data=service.to_read(session, rows), has_more=has_more)


@router.get(
    "/{dataset_id}", response_model=DatasetRead, responses=NOT_FOUND, summary="Get a dataset"
)
def read_dataset(dataset: DatasetDep, session: SessionDep) -> DatasetRead:
    return service.to_read(session, [dataset])[0]


@router.get(
    "/{dataset_id}/content",
    response_class=StreamingResponse,
    responses={
        **NOT_FOUND,
        206: {"description": "The byte range asked for (`Range`)"},
        307: {"description": "A short-lived presigned URL (when presigned downloads are on)"},
        416: {"model": ErrorResponse},
    },
    summary="Download a dataset's bytes (Range requests welcome)",
)
def download_dataset(
    dataset: DatasetDep, request: Request, settings: SettingsDep, store: StoreDep
) -> Response:
    filename = dataset.filename or f"{dataset.id}.bin"
    redirect = downloads.presigned(settings, store, dataset.storage_key, filename)
    if redirect is not None:
        return redirect
    download = downloads.stored_object(
        store,
        dataset.storage_key,
        filename=filename,
        sha256=dataset.sha256,
        headers={"X-Content-SHA256": dataset.sha256},
    )
    return downloads.respond(request, store, download)


@router.get(
    "/{dataset_id}/report",
    response_model=DatasetReport,
    responses=NOT_FOUND,
    summary="What validation and preparation found",
)
def read_dataset_report(dataset: DatasetDep, session: SessionDep, store: StoreDep) -> DatasetReport:
    view = service.to_read(session, [dataset])[0]
    validation = {
        "format": view.format,
        "compression": view.compression,
        "record_type": view.record_type,
        "records": view.records,
        "text_bytes": view.text_bytes,
        "errors": view.errors or [],
    }
    return DatasetReport(
        dataset_id=dataset.id,
        status=view.status,
        validation=validation,
        preparation=service.read_report(store=store, dataset=dataset),
    )


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse}},
    summary="Delete a dataset",
)
def delete_dataset(
    dataset: DatasetDep, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> None:
    """Refused while a queued or running job reads it."""
    deletion.delete_dataset(
        session=session, store=store, tenant_id=tenant_id, dataset_id=dataset.id
    )
