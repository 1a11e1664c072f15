"""A job's pause history: when it was paused and resumed, and how much running time that was.

Paused time is not running time: a job's time limit and a tenant's device-hours count neither.
Each pause is ``{"at": iso, "until": iso | null}`` on the job row (null while it lasts).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.jobs.tables import Job

Pauses = list[dict[str, Any]]


def started_pause(pauses: Pauses | None, at: datetime) -> Pauses:
    """The pause history with a pause open from ``at``."""
    return [*(pauses or []), {"at": at.isoformat(), "until": None}]


def ended_pause(pauses: Pauses | None, at: datetime) -> Pauses:
    """The pause history with its open pause closed at ``at``."""
    return [p if p.get("until") else {**p, "until": at.isoformat()} for p in pauses or []]


def paused_seconds(pauses: Pauses | None, start: datetime, end: datetime) -> float:
    """How much of ``[start, end]`` the job spent paused (an open pause lasts until ``end``)."""
    total = 0.0
    for pause in pauses or []:
        since = datetime.fromisoformat(pause["at"])
        until = datetime.fromisoformat(pause["until"]) if pause.get("until") else end
        total += max(0.0, (min(until, end) - max(since, start)).total_seconds())
    return total


def running_seconds(job: Job, now: datetime) -> float:
    """Time since the job first started, less its pauses: what its time limit counts."""
    if job.started_at is None:
        return 0.0
    return (now - job.started_at).total_seconds() - paused_seconds(job.pauses, job.started_at, now)
