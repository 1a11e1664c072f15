"""Migrations are the only way the schema is made: they must go up, down and up again cleanly,
and leave exactly the schema the ORM models describe, on Postgres and on SQLite."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

import app.metadata  # noqa: F401  (registers every table on Base.metadata)
from app.db import Base, make_engine, make_session_factory, session_scope
from app.migrate import downgrade, upgrade
from app.tenants.service import hash_key, identify
from app.tenants.tables import ApiKey
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


def test_keys_made_before_key_management_stay_working_admin_keys(database_url: str) -> None:
    """A key from before labels, expiries and the admin flag: it still works, has no label and
    no expiry, and is an admin key (operator commands made every such key)."""

    upgrade(database_url, "0008")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        when = {"t": "2026-12-01 00:00:00+00:00"}
        conn.execute(text("INSERT INTO tenant VALUES ('ten_1', 'acme', :t)"), when)
        conn.execute(
            text(
                "INSERT INTO api_key (id, tenant_id, prefix, key_hash, created_at) "
                "VALUES ('key_1', 'ten_1', 'gm_abcdefg', :h, :t)"
            ),
            {"h": hash_key("gm_abcdefg-old"), **when},
        )
    upgrade(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            caller = identify(session=session, key="gm_abcdefg-old")
            row = session.get_one(ApiKey, "key_1")
            assert (caller.key_id, caller.admin, row.label, row.expires_at) == (
                "key_1",
                True,
                None,
                None,
            )
    finally:
        engine.dispose()


def test_comparisons_made_before_vote_counters_get_their_pairs_and_counts(
    database_url: str,
) -> None:
    """A comparison rated before the counters: the upgrade makes its pairs, with the round-0
    votes each already has, and its vote total, so the next pair and new votes carry on."""
    upgrade(database_url, "0010")
    engine = make_engine(database_url)
    when = {"t": "2026-12-01 00:00:00+00:00"}
    models = ["mdl_b", "mdl_A", "mdl_c"]  # code-point order: mdl_A < mdl_b < mdl_c
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO tenant VALUES ('ten_1', 'acme', :t)"), when)
        conn.execute(
            text(
                "INSERT INTO comparison (id, tenant_id, status, model_ids, settings, secret,"
                " created_at) VALUES ('cmp_1', 'ten_1', 'open', :m, '{}', 's', :t)"
            ),
            {"m": json.dumps(models), **when},
        )
        for prompt, model in itertools.product((0, 1), models):
            conn.execute(
                text(
                    "INSERT INTO comparison_answer (comparison_id, prompt_index, model_id, text)"
                    " VALUES ('cmp_1', :p, :m, 'x')"
                ),
                {"p": prompt, "m": model},
            )
        for rater, rnd in (("key:1", 0), ("key:2", 0), ("key:1", 1)):
            conn.execute(
                text(
                    "INSERT INTO comparison_vote (comparison_id, rater, ticket, prompt_index,"
                    " model_x, model_y, round, left_model, right_model, verdict, created_at)"
                    " VALUES ('cmp_1', :r, 't', 1, 'mdl_A', 'mdl_c', :n, 'mdl_A', 'mdl_c', 'a',"
                    " :t)"
                ),
                {"r": rater, "n": rnd, **when},
            )
    upgrade(database_url)
    try:
        with engine.connect() as conn:
            pairs = conn.execute(
                text(
                    "SELECT prompt_index, model_x, model_y, votes FROM comparison_pair"
                    " ORDER BY prompt_index, model_x, model_y"
                )
            ).all()
            total = conn.execute(text("SELECT votes FROM comparison WHERE id = 'cmp_1'")).scalar()
    finally:
        engine.dispose()
    expected = [
        (p, x, y, 2 if (p, x, y) == (1, "mdl_A", "mdl_c") else 0)
        for p in (0, 1)
        for x, y in itertools.combinations(sorted(models), 2)
    ]
    assert sorted(tuple(row) for row in pairs) == sorted(expected)
    assert total == 3
