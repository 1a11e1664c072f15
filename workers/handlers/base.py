"""What the runner hands a job handler, and what a handler hands back.

A handler turns a job row into pipeline inputs (configs, files in the store), calls one pipeline
stage with the runner's hooks, and describes the rows to write if the job succeeds. It runs in the
worker process, never in a torchrun child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings
from app.storage import LocalStore
from workers.pipeline.types import Hooks, RunPaths


@dataclass(frozen=True)
class JobContext:
    job_id: str
    tenant_id: str
    job_type: str
    params: dict[str, Any]
    attempt: int
    paths: RunPaths
    hooks: Hooks
    store: LocalStore
    settings: Settings
    session_factory: sessionmaker[Session]


@dataclass(frozen=True)
class Outcome:
    """A finished job's result, plus the domain rows to write in the transaction that finishes it.

    ``commit`` runs inside the same transaction as the ``succeeded`` transition, so a dataset or
    model row exists exactly when its job succeeded.
    """

    result: dict[str, Any] = field(default_factory=dict)
    commit: Callable[[Session], None] | None = None


Handler = Callable[[JobContext], Outcome]
