"""End-to-end fixtures: real ``gristmill api`` and ``gristmill worker`` processes.

Each module gets a Postgres database of its own (``gristmill_e2e_<run>``, recreated and migrated
with ``gristmill migrate``), a private ``redis-server`` on a free port and an API key made with
``gristmill keys create``. Processes get an environment built from scratch (no ``GRISTMILL_*``
inherited from the in-process test settings) with short leases and reaper periods. When a test
fails, the tail of every process log is attached to its report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL, drop_database, recreate_database
from tests.e2e import procs
from tests.e2e.procs import RedisServer, TcpProxy
from tests.e2e.stack import (
    E2E_DB,
    PG_HOST,
    PG_PORT,
    Stack,
    StackFactory,
    build_stack,
    database_url,
    truncate_jobs,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and procs.STARTED:
        tails = "\n".join(proc.tail() for proc in procs.STARTED)
        report.sections.append(("gristmill process logs", tails))


@pytest.fixture(scope="session", autouse=True)
def _kill_leftover_processes() -> Iterator[None]:
    """Last line of defence: nothing a test started outlives the session."""
    yield
    procs.stop_all(procs.STARTED)


@pytest.fixture(scope="module")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def redis_server(e2e_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(e2e_dir / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def e2e_database() -> Iterator[str]:
    """A fresh database of this run, built by ``gristmill migrate`` as an operator would."""
    url = database_url()
    recreate_database(PG_ADMIN_URL, E2E_DB)
    procs.run_cli(["migrate"], env=procs.clean_env(database_url=url))
    yield url
    drop_database(PG_ADMIN_URL, E2E_DB)


@pytest.fixture(scope="module")
def api_key(e2e_database: str) -> str:
    out = procs.run_cli(
        ["keys", "create", "--tenant", "t1"], env=procs.clean_env(database_url=e2e_database)
    )
    return out.strip().splitlines()[-1].strip()


@pytest.fixture
def make_stack(
    tmp_path: Path, e2e_database: str, redis_server: RedisServer, api_key: str
) -> Iterator[StackFactory]:
    """Build a stack on the module's database and Redis; settings override the fast timings.

    Processes are started by the test (``start_api``/``start_worker``); all are stopped afterwards
    and the job tables are emptied.
    """
    stacks: list[Stack] = []

    def make(**settings: Any) -> Stack:
        settings = {"database_url": e2e_database, "broker_url": redis_server.url, **settings}
        stack = build_stack(tmp_path / f"stack{len(stacks)}", api_key, **settings)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()
    truncate_jobs(e2e_database)


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    """A cuttable TCP proxy in front of Postgres."""
    proxy = TcpProxy((PG_HOST, PG_PORT))
    proxy.start()
    yield proxy
    proxy.stop()
