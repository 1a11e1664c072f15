"""OpenAI's files API over datasets: ``client.files.create(file=…, purpose="fine-tune")``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api import downloads
from app.api.deps import IdempotencyKey, SessionDep, SettingsDep, StoreDep, TenantDep
from app.api.errors import ErrorResponse
from app.api.routes import datasets as dataset_routes
from app.api.uploads import upload_body
from app.compat import schemas, service
from app.datasets import service as datasets
from app.errors import InvalidInput, NotFound
from app.flows import deletion, uploads

router = APIRouter(prefix="/files", tags=["openai"], responses={401: {"model": ErrorResponse}})
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


@router.post(
    "",
    response_model=schemas.FileObject,
    responses={400: {"model": ErrorResponse}, 413: {"model": ErrorResponse}},
    openapi_extra=dataset_routes.UPLOAD_BODY,
    summary="Upload a fine-tuning file (a dataset, validated in the background)",
)
async def create_file(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> schemas.FileObject:
    uploader = uploads.Uploader(
        session, settings, store, tenant_id, idempotency_key=idempotency_key
    )
    dataset, created = await uploads.upload_dataset(
        uploader, upload_body(request, settings.max_upload_bytes)
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    views = await run_in_threadpool(datasets.to_read, session, [dataset])
    return service.file_view(views[0])


@router.get("", response_model=schemas.ListPage, summary="List files, newest first")
def list_files(
    session: SessionDep,
    tenant_id: TenantDep,
    after: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 100,
) -> schemas.ListPage:
    rows, has_more = datasets.list_datasets(
        session=session, tenant_id=tenant_id, after=after, limit=limit
    )
    views = datasets.to_read(session, rows)
    return schemas.ListPage.of([service.file_view(v) for v in views], has_more=has_more)


def _file(file_id: str, session: SessionDep, tenant_id: TenantDep) -> schemas.FileObject:
    """The tenant's file (a dataset, or a job's result file); 404 the way OpenAI's API says it."""
    job = service.result_job(session=session, tenant_id=tenant_id, file_id=file_id)
    if job is not None:
        return service.result_file_view(job)
    try:
        dataset = datasets.get_dataset(session=session, tenant_id=tenant_id, dataset_id=file_id)
    except NotFound:
        raise service.file_not_found(file_id) from None
    return service.file_view(datasets.to_read(session, [dataset])[0])


FileDep = Annotated[schemas.FileObject, Depends(_file)]


@router.get(
    "/{file_id}", response_model=schemas.FileObject, responses=NOT_FOUND, summary="Get a file"
)
def read_file(file: FileDep) -> schemas.FileObject:
    return file


@router.get(
    "/{file_id}/content",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {
            "description": "The file's bytes (a metrics CSV for a result file)",
            "content": {"application/octet-stream": {}, "text/csv": {}},
        },
        206: {"description": "The byte range asked for (`Range`)"},
        307: {"description": "A short-lived presigned URL (when presigned downloads are on)"},
        416: {"model": ErrorResponse},
    },
    summary="Download a file's content",
)
def read_file_content(
    file: FileDep,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
) -> Response:
    job = service.result_job(session=session, tenant_id=tenant_id, file_id=file.id)
    if job is not None:
        return Response(service.result_csv(session=session, job=job), media_type="text/csv")
    dataset = datasets.get_dataset(session=session, tenant_id=tenant_id, dataset_id=file.id)
    redirect = downloads.presigned(settings, store, dataset.storage_key, file.filename)
    if redirect is not None:
        return redirect
    download = downloads.stored_object(
        store, dataset.storage_key, filename=file.filename, sha256=dataset.sha256
    )
    return downloads.respond(request, store, download)


@router.delete(
    "/{file_id}",
    response_model=schemas.FileDeleted,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}},
    summary="Delete a file (a job reading it keeps its bytes until it ends)",
)
def delete_file(
    file: FileDep, session: SessionDep, store: StoreDep, tenant_id: TenantDep
) -> schemas.FileDeleted:
    """Deleted at once, as OpenAI deletes: gone from the listing and from retrieve; a job that
    reads the file keeps its bytes until it ends, then they go too."""
    if file.purpose == "fine-tune-results":
        raise InvalidInput("Result files go with their job; they cannot be deleted.")
    try:
        deletion.delete_dataset(
            session=session, store=store, tenant_id=tenant_id, dataset_id=file.id, defer=True
        )
    except NotFound:  # deleted by a concurrent request
        raise service.file_not_found(file.id) from None
    return schemas.FileDeleted(id=file.id)
