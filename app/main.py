"""The FastAPI application: routers under ``/v1``, one error mapping, offline docs, metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import fastapi_offline
import httpx
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.api import errors, observability
from app.api.auth_cache import AuthCache
from app.api.errors import OPENAI_PATHS
from app.api.limits import FailureThrottle
from app.api.middleware import PUBLIC_PATHS, UPLOAD_PATHS, EdgeGate
from app.api.routes import (
    artifacts,
    comparisons,
    completions,
    datasets,
    files,
    fine_tuning,
    health,
    jobs,
    judges,
    keys,
    models,
    secrets,
)
from app.broker import enqueue
from app.db import make_engine, make_session_factory
from app.flows.housekeeping import ReaperThread
from app.settings import Settings, get_settings
from app.storage import open_configured_store

DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

DESCRIPTION = """Self-hosted training-as-a-service for language models.

Authenticate with `Authorization: Bearer <key>` (the embedded server prints a key on first start
and keeps it in `<data dir>/api-key`). Errors are `{"error": {"message", "type", "param", "code"}}`.
"""


def create_app(settings: Settings | None = None, *, run_reaper: bool = True) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
    )
    factory = make_session_factory(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One pooled client for the inference service: reads wait on generation, not on us.
        timeout = httpx.Timeout(settings.inference_timeout_seconds, connect=5.0)
        app.state.inference = httpx.AsyncClient(timeout=timeout)
        reaper = None
        if run_reaper:
            reaper = ReaperThread(factory, settings, enqueue)
            reaper.start()
        yield
        if reaper is not None:
            reaper.stop()
        await app.state.inference.aclose()
        engine.dispose()

    app = FastAPI(
        title="Gristmill",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        generate_unique_id_function=lambda r: f"{r.tags[0]}-{r.name}" if r.tags else r.name,
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.store = open_configured_store(settings)
    # Shared by the edge gate and the key routes, which drop a key they revoke at once.
    app.state.auth_cache = AuthCache(settings.auth_cache_seconds)
    errors.install(app)
    # Added first, so it runs inside the observer: its refusals get a request id and a log line.
    # Shared by the edge gate and the rater page: failed invite-token lookups per address.
    app.state.rater_failures = FailureThrottle(
        settings.rater_failure_limit, settings.resolved_rate_limit_storage_url
    )
    app.add_middleware(
        EdgeGate, settings=settings, factory=factory, auth_cache=app.state.auth_cache,
        rater_failures=app.state.rater_failures,
    )  # fmt: skip
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    observability.install(app, factory, metrics_token=token)
    for router in (
        health.router,
        jobs.router,
        datasets.router,
        artifacts.tokenizers,
        models.router,
        artifacts.models,
        models.by_name,
        files.router,
        fine_tuning.router,
        completions.router,
        comparisons.router,
        judges.router,
        keys.router,
        secrets.router,
    ):
        app.include_router(router, prefix="/v1")
    app.include_router(comparisons.page)
    _install_docs(app)
    _document_edge(app)
    return app


def _document_edge(app: FastAPI) -> None:
    """Add what the edge gate (``app.api.middleware``) answers to every operation's OpenAPI entry:
    429 and 503 anywhere behind a key, 403 (quotas) on submissions and uploads, 408/413 on
    bodies; and that an Idempotency-Key is never empty."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        error = {"$ref": "#/components/schemas/ErrorResponse"}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/v1/") or path in PUBLIC_PATHS:
                continue
            for method, operation in operations.items():
                codes = ["401", "429", "503"]
                if path.startswith(OPENAI_PATHS) or path.endswith("/metrics"):
                    codes.append("400")  # the OpenAI surface answers 400 where others say 422
                if method in ("post", "put", "patch"):
                    codes += ["408", "413", "422"]
                if method == "post" and (path in UPLOAD_PATHS or path.endswith("jobs")):
                    codes.append("403")
                responses = operation.setdefault("responses", {})
                for code in codes:
                    responses.setdefault(
                        code,
                        {
                            "description": HTTPStatus(int(code)).phrase,
                            "content": {"application/json": {"schema": error}},
                        },
                    )
                for parameter in operation.get("parameters", []):
                    if parameter.get("name", "").lower() == "idempotency-key":
                        parameter["schema"] = {"type": "string", "minLength": 1, "maxLength": 255}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_docs(app: FastAPI) -> None:
    """Swagger UI and ReDoc served from an installed package: the docs work with no internet."""
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Gristmill API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title="Gristmill API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/docs-assets/favicon.png",
            with_google_fonts=False,
        )
