"""Plain functions that make test objects through the services, as the API would."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import session_scope
from app.jobs import service
from app.jobs.tables import Job
from app.tenants.service import CreatedKey, create_api_key


def make_key(factory: sessionmaker[Session], tenant: str = "acme") -> CreatedKey:
    with session_scope(factory) as session:
        return create_api_key(session=session, tenant_name=tenant)


def make_job(
    factory: sessionmaker[Session],
    tenant_id: str,
    *,
    job_type: str = "probe",
    params: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> Job:
    defaults = {"duration_s": 0.5, "matmul_size": 64, "device": "cpu", "fail_with": None}
    with factory() as session:
        return service.submit_job(
            session=session,
            tenant_id=tenant_id,
            job_type=job_type,
            params={**defaults, **(params or {})},
            queue="cpu",
            max_attempts=max_attempts,
        ).job
