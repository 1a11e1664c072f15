"""End-to-end fixtures: real ``gristmill api`` and ``gristmill worker`` processes.

Each module gets a Postgres database of its own (``gristmill_e2e``, recreated and migrated with
``gristmill migrate``), a private ``redis-server`` on a free port and an API key made with
``gristmill keys create``. Processes get an environment built from scratch (no ``GRISTMILL_*``
inherited from the in-process test settings) with short leases and reaper periods. When a test
fails, the tail of every process log is attached to its report.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from app.db import make_engine
from tests.conftest import PG_ADMIN_URL, recreate_database
from tests.e2e import procs
from tests.e2e.procs import GRISTMILL, Api, Proc, RedisServer, TcpProxy

E2E_DB = "gristmill_e2e"
PG_HOST, PG_PORT = "127.0.0.1", 5432

# Short timings, so faults are detected and recovered from within seconds.
FAST_TIMINGS: dict[str, Any] = {
    "job_lease_seconds": 4,
    "reaper_interval_seconds": 1,
    "requeue_after_seconds": 2,
    "metrics_flush_seconds": 0.5,
    "broker_visibility_timeout_seconds": 3600,
}


def database_url(port: int = PG_PORT) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].rsplit("@", 1)[0]
    return f"{base}@{PG_HOST}:{port}/{E2E_DB}"


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
    """A fresh ``gristmill_e2e`` database, built by ``gristmill migrate`` as an operator would."""
    url = database_url()
    recreate_database(PG_ADMIN_URL, E2E_DB)
    procs.run_cli(["migrate"], env=procs.clean_env(database_url=url))
    yield url
    admin = make_engine(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{E2E_DB}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def api_key(e2e_database: str) -> str:
    out = procs.run_cli(["keys", "create", "--tenant", "t1"], env=procs.clean_env(database_url=e2e_database))
    return out.strip().splitlines()[-1].strip()


def truncate_jobs(url: str) -> None:
    """Forget every job, so a later test's reaper never picks up an earlier test's leftovers."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE job, job_event, job_metric, artifact CASCADE"))
    engine.dispose()


@dataclass
class Stack:
    """An API and any number of workers sharing one database, broker and data directory."""

    root: Path
    settings: dict[str, Any]
    key: str
    api_port: int = field(default_factory=procs.free_port)
    api_proc: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    started: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = Api(f"http://127.0.0.1:{self.api_port}", self.key)

    @property
    def worker(self) -> Proc:
        assert self.workers, "no worker started"
        return self.workers[-1]

    @property
    def logs(self) -> list[Proc]:
        return list(self.started)

    def env(self) -> dict[str, str]:
        return procs.clean_env(data_dir=self.root / "data", **self.settings)

    def start_api(self) -> Proc:
        args = [GRISTMILL, "api", "--host", "127.0.0.1", "--port", str(self.api_port)]
        self.api_proc = self._start("api", args)
        self.api.wait_ready(logs=self.logs)
        return self.api_proc

    def start_worker(self, queues: str = "cpu,gpu") -> Proc:
        """Start a worker (concurrency 1) and wait until Celery says it is ready."""
        proc = self._start("worker", [GRISTMILL, "worker", "--queues", queues, "--concurrency", "1"])
        self.workers.append(proc)
        procs.wait_for(
            lambda: " ready." in proc.log() or not proc.alive(),
            timeout=60,
            what="worker ready",
            logs=[proc],
        )
        assert proc.alive(), proc.tail()
        return proc

    def pool_child(self, worker: Proc | None = None) -> int:
        """The pid of the worker's (single) prefork pool process."""
        worker = worker or self.worker
        children = procs.wait_for(
            lambda: [p.pid for p in worker.descendants()],
            timeout=10,
            what="a pool child",
            logs=[worker],
        )
        assert len(children) == 1, children
        return int(children[0])

    def kill_worker(self, worker: Proc | None = None) -> None:
        """SIGKILL the worker's main process and every child: no chance to clean up."""
        worker = worker or self.worker
        family = worker.descendants()
        worker.signal_group(signal.SIGKILL)
        worker.kill(family)

    def stop_worker(self, worker: Proc | None = None) -> None:
        (worker or self.worker).stop(timeout=15)

    def _start(self, name: str, args: list[str]) -> Proc:
        proc = procs.start(name, args, env=self.env(), log_dir=self.root / "logs")
        self.started.append(proc)
        return proc

    def close(self) -> None:
        self.api.close()
        procs.stop_all(self.started)


StackFactory = Callable[..., Stack]


def build_stack(root: Path, key: str, **settings: Any) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    return Stack(root=root, settings={**FAST_TIMINGS, **settings}, key=key)


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
