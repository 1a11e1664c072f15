"""``GET /metrics`` in Prometheus text format, and the request-id / latency middleware.

The job counts cover every tenant, so they are operator data: ``/metrics`` answers a scraper
that sends ``GRISTMILL_METRICS_TOKEN``, or, with no token set, only clients on this machine
(loopback; behind a proxy on the same host, uvicorn takes the client from X-Forwarded-For).

Job counts and queue wait are read from the database at scrape time (the ledger is the truth, and
this works with any number of API processes); request latency is per process.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Iterator
from ipaddress import ip_address

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import render
from app.db import utcnow
from app.jobs import service
from app.jobs.tables import Job
from app.logging import bind

log = logging.getLogger("gristmill.access")


class JobCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "gristmill_jobs", "Jobs by type and status", labels=["type", "status"]
        )
        waiting = GaugeMetricFamily(
            "gristmill_queue_wait_seconds",
            "Queue wait of jobs started in the last hour (start minus submission)",
            labels=["quantile"],
        )
        oldest = GaugeMetricFamily(
            "gristmill_oldest_queued_job_age_seconds", "Age of the oldest job still queued"
        )
        try:
            with self.factory() as session:
                for job_type, status, count in service.count_by_type_and_status(session=session):
                    jobs.add_metric([job_type, status], count)
                waits = _recent_waits(session)
                first_queued = session.scalar(
                    select(Job.created_at).where(Job.status == "queued").order_by(Job.created_at)
                )
        except Exception:
            log.warning("metrics: database unavailable")
            return
        for q in (0.5, 0.9, 0.99):
            if waits:
                waiting.add_metric([str(q)], waits[min(len(waits) - 1, int(q * len(waits)))])
        oldest.add_metric([], (utcnow() - first_queued).total_seconds() if first_queued else 0.0)
        yield from (jobs, waiting, oldest)


def _recent_waits(session: Session) -> list[float]:
    since = utcnow().timestamp() - 3600
    rows = session.execute(
        select(Job.created_at, Job.started_at)
        .where(Job.started_at.is_not(None))
        .order_by(Job.started_at.desc())
        .limit(1000)
    ).all()
    return sorted(
        (started - created).total_seconds()
        for created, started in rows
        if started is not None and started.timestamp() >= since
    )


class RequestObserver:
    """Pure ASGI middleware: a request id bound to every log line, latency, an access log line.

    Not ``@app.middleware("http")``: that wraps every ``receive()`` of a streamed upload in a task
    group, which costs about as much as parsing the upload itself.
    """

    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")[:64].decode("latin-1")
        request_id = given or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        started = time.perf_counter()
        try:
            with bind(request_id=request_id):
                await self.app(scope, receive, send_with_id)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.latency.labels(scope["method"], path, str(status)).observe(elapsed)
            log.info("%s %s %s %.1fms", scope["method"], path, status, elapsed * 1000)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ip_address(host).is_loopback
    except ValueError:
        return False


def scrape_refusal(request: Request, token: str | None) -> Response | None:
    """Why this request may not read ``/metrics``, as the error to answer; ``None`` if it may."""
    if token is None:
        if _loopback(request.client.host if request.client else None):
            return None
        return render(
            403,
            "/metrics answers only this machine; set GRISTMILL_METRICS_TOKEN to scrape it from "
            "elsewhere",
            code="metrics_forbidden",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode()):
        return None
    return render(401, "/metrics needs the scrape token as a Bearer token", code="unauthorized")


def install(app: FastAPI, factory: sessionmaker[Session], metrics_token: str | None) -> None:
    registry = CollectorRegistry()
    registry.register(JobCollector(factory))
    latency = Histogram(
        "gristmill_http_request_duration_seconds",
        "HTTP request latency",
        ["method", "route", "status"],
        registry=registry,
    )
    app.add_middleware(RequestObserver, latency=latency)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if refusal := scrape_refusal(request, metrics_token):
            return refusal
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
