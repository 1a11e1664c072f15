"""The inference HTTP service: ``/v1/completions``, ``/v1/chat/completions``, ``/health``.

Request bodies are OpenAI's, except that ``model`` is an object naming folders on the shared
store (the API resolves and authorises the tenant's model id before forwarding).

Concurrency. Each generation runs in a thread of its own and hands its deltas to the event loop,
so the loop stays free to answer health checks and refuse excess load. At most ``concurrency``
generations run at once (a slot is held until the thread really ends, even after a cancel). The
running generations of one transformers model share its batch (``max_batch`` rows, joined and
left between tokens: :mod:`inference.batching`); a llama.cpp model runs ``gguf_parallel``
at once, and a request waiting for one of its contexts counts as waiting in ``/health``.
``queue_size`` more requests may wait for a slot; beyond that the answer is 429 with
``Retry-After`` at once, never a hang. One tenant (named by the API in ``X-Gristmill-Tenant``)
may hold at most ``tenant_limit`` of those running and waiting places, so its burst is answered
429 while other tenants still get in. A request gets ``request_timeout_seconds`` for waiting and
generating together; past it the generation stops (504). A client that disconnects stops its
generation, and frees its place in the batch, at the next token. A chat's template is tenant
input: it is rendered after admission but before the request waits for a slot, in a sandboxed
child process on a time, size and memory budget (:mod:`inference.templates`), so a template
that loops or grows fails its own request (422 ``template.*``) and holds no slot.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from app.store import StorageConfigError, StorageUnavailable
from app.store.settings import StorageSettings
from inference.engine import (
    Engine,
    GenerationStream,
    InferenceError,
    collect,
)
from inference.folders import ModelFolders, open_model_folders
from inference.protocol import (
    ChatRequest,
    ChunkWriter,
    CompletionRequest,
    completion_body,
    error_body,
)
from inference.scheduler import QueueFull, RequestTimeout, Run, Scheduler, Stats, TenantQueueFull
from inference.settings import InferenceSettings
from inference.templates import TemplateRenderer, render_chat

TENANT_HEADER = "X-Gristmill-Tenant"
"""Whose request this is, as the API (which holds the token) says: the per-tenant key."""


class Unauthenticated(Exception):
    """The caller did not present the service's token."""


