"""Plain functions that make test objects through the services, as the API would."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.db import session_scope, utcnow
from app.flows.submission import queue_job
from app.jobs.kinds import get_kind
from app.jobs.tables import Job
from app.settings import get_settings
from app.storage import open_configured_store
from app.tenants.service import CreatedKey, create_api_key
from pipeline.configs.codec import decode


def make_key(factory: sessionmaker[Session], tenant: str = "acme") -> CreatedKey:
    with session_scope(factory) as session:
        return create_api_key(session=session, tenant_name=tenant)


def make_model(factory: sessionmaker[Session], tenant_id: str) -> str:
    """A ready model's row and no files: for submissions and deletes, which never read them."""
    model_id = artifacts.new_artifact_id("model")
    with factory() as session:
        session.add(
            Artifact(
                id=model_id,
                tenant_id=tenant_id,
                category="model",
                name="tiny",
                uri=layout.artifact("model", model_id),
                format="huggingface",
                size_bytes=2,
                sha256="0" * 64,
            )
        )
        session.commit()
    return model_id


def make_job(
    factory: sessionmaker[Session],
    tenant_id: str,
    *,
    job_type: str = "probe",
    params: dict[str, Any] | None = None,
    max_attempts: int = 3,
    max_runtime_s: float | None = None,
) -> Job:
    """A queued job submitted as the API would (parameters decoded and inputs checked), but not
    sent to the broker: the test runs it, or the reaper re-sends it."""
    defaults = {"duration_s": 0.5, "matmul_size": 64} if job_type == "probe" else {}
    kind = get_kind(job_type)
    settings = get_settings().model_copy(update={"max_attempts": max_attempts})
    with factory() as session:
        return queue_job(
            session=session,
            settings=settings,
            store=open_configured_store(settings),
            tenant_id=tenant_id,
            kind=kind,
            params=decode(kind.params, {**defaults, **(params or {})}),
            max_runtime_s=max_runtime_s,
            enqueue=lambda job_id, queue: False,
        ).job


def spend_device_hours(factory: sessionmaker[Session], tenant_id: str, hours: float) -> None:
    """A gpu-queue job of the tenant that ran ``hours`` on one device and finished an hour ago."""
    used = make_job(factory, tenant_id)
    with factory() as session:
        session.execute(
            update(Job)
            .where(Job.id == used.id)
            .values(
                queue="gpu",
                status="succeeded",
                started_at=utcnow() - timedelta(hours=1 + hours),
                finished_at=utcnow() - timedelta(hours=1),
            )
        )
        session.commit()


def dump_rows(factory: sessionmaker[Session], *tables: str) -> str:
    """Every row of ``tables`` as text, for tests that search the database for a secret."""
    with factory() as session:
        return "".join(
            repr([dict(r._mapping) for r in session.execute(text(f"SELECT * FROM {t}"))])
            for t in tables
        )
