"""The edge gate: what every ``/v1`` request passes before a route sees it.

A pure ASGI middleware, in this order:

1. **Authenticate before reading anything.** The key is checked in a session of its own that is
   closed at once, so no pooled connection stays checked out while a body or a download streams;
   a request without a valid key is answered 401 before one byte of its body is read. A checked
   key is trusted for ``auth_cache_seconds`` (``app.api.auth_cache``). Unknown, revoked and
   expired keys count against the client address (``auth_failure_limit``); past it the address's
   lookups answer 429 without touching the database, while cached valid keys pass.
2. **Rate limit** per key (429 with ``RateLimit-*`` and ``Retry-After``). An invited rater's
   token is looked up here: unknown and revoked tokens count against the client address
   (``rater_failure_limit``), valid ones against the token (``rate_limit``) and against their
   comparison, shared by all its raters (``rater_rate_limit``).
3. **Refuse bad text at the edge** (``app.api.text``): NUL in the query or path; in a JSON body,
   lone surrogates (``"\\udc80"``), NUL, and integers longer than Python will convert — 422
   naming the field.
4. **Bound bodies**: a JSON (non-upload) body is counted as it arrives and refused with 413 once it
   crosses ``max_json_body_bytes``; a body that stalls for ``body_idle_timeout_seconds`` is cut
   off with 408.
5. **Bound streams**: each tenant has at most ``max_streams_per_tenant`` uploads and downloads in
   flight; a download whose reader stalls for ``send_timeout_seconds`` is disconnected.

Routes then find the caller in ``request.state`` (see ``app.api.deps.get_tenant``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.auth_cache import AuthCache
from app.api.errors import pool_exhausted, render, render_exception
from app.api.limits import FailureThrottle, KeyRateLimiter, StreamSlots
from app.api.text import check_json_text, check_text_in_url, is_json
from app.comparisons.service import rater_comparison
from app.errors import GristmillError, InvalidInput, PayloadTooLarge, RequestTimeout, Unauthorized
from app.settings import Settings
from app.tenants.service import Caller, hash_key, identify

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/v1/health", "/v1/ready"})
# Invited raters have a token, not a key: these two pass the gate with one (the route checks it).
RATER_PATH = re.compile(r"^/v1/comparisons/[^/]+/(next|votes)$")
RATER_TOKEN_PREFIX = "gmr_"
RATER_METHODS = {"next": "GET", "votes": "POST"}
UPLOAD_PATHS = frozenset({"/v1/datasets", "/v1/models", "/v1/files"})  # multipart streams
DOWNLOAD = re.compile(r"^/v1/(datasets|models|tokenizers|files)/[^/]+/(content|files/.+)$")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class EdgeGate:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        factory: sessionmaker[Session],
        limiter: KeyRateLimiter | None = None,
        slots: StreamSlots | None = None,
        auth_cache: AuthCache | None = None,
        rater_failures: FailureThrottle | None = None,
        key_failures: FailureThrottle | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.factory = factory
        self.limiter = limiter or KeyRateLimiter(
            settings.rate_limit, settings.resolved_rate_limit_storage_url
        )
        storage = settings.resolved_rate_limit_storage_url
        self.comparison_limiter = KeyRateLimiter(settings.rater_rate_limit, storage)
        self.rater_failures = rater_failures or FailureThrottle(
            settings.rater_failure_limit, storage
        )
        self.key_failures = key_failures or FailureThrottle(
            settings.auth_failure_limit, storage, what="api_keys", label="API keys"
        )
        self.slots = slots or StreamSlots(settings.max_streams_per_tenant)
        self.auth_cache = auth_cache or AuthCache(settings.auth_cache_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/") or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            token = _rater_token(scope) if RATER_PATH.match(path) else None
            if token is not None:
                await self._rater_gate(scope, receive, send, token)
            else:
                await self._gate(scope, receive, send)
        except GristmillError as exc:
            # Raised before the route ran (a response has not started): answer it here.
            await render_exception(exc)(scope, receive, send)

    async def _gate(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        caller = await self._authenticate(scope, receive, send, headers.get(b"authorization"))
        if caller is None:
            return
        state = scope.setdefault("state", {})
        state["caller"] = caller
        state["tenant_id"], state["key_id"] = caller.tenant_id, caller.key_id

        limited = await self._rate_limit(scope, receive, send, caller)
        if limited is None:
            return
        send = limited
        check_text_in_url(scope)
        method, path = scope["method"], scope["path"]
        idempotency_key = headers.get(b"idempotency-key")
        if idempotency_key is not None and not idempotency_key.strip():
            raise InvalidInput(
                "Idempotency-Key must not be empty; send a unique string (a UUID) or no header.",
                code="idempotency_key.empty",
                param="Idempotency-Key",
            )
        if method == "POST" and path in UPLOAD_PATHS:
            await self._stream(scope, self._idle_receive(receive), send, caller)
            return
        if method in BODY_METHODS:
            body = await self._read_body(receive, headers)
            if body is None:
                return  # the client went away
            if is_json(headers):
                check_json_text(body)
            receive = _replay(body, receive)
        if method == "GET" and DOWNLOAD.match(path):
            await self._stream(scope, receive, self._timed_send(send), caller)
            return
        await self.app(scope, receive, send)

    async def _rater_gate(self, scope: Scope, receive: Receive, send: Send, token: str) -> None:
        """A rater's call without a key: the token is looked up (failures throttled per client
        address), then the same rate limit (per token) plus its comparison's, text and body
        bounds; the route checks the token against the comparison in the path."""
        matched = RATER_PATH.match(scope["path"])
        if matched is None or scope["method"] != RATER_METHODS[matched.group(1)]:
            await self.app(scope, receive, send)  # the router answers 405, nothing looked up
            return
        check_text_in_url(scope)
        address = _client_address(scope)
        failures = self.rater_failures

        def lookup(session: Session) -> str:
            failures.check(address)
            try:
                return rater_comparison(session=session, token=token)
            except Unauthorized:
                failures.failed(address)
                raise

        try:
            comparison_id: str = await self._in_thread(lookup)
        except _Unavailable as unavailable:
            await unavailable.response(scope, receive, send)
            return
        if self.comparison_limiter.enabled:
            decision = await anyio.to_thread.run_sync(
                self.comparison_limiter.hit, "comparison:" + comparison_id
            )
            if not decision.allowed:
                await render_exception(decision.error("this comparison's raters"))(
                    scope, receive, send
                )
                return
        caller = Caller(tenant_id="", key_id="rater:" + hash_key(token)[:32])
        limited = await self._rate_limit(scope, receive, send, caller)
        if limited is None:
            return
        send = limited
        headers = dict(scope["headers"])
        if scope["method"] in BODY_METHODS:
            body = await self._read_body(receive, headers)
            if body is None:
                return
            if is_json(headers):
                check_json_text(body)
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    # -- authentication -------------------------------------------------------------------------

    async def _authenticate(
        self, scope: Scope, receive: Receive, send: Send, header: bytes | None
    ) -> Caller | None:
        scheme, _, key = (header or b"").decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            response = render(
                401, "Missing API key. Send 'Authorization: Bearer <key>'.", code="unauthorized"
            )
            await response(scope, receive, send)
            return None
        digest = hash_key(key)
        cached = self.auth_cache.get(digest)
        if cached is not None:
            return cached
        address = _client_address(scope)
        failures = self.key_failures

        def lookup(session: Session) -> Caller:
            failures.check(address)
            try:
                return identify(session=session, key=key)
            except Unauthorized:
                failures.failed(address)
                raise

        try:
            caller: Caller = await self._in_thread(lookup)
        except Unauthorized as exc:
            await render_exception(exc)(scope, receive, send)
            return None
        except _Unavailable as unavailable:
            await unavailable.response(scope, receive, send)
            return None
        self.auth_cache.put(digest, caller)
        return caller

    async def _in_thread(self, work: Callable[[Session], Any]) -> Any:
        """Run ``work`` in a short session of its own, in a thread; its connection goes back to
        the pool before this returns. An exhausted pool or a lost database raise ``_Unavailable``.
        """

        def run() -> Any:
            with self.factory() as session:
                return work(session)

        try:
            return await anyio.to_thread.run_sync(run)
        except PoolTimeout:
            log.warning("database pool exhausted at the edge")
            raise _Unavailable(pool_exhausted()) from None
        except (OperationalError, InterfaceError) as exc:
            log.warning("database unavailable at the edge: %s", exc.orig)
            raise _Unavailable(
                render(503, "The database is unavailable; retry shortly.", code="db_unavailable")
            ) from None

    # -- rate limits ----------------------------------------------------------------------------

    async def _rate_limit(
        self, scope: Scope, receive: Receive, send: Send, caller: Caller
    ) -> Send | None:
        if not self.limiter.enabled:
            return send
        if self.limiter.needs_thread:
            decision = await anyio.to_thread.run_sync(self.limiter.hit, caller.key_id)
        else:
            decision = self.limiter.hit(caller.key_id)
        extra = decision.headers()
        if not decision.allowed:
            response = render_exception(decision.error())  # carries Retry-After
            response.raw_headers.extend(h for h in extra if h[0] != b"retry-after")
            await response(scope, receive, send)
            return None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return send_with_headers

    # -- bodies ---------------------------------------------------------------------------------

    def _idle_receive(self, receive: Receive) -> Receive:
        timeout = self.settings.body_idle_timeout_seconds

        async def idle_receive() -> Message:
            try:
                return await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise RequestTimeout(
                    f"The request body sent nothing for {timeout:g} s; the request was cut off."
                ) from None

        return idle_receive

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes | None:
        """The whole (small) body, counted as it arrives: 413 as soon as it crosses the cap."""
        cap = self.settings.max_json_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise _too_large(cap)
        idle = self._idle_receive(receive)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await idle()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise _too_large(cap)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # -- streams --------------------------------------------------------------------------------

    async def _stream(self, scope: Scope, receive: Receive, send: Send, caller: Caller) -> None:
        if not self.slots.try_acquire(caller.tenant_id):
            limit = self.slots.limit
            response = render(
                429,
                f"This tenant already has {limit} uploads or downloads in flight; "
                "retry when one has finished.",
                code="rate_limited.streams",
                headers={"Retry-After": "5"},
            )
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except _SlowReader:
            log.warning("download stalled by its reader; connection closed")
        finally:
            self.slots.release(caller.tenant_id)

    def _timed_send(self, send: Send) -> Send:
        timeout = self.settings.send_timeout_seconds

        async def timed_send(message: Message) -> None:
            try:
                await asyncio.wait_for(send(message), timeout)
            except TimeoutError:
                raise _SlowReader from None

        return timed_send


class _Unavailable(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("unavailable")
        self.response = response


class _SlowReader(Exception):
    pass


def _client_address(scope: Scope) -> str:
    """Whom failed lookups count against: the peer (behind a proxy on this host, uvicorn takes
    it from X-Forwarded-For)."""
    return str((scope.get("client") or ("unknown",))[0])


def _rater_token(scope: Scope) -> str | None:
    """An invite token sent as ``X-Rater-Token``, ``Bearer gmr_…`` or ``?token=`` (else None)."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    header: str = headers.get(b"x-rater-token", b"").decode("latin-1").strip()
    if header:
        return header
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer" and value.strip().startswith(RATER_TOKEN_PREFIX):
        return value.strip()
    query = scope.get("query_string", b"").decode("latin-1")
    return next((v for k, v in parse_qsl(query) if k == "token" and v), None)


def _too_large(cap: int) -> GristmillError:
    return PayloadTooLarge(f"The request body is larger than the limit of {cap} bytes.")


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the body read at the edge to the route, then fall through to the real channel."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
