"""Follow a job until it ends: poll its state, new events and newest metrics, and keep going
through a dropped connection (backing off, saying so, and carrying on from the last event seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from client.http import ApiError, GristmillClient
from client.statuses import JOB_FINAL


class JobView(Protocol):
    def start(self, job: Mapping[str, Any]) -> None: ...
    def update(self, job: Mapping[str, Any], metrics: Mapping[str, float]) -> None: ...
    def event(self, event: Mapping[str, Any]) -> None: ...
    def notice(self, text: str) -> None: ...
    def stop(self) -> None: ...
    def final(self, job: Mapping[str, Any]) -> None: ...


def is_transient(exc: Exception) -> bool:
    """Worth waiting out: no connection, or a server that is restarting or overloaded."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and (exc.status >= 500 or exc.status == 429)


class Watcher:
    """Polling state for one job: the last event id and metric step seen, newest values."""

    def __init__(self, client: GristmillClient, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.after_event: int | None = None
        self.after_step: int | None = None
        self.metrics: dict[str, float] = {}

    def poll(self, view: JobView) -> dict[str, Any]:
        """One round: the job first, then what happened, so nothing from before its final
        state is missed on the last round."""
        job = self.client.jobs.get(self.job_id)
        for event in self.client.jobs.events(self.job_id, after=self.after_event):
            self.after_event = event["id"]
            if event["level"] != "debug":
                view.event(event)
        last_step: int | None = None
        for point in self.client.jobs.metrics(self.job_id, after_step=self.after_step):
            self.metrics[point["name"]] = point["value"]
            last_step = point["step"]
        if last_step is not None:
            # Re-read the newest step next time: its evaluation may be written after its loss.
            self.after_step = last_step - 1
        return job


def watch_job(
    client: GristmillClient,
    job_id: str,
    view: JobView,
    *,
    interval: float = 1.0,
    max_backoff: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the job reaches a final state; return it. Errors other than transient ones
    (a 404, a 401) propagate; transient ones are retried forever with backoff."""
    watcher = Watcher(client, job_id)
    job = client.jobs.get(job_id)
    view.start(job)
    backoff, lost_since = interval, None
    while True:
        try:
            job = watcher.poll(view)
        except (httpx.TransportError, ApiError) as exc:
            if not is_transient(exc):
                raise
            if lost_since is None:
                lost_since = time.monotonic()
                view.notice(f"connection lost ({_reason(exc)}); retrying with backoff")
            sleep(backoff)
            backoff = min(max_backoff, backoff * 2)
            continue
        if lost_since is not None:
            view.notice(f"reconnected after {time.monotonic() - lost_since:.0f}s; resuming")
            lost_since, backoff = None, interval
        view.update(job, watcher.metrics)
        if job["status"] in JOB_FINAL:
            view.final(job)
            return job
        sleep(interval)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
