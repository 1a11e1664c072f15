"""Test settings and the real services behind them.

Tests run against real Postgres (a database of their own, built by ``alembic upgrade head``) and a
Redis database number of their own. Tables are truncated between tests rather than rolled back,
because the job layer writes from background threads on connections of its own.

``GRISTMILL_TEST_TIMEOUT_FACTOR`` stretches every wait, pytest-timeout's limits included (see
``tests.timing``). ``run_job`` (a ``RunJob``) is the one way a test runs a queued job in-process;
``tenant`` is the one tenant id fixture (``acme``, whose key ``key`` and ``auth`` carry).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_timeout import get_env_settings

from tests.s3server import AWS_ENV, MotoServer, new_bucket
from tests.serving import free_port
from tests.timing import TIMEOUT_FACTOR, scaled, wait_for

PG_ADMIN_URL = os.environ.get(
    "GRISTMILL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
# A database name of this run's own: two runs on one host never drop each other's database.
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
TEST_DB = os.environ.get("GRISTMILL_TEST_DB", f"gristmill_test_{RUN_ID}")
TEST_DATABASE_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + TEST_DB


# A private redis-server for this run (started by the ``_redis`` fixture), so queue lengths the
# API tests assert are never another run's messages.
_REDIS_PORT = free_port()
TEST_BROKER_URL = os.environ.get("GRISTMILL_TEST_BROKER_URL", f"redis://127.0.0.1:{_REDIS_PORT}/0")
_DATA_DIR = tempfile.mkdtemp(prefix="gristmill-test-")

# Set before any app module reads settings (get_settings and get_celery are cached per process).
os.environ["GRISTMILL_DATABASE_URL"] = TEST_DATABASE_URL
os.environ["GRISTMILL_BROKER_URL"] = TEST_BROKER_URL
os.environ["GRISTMILL_DATA_DIR"] = _DATA_DIR
os.environ["GRISTMILL_JOB_LEASE_SECONDS"] = "5"
os.environ["GRISTMILL_REAPER_INTERVAL_SECONDS"] = "1"
os.environ["GRISTMILL_REQUEUE_AFTER_SECONDS"] = "3"
os.environ["GRISTMILL_METRICS_FLUSH_SECONDS"] = "0.5"
os.environ["GRISTMILL_QUEUE_DEVICES"] = '{"cpu": 2, "gpu": 2}'  # DDP tests: 2 gloo processes
os.environ["GRISTMILL_QUEUE_ACCELERATED"] = '{"gpu": false}'  # this machine has no CUDA
# Tests vote by script, far faster than people (the default allows 20 requests a second per
# comparison); the limit itself is tested with its own setting (test_invites_and_closing.py).
os.environ["GRISTMILL_RATER_RATE_LIMIT"] = "1200/minute"

import redis  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import Engine, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from app.db import make_engine, make_session_factory  # noqa: E402
from app.jobs.schemas import JobRead  # noqa: E402
from app.jobs.tables import Job  # noqa: E402
from app.main import create_app  # noqa: E402
from app.settings import Settings, get_settings  # noqa: E402
from app.storage import open_configured_store  # noqa: E402
from app.tenants.service import CreatedKey  # noqa: E402
from tests.factories import make_key  # noqa: E402
from workers import runner  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"gristmill timeout factor: {TIMEOUT_FACTOR:g} (GRISTMILL_TEST_TIMEOUT_FACTOR)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """pytest-timeout's limit for each test (the configured one, or the test's own ``timeout``
    mark) times the timeout factor: the mark put first is the one pytest-timeout reads."""
    if TIMEOUT_FACTOR == 1:
        return
    default = get_env_settings(config).timeout
    for item in items:
        mark = item.get_closest_marker("timeout")
        kwargs: dict[str, Any] = dict(mark.kwargs) if mark is not None else {}
        args = list(mark.args) if mark is not None else []
        limit = args.pop(0) if args else kwargs.pop("timeout", default)
        if args:
            kwargs["method"] = args.pop(0)
        if limit:
            item.add_marker(pytest.mark.timeout(scaled(float(limit)), **kwargs), append=False)


def recreate_database(admin_url: str, name: str) -> None:
    drop_database(admin_url, name)
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def drop_database(admin_url: str, name: str) -> None:
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def _redis() -> Iterator[None]:
    if "GRISTMILL_TEST_BROKER_URL" in os.environ:
        yield
        return
    args = [shutil.which("redis-server") or "redis-server", "--port", str(_REDIS_PORT)]
    args += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
    client = redis.Redis.from_url(TEST_BROKER_URL)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, timeout=10, interval=0.1, what="the test redis-server to answer PING")
    yield
    server.terminate()
    server.wait(timeout=scaled(10))


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    from app.migrate import upgrade

    recreate_database(PG_ADMIN_URL, TEST_DB)
    upgrade(TEST_DATABASE_URL)
    engine = make_engine(TEST_DATABASE_URL)
    yield engine
    engine.dispose()
    drop_database(PG_ADMIN_URL, TEST_DB)


@pytest.fixture
def factory(engine: Engine) -> Iterator[sessionmaker[Session]]:
    yield make_session_factory(engine)
    with engine.begin() as conn:
        tables = ", ".join(
            t.name for t in reversed(_metadata().sorted_tables) if t.name != "alembic_version"
        )
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))


def _metadata():  # type: ignore[no-untyped-def]
    import app.metadata  # noqa: F401
    from app.db import Base

    return Base.metadata


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        yield session


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """A real S3 endpoint on loopback (moto's standalone server), started once per run."""
    server = MotoServer.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials through the AWS chain's environment; nothing from the host's files or
    an instance's metadata service."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture
def bucket(moto_server: MotoServer, aws_env: None) -> str:
    """A new empty bucket on ``moto_server`` (with the test credentials set)."""
    return new_bucket(moto_server.url)


@pytest.fixture
def data_dir() -> Path:
    return Path(_DATA_DIR)


@pytest.fixture
def client(settings: Settings, factory: sessionmaker[Session]) -> Iterator[TestClient]:
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    app = create_app(settings, run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


class RunJob:
    """Runs queued jobs in this process, as a worker's pool process would: the one way a test
    drives the job layer without Celery (the end-to-end twin is ``Api.run_job``)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory, self.settings = factory, settings
        self.store = open_configured_store(settings)

    def __call__(self, job_id: str) -> dict[str, Any]:
        """Run the job to its end and return it as ``GET /v1/jobs/{id}`` shows it (any tenant's
        job; the caller checks the status)."""
        self.execute(job_id)
        with self.factory() as session:
            job = session.get_one(Job, job_id)
            return JobRead.model_validate(job).model_dump(mode="json")

    def execute(
        self,
        job_id: str,
        *,
        owner: str = "test-worker",
        settings: Settings | None = None,
        on_hung: Callable[[], None] | None = None,
    ) -> str | None:
        """One delivery of the job's message, as ``runner.execute`` handles it: the status the
        attempt wrote, or None when its claim matched nothing (a duplicate delivery).

        ``settings`` replaces the session's (shorter limits); ``on_hung`` replaces the worker's
        "end this process" for a stage that hangs past its lease or time limit.
        """
        hung = {} if on_hung is None else {"on_hung": on_hung}
        return runner.execute(
            job_id,
            owner=owner,
            settings=settings or self.settings,
            session_factory=self.factory,
            store=self.store,
            **hung,
        )


@pytest.fixture
def run_job(factory: sessionmaker[Session], settings: Settings) -> RunJob:
    return RunJob(factory, settings)


@pytest.fixture
def acme(factory: sessionmaker[Session]) -> CreatedKey:
    """Tenant ``acme`` and an API key of its own."""
    return make_key(factory, "acme")


@pytest.fixture
def key(acme: CreatedKey) -> str:
    return acme.key


@pytest.fixture
def tenant(acme: CreatedKey) -> str:
    """The id of tenant ``acme``: the tenant ``key`` and ``auth`` act for."""
    return acme.tenant_id


@pytest.fixture
def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def other_auth(factory: sessionmaker[Session]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(factory, 'globex').key}"}
