"""Completes ``Base.metadata``: imports every ORM module (for Alembic and the ORM mappers)."""

from app.artifacts import tables as artifacts
from app.datasets import tables as datasets
from app.jobs import tables as jobs
from app.tenants import tables as tenants

__all__ = ["artifacts", "datasets", "jobs", "tenants"]
