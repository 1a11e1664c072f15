"""Migrations are the only way the schema is made: they must go up, down and up again cleanly,
and leave exactly the schema the ORM models describe, on Postgres and on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import app.metadata  # noqa: F401  (registers every table on Base.metadata)
from app.db import Base, make_engine
from app.migrate import downgrade, upgrade
from tests.conftest import PG_ADMIN_URL, RUN_ID, drop_database, recreate_database

MIGRATIONS_DB = f"gristmill_migrations_{RUN_ID}"
EXPECTED_TABLES = set(Base.metadata.tables)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    recreate_database(PG_ADMIN_URL, MIGRATIONS_DB)
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + MIGRATIONS_DB
    drop_database(PG_ADMIN_URL, MIGRATIONS_DB)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gristmill.db'}"


@pytest.fixture(params=["postgres", "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "postgres_url" if request.param == "postgres" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _schema_diffs(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "render_as_batch": conn.dialect.name == "sqlite"},
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_and_upgrade_again(database_url: str) -> None:
    """Upgrade to head, downgrade to base, upgrade again → every table exists, then none, then
    all again (the downgrade path really undoes the upgrade)."""
    upgrade(database_url)
    assert _tables(database_url) == EXPECTED_TABLES
    assert {"tenant", "api_key", "job", "job_event", "job_metric"} <= EXPECTED_TABLES

    downgrade(database_url, "base")
    assert _tables(database_url) == set()

    upgrade(database_url)
    assert _tables(database_url) == EXPECTED_TABLES


def test_orm_models_match_migrations(database_url: str) -> None:
    """A database built only by the migrations, compared with ``Base.metadata`` by Alembic's
    autogenerate → no differences (no table, column, index, constraint or type drift)."""
    upgrade(database_url)

    assert _schema_diffs(database_url) == []
