"""Completes ``Base.metadata``: imports every ORM module (for Alembic and the ORM mappers)."""

from app.artifacts import tables as artifacts
from app.comparisons import tables as comparisons
from app.datasets import tables as datasets
from app.jobs import tables as jobs
from app.tenants import tables as tenants

__all__ = ["artifacts", "comparisons", "datasets", "jobs", "tenants"]
