from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.settings import Settings
from tests.conftest import TEST_BROKER_URL
from tests.factories import make_key


@pytest.fixture
def client(settings: Settings, factory: sessionmaker[Session]) -> Iterator[TestClient]:
    redis.Redis.from_url(TEST_BROKER_URL).flushdb()
    app = create_app(settings, run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def key(factory: sessionmaker[Session]) -> str:
    return make_key(factory, "acme").key


@pytest.fixture
def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def other_auth(factory: sessionmaker[Session]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(factory, 'globex').key}"}
