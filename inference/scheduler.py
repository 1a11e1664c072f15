"""Admission (total and per-tenant capacity), the running slots, and the generation thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from inference.engine import (
    Delta,
    Engine,
    GenerationRequest,
    InferenceError,
    ModelRef,
)

log = logging.getLogger("gristmill.inference")


class QueueFull(Exception):
    pass


class TenantQueueFull(QueueFull):
    """This tenant has its share of the service running and waiting; others still get in."""


class RequestTimeout(Exception):
    pass


class GenerationFailed(InferenceError):
    """An engine crash, as tenants see it: a stable code, no traceback or server path (the
    service's log has those)."""

    status = 500
    code = "generation_failed"


@dataclass
class Stats:
    """Counters for /health and for tests that check a generation really stopped."""

    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    tokens: int = 0


class Scheduler:
    """Admission (running + waiting <= concurrency + queue_size, and per tenant <= tenant_limit)
    and the running slots.

    Thread primitives rather than asyncio ones: slots are taken and given back by the generation
    threads, and the app must not be tied to one event loop (test clients start several).
    """

    def __init__(self, concurrency: int, queue_size: int, tenant_limit: int | None = None) -> None:
        self.limit = concurrency + queue_size
        self.tenant_limit = tenant_limit or max(1, self.limit // 2)
        self.slots = threading.BoundedSemaphore(concurrency)
        self._lock = threading.Lock()
        self.admitted = 0
        self.running = 0
        self.by_tenant: dict[str, int] = {}
        """Admitted requests of each tenant that has any."""

    def admit(self, tenant: str | None) -> None:
        """Raises TenantQueueFull before QueueFull: a tenant over its share hears so even when
        the whole queue is also full. Requests without a tenant count against the total only."""
        with self._lock:
            if tenant is not None and self.by_tenant.get(tenant, 0) >= self.tenant_limit:
                raise TenantQueueFull
            if self.admitted >= self.limit:
                raise QueueFull
            self.admitted += 1
            if tenant is not None:
                self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1

    def leave(self, tenant: str | None) -> None:
        with self._lock:
            self.admitted -= 1
            if tenant is not None:
                left = self.by_tenant.pop(tenant) - 1
                if left:
                    self.by_tenant[tenant] = left


_END = object()


class Run:
    """One admitted generation: a thread that waits for a slot, runs the engine, and puts
    ``("start", GenerationStream)``, ``("delta", Delta)``, ``("error", exc)`` and ``_END`` on an
    asyncio queue."""

    def __init__(
        self,
        engine: Engine,
        scheduler: Scheduler,
        stats: Stats,
        model: ModelRef,
        request: GenerationRequest,
        deadline: float,
        tenant: str | None,
    ) -> None:
        self.cancel = threading.Event()
        self._tenant = tenant
        self.deadline = deadline
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._engine, self._scheduler, self._stats = engine, scheduler, stats
        self._model, self._request = model, request
        threading.Thread(target=self._work, name="generation", daemon=True).start()

    def _put(self, item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _work(self) -> None:
        try:
            if not self._scheduler.slots.acquire(
                timeout=max(0.0, self.deadline - time.monotonic())
            ):
                self._put(("error", RequestTimeout()))
                return
            try:
                self._scheduler.running += 1
                self._generate()
            finally:
                self._scheduler.running -= 1
                self._scheduler.slots.release()
        finally:
            self._scheduler.leave(self._tenant)
            self._put(_END)

    def _generate(self) -> None:
        if self.cancel.is_set():
            return
        try:
            stream = self._engine.stream(self._model, self._request, self.cancel)
            self._put(("start", stream.prompt_tokens))
            for delta in stream:
                self._stats.tokens += delta.tokens
                self._put(("delta", delta))
        except InferenceError as exc:  # handed to the request, which turns it into an HTTP error
            self._put(("error", exc))
            return
        except Exception:
            log.exception("generation failed")
            self._put(("error", GenerationFailed("the generation failed; retry or report it")))
            return
        if self.cancel.is_set():
            self._stats.cancelled += 1
        else:
            self._stats.completed += 1

    async def next(self) -> Any:
        """The next item, or :class:`RequestTimeout` raised once the deadline passes."""
        try:
            return await asyncio.wait_for(
                self._queue.get(), timeout=max(0.0, self.deadline - time.monotonic())
            )
        except TimeoutError:
            self.cancel.set()
            raise RequestTimeout from None

    async def start(self) -> int:
        """Wait for the generation to start: the prompt's token count, or its error raised."""
        item = await self.next()
        if item is _END:
            raise RequestTimeout
        kind, value = item
        if kind == "error":
            raise value
        return int(value)

    async def deltas(self) -> AsyncIterator[Delta]:
        while True:
            item = await self.next()
            if item is _END:
                return
            kind, value = item
            if kind == "error":
                raise value
            yield value
