"""``/v1/completions`` and ``/v1/chat/completions``: authenticated, tenant-checked, proxied.

The API never loads a model. It resolves the request's ``model`` (an id, or a fine-tune's
``ft:…`` name) to the tenant's own model, names its folders for the inference service
(``GRISTMILL_INFERENCE_URL``), and passes the answer through — a stream as Server-Sent Events,
chunk by chunk, closed upstream when the client goes away so generation stops.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, TenantDep
from app.api.errors import ErrorResponse
from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.db import find_owned
from app.errors import InvalidInput, ServiceUnavailable

log = logging.getLogger("gristmill.api")
router = APIRouter(tags=["openai"], responses={401: {"model": ErrorResponse}})
MAX_BODY_BYTES = 4 * 1024 * 1024
SERVED_FORMATS = ("huggingface", "peft-adapter", "gguf")
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 429, 503)
}
OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "required": ["model"]}}},
    }
}


def model_spec(*, session: SessionDep, tenant_id: str, model: str) -> dict[str, Any]:
    """Where the inference service finds the model: its folder's store key (the service resolves
    keys under its own store folder, never a path), or an adapter's and its base's; and
    its format, which picks the engine (transformers, or llama.cpp for a GGUF).

    Raises:
        NotFound: not one of the tenant's models.
        InvalidInput: not ready, or a format this service does not serve (GPTQ).
    """
    artifact = artifacts.find_model(session=session, tenant_id=tenant_id, model=model)
    artifacts.check_ready(artifact, param="model")
    if artifact.format not in SERVED_FORMATS:
        raise InvalidInput(
            f"Model '{model}' is {artifact.format}; the inference service serves Hugging Face "
            "models, LoRA adapters and GGUF files (download it to run it elsewhere).",
            code="model.not_servable",
            param="model",
        )
    spec: dict[str, Any] = {
        "id": model,
        "path": artifact.uri,
        "format": "gguf" if artifact.format == "gguf" else "huggingface",
    }
    if artifact.format == "peft-adapter":
        base_id = artifact.details.get("base_model_id")
        base = find_owned(session, Artifact, base_id, tenant_id=tenant_id) if base_id else None
        if base is None:
            raise InvalidInput(
                f"The base of adapter '{model}' no longer exists.", code="model.base_missing"
            )
        spec = {**spec, "path": base.uri, "adapter_path": spec["path"]}
    return spec


class _NonFinite(float):
    """What ``NaN``, ``Infinity`` and overflowing literals such as ``1e999`` parse to: Python's
    JSON parser takes them, but no JSON encoder will send them on (httpx refuses), so the API
    names the field instead of failing on the way to the inference service."""


def _parse_float(text: str) -> float:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(value)


def _non_finite_field(value: Any, path: str = "") -> str | None:
    """The dotted path of the first non-finite number in a parsed body, or None."""
    if isinstance(value, _NonFinite):
        return path or "body"
    items: Any = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        found = _non_finite_field(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


async def _proxy(
    request: Request,
    path: str,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: str,
) -> Response:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput("The request body is too large.", code="payload_too_large")
    try:
        body = json.loads(raw, parse_float=_parse_float, parse_constant=_NonFinite)
    except ValueError:
        raise InvalidInput("The request body is not valid JSON.", code="invalid_json") from None
    field = _non_finite_field(body)
    if field is not None:
        raise InvalidInput(f"'{field}' must be a finite number.", param=field)
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise InvalidInput("'model' (a string) is required.", param="model")
    spec = await run_in_threadpool(
        lambda: model_spec(session=session, tenant_id=tenant_id, model=body["model"])
    )
    session.close()  # no database connection is held while a generation streams
    client: httpx.AsyncClient = request.app.state.inference
    token = settings.inference_token
    upstream_request = client.build_request(
        "POST",
        f"{settings.inference_url}{path}",
        json={**body, "model": spec},
        headers={
            "X-Gristmill-Tenant": tenant_id,  # the service's per-tenant share
            **({"Authorization": f"Bearer {token}"} if token else {}),
        },
    )
    try:
        upstream = await client.send(upstream_request, stream=True)
    except httpx.TransportError:
        raise ServiceUnavailable(
            "The inference service is unavailable; retry shortly.", code="inference_unavailable"
        ) from None
    if upstream.status_code == 401:  # the two sides disagree on GRISTMILL_INFERENCE_TOKEN
        await upstream.aclose()
        log.error("the inference service refused the API's token (GRISTMILL_INFERENCE_TOKEN)")
        raise ServiceUnavailable(
            "The inference service is unavailable; retry shortly.", code="inference_unavailable"
        )
    headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
    if upstream.headers.get("content-type", "").startswith("text/event-stream"):

        async def passthrough() -> AsyncIterator[bytes]:
            async for chunk in upstream.aiter_raw():
                yield chunk

        return StreamingResponse(
            passthrough(),
            status_code=upstream.status_code,
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache"},
            background=BackgroundTask(upstream.aclose),
        )
    content = await upstream.aread()
    await upstream.aclose()
    return Response(
        content, status_code=upstream.status_code, media_type="application/json", headers=headers
    )


@router.post(
    "/completions",
    response_class=JSONResponse,
    openapi_extra=OPENAPI_BODY,
    responses=RESPONSES,
    summary="Complete a prompt with one of your models (OpenAI's completions API)",
)
async def create_completion(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
) -> Response:
    return await _proxy(request, "/v1/completions", session, settings, tenant_id)


@router.post(
    "/chat/completions",
    response_class=JSONResponse,
    openapi_extra=OPENAPI_BODY,
    responses=RESPONSES,
    summary="Chat with one of your models, its chat template applied (OpenAI's chat API)",
)
async def create_chat_completion(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    tenant_id: TenantDep,
) -> Response:
    return await _proxy(request, "/v1/chat/completions", session, settings, tenant_id)