async def _watch_disconnect(request: Request, cancel: threading.Event) -> None:
    """The body is read already, so the next ASGI message is the client going away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel.set()
            return


def _sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def create_app(
    settings: InferenceSettings, engine: Engine | None = None, folders: ModelFolders | None = None
) -> FastAPI:
    """The service's app. ``engine`` defaults to transformers for Hugging Face models and
    llama.cpp for GGUF ones, sharing the settings' memory budget; ``folders`` (where the
    models' store keys are read) defaults to the settings' ``model_root``."""
    the_folders = folders if folders is not None else ModelFolders(settings.model_root)
    if engine is None:
        from inference.engines import default_engine

        engine = default_engine(settings)
    the_engine: Engine = engine
    # A request holding a slot while it waits for an engine's own capacity (a free llama.cpp
    # context) is waiting, not running, in what /health reports.
    queued: Any = getattr(engine, "queued", lambda: 0)
    scheduler = Scheduler(settings.concurrency, settings.queue_size, settings.tenant_limit)
    stats = Stats()
    renderer = TemplateRenderer(
        workers=settings.template_workers,
        timeout_seconds=settings.template_timeout_seconds,
        max_chars=settings.template_max_chars,
        memory_bytes=settings.template_memory_bytes,
        threads=settings.concurrency + settings.queue_size,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        renderer.close()
        the_folders.close()

    app = FastAPI(title="Gristmill inference", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine = the_engine
    app.state.renderer = renderer
    app.state.scheduler = scheduler
    app.state.stats = stats
    app.state.settings = settings
    app.state.folders = the_folders

    async def authenticate(request: Request) -> None:
        """Only the API, which checked the tenant owns the model, may ask for a generation."""
        if settings.token is None:
            return
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {settings.token}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Unauthenticated

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(_: Request, __: Unauthenticated) -> JSONResponse:
        return JSONResponse(
            error_body(
                "this service answers the Gristmill API only (Authorization: Bearer <token>)",
                type_="authentication_error",
                code="invalid_service_token",
                param=None,
            ),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid request')}"
        return JSONResponse(
            error_body(
                message, type_="invalid_request_error", code="invalid_request", param=".".join(loc)
            ),
            status_code=400,
        )

    @app.exception_handler(InferenceError)
    async def _refused(_: Request, exc: InferenceError) -> JSONResponse:
        kind = {404: "not_found_error", 500: "server_error"}.get(
            exc.status, "invalid_request_error"
        )
        return JSONResponse(
            error_body(exc.message, type_=kind, code=exc.code, param=exc.param),
            status_code=exc.status,
        )

    @app.exception_handler(QueueFull)
    async def _full(_: Request, exc: QueueFull) -> JSONResponse:
        stats.rejected += 1
        mine = isinstance(exc, TenantQueueFull)
        return JSONResponse(
            error_body(
                "you have as many completions running and waiting as one tenant may; retry "
                "when one ends"
                if mine
                else "the inference queue is full; retry shortly",
                type_="rate_limit_error",
                code="tenant_queue_full" if mine else "queue_full",
                param=None,
            ),
            status_code=429,
            headers={"Retry-After": str(settings.retry_after_seconds)},
        )

    @app.exception_handler(StorageUnavailable)
    async def _storage_down(_: Request, exc: StorageUnavailable) -> JSONResponse:
        return JSONResponse(
            error_body(
                "the model store is unreachable; retry shortly",
                type_="server_error",
                code=exc.code,
                param="model",
            ),
            status_code=503,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(RequestTimeout)
    async def _timeout(_: Request, __: RequestTimeout) -> JSONResponse:
        return JSONResponse(
            error_body(
                f"the request took longer than {settings.request_timeout_seconds:g} s",
                type_="timeout_error",
                code="timeout",
                param=None,
            ),
            status_code=504,
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        cache = getattr(the_engine, "cache", None)
        return {
            "status": "ok",
            "running": scheduler.running - queued(),
            "waiting": scheduler.admitted - scheduler.running + queued(),
            "loaded_models": len(cache.keys(children=False)) if cache is not None else None,
            "loaded_adapters": len(cache.keys(parents=False)) if cache is not None else None,
            "memory_used_bytes": cache.used_bytes if cache is not None else None,
            "memory_budget_bytes": settings.memory_budget_bytes,
            "stats": vars(stats),
            "templates_killed": renderer.killed,
            "store_downloads": the_folders.downloads,
        }

    async def respond(
        request: Request,
        body: CompletionRequest | ChatRequest,
        chat: bool,
    ) -> Any:
        generation = body.generation()
        if generation.params.n > settings.max_n:
            raise InferenceError(f"n may be at most {settings.max_n}", param="n")
        model = await the_folders.ref(body.model)
        tenant = request.headers.get(TENANT_HEADER) or None
        scheduler.admit(tenant)
        deadline = time.monotonic() + settings.request_timeout_seconds
        try:  # a tenant's template renders in a child, on its budget, before any slot is taken
            if generation.messages is not None:
                generation = await render_chat(
                    the_engine, renderer, model, generation, deadline, tenant
                )
        except BaseException:
            scheduler.leave(tenant)
            raise
        run = Run(the_engine, scheduler, stats, model, generation, deadline, tenant)
        want_logprobs = generation.params.logprobs is not None
        watcher = asyncio.create_task(_watch_disconnect(request, run.cancel))
        try:
            prompt_tokens = await run.start()
        except BaseException:
            run.cancel.set()
            watcher.cancel()
            raise
        if not body.stream:
            try:
                stream = GenerationStream(body.model.id, prompt_tokens, iter(()))
                deltas = [d async for d in run.deltas()]
                stream.deltas = iter(deltas)
                result = collect(stream, generation.params.n)
            finally:
                run.cancel.set()  # a no-op when it finished; stops it on timeout or error
                watcher.cancel()
            return JSONResponse(completion_body(result, chat, want_logprobs))
        watcher.cancel()  # StreamingResponse watches for the disconnect itself

        async def events() -> AsyncIterator[bytes]:
            writer = ChunkWriter(body.model.id, chat, generation.params.n, want_logprobs)
            completion_tokens = 0
            try:
                for chunk in writer.opening(generation.params.n):
                    yield _sse(chunk)
                async for delta in run.deltas():
                    completion_tokens += delta.tokens
                    for chunk in writer.delta(delta):
                        yield _sse(chunk)
                if body.include_usage:
                    yield _sse(writer.usage(prompt_tokens, completion_tokens))
            except (InferenceError, RequestTimeout) as exc:
                # Headers are gone; OpenAI reports mid-stream errors as an error event.
                message = getattr(exc, "message", "the request timed out")
                yield _sse(
                    error_body(message, type_="server_error", code="stream_error", param=None)
                )
            finally:
                # Runs on normal end, on error, and when Starlette cancels us on disconnect.
                run.cancel.set()
            yield _sse("[DONE]")

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/completions", dependencies=[Depends(authenticate)])
    async def completions(request: Request, body: CompletionRequest) -> Any:
        return await respond(request, body, chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authenticate)])
    async def chat_completions(request: Request, body: ChatRequest) -> Any:
        return await respond(request, body, chat=True)

    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def serve(
    settings: InferenceSettings,
    host: str,
    port: int,
    *,
    storage: StorageSettings | None = None,
    data_dir: Path = Path("var"),
) -> None:
    """Serve on ``host:port``; without a token, on a loopback address only (anyone who reaches
    the port could otherwise generate with any model on the store). Models come from
    ``settings.model_root`` when set, else from the store ``storage`` names (the API's)."""
    import uvicorn

    if settings.token is None and not is_loopback(host):
        raise SystemExit(
            f"gristmill inference: refusing to listen on {host} without a token; set "
            "GRISTMILL_INFERENCE_TOKEN (the API must send the same), or bind 127.0.0.1"
        )

    from inference.vllm_engine import EngineUnavailable

    try:
        folders = open_model_folders(settings.model_root, storage, data_dir)
    except StorageConfigError as exc:  # a setting (a URL and a folder, a bad URL): no traceback
        raise SystemExit(f"gristmill inference: {exc}") from None
    try:
        app = create_app(settings, folders=folders)
    except EngineUnavailable as exc:  # an operator's setting, not a bug: no traceback
        raise SystemExit(f"gristmill inference: {exc}") from None
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
