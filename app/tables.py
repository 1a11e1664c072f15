"""Imports every ORM module so ``Base.metadata`` is complete (for Alembic and the ORM mappers)."""

from app.artifacts import tables as artifacts
from app.jobs import tables as jobs
from app.tenants import tables as tenants

__all__ = ["artifacts", "jobs", "tenants"]
