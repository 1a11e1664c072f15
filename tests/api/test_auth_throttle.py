"""Failed API-key lookups are throttled per client address (``auth_failure_limit``): guessing keys
is slow, while other addresses and valid keys are served as before."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.settings import Settings
from tests.factories import make_key

GUESSER, OTHER = ("203.0.113.9", 5000), ("198.51.100.7", 5000)


def _app(settings: Settings, **update: Any) -> FastAPI:
    limits = {"rate_limit_storage_url": "memory://", "auth_failure_limit": "3/minute", **update}
    return create_app(settings.model_copy(update=limits), run_reaper=False)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_unknown_keys_from_one_address_get_429_while_another_address_is_served(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    good = make_key(factory, "acme").key
    app = _app(settings, auth_cache_seconds=600.0)
    with TestClient(app, raise_server_exceptions=False, client=GUESSER) as guesser:
        assert guesser.get("/v1/jobs", headers=_bearer(good)).status_code == 200  # now cached
        guesses = [guesser.get("/v1/jobs", headers=_bearer(f"gm_guess{n}")) for n in range(3)]
        assert [g.status_code for g in guesses] == [401, 401, 401]

        blocked = guesser.get("/v1/jobs", headers=_bearer("gm_guess3"))

        assert blocked.status_code == 429, blocked.text
        assert int(blocked.headers["Retry-After"]) >= 1
        assert blocked.json()["error"]["code"] == "rate_limited.api_keys"
        # A key this process already trusts is not slowed by its address's failures.
        assert guesser.get("/v1/jobs", headers=_bearer(good)).status_code == 200
    other_key = make_key(factory, "globex").key
    with TestClient(app, raise_server_exceptions=False, client=OTHER) as other:
        assert other.get("/v1/jobs", headers=_bearer(other_key)).status_code == 200
        assert other.get("/v1/jobs", headers=_bearer("gm_typo")).status_code == 401


def test_valid_keys_never_count_as_failures(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    good = make_key(factory, "acme").key
    app = _app(settings, auth_cache_seconds=0.0)  # every request looks its key up
    with TestClient(app, raise_server_exceptions=False, client=OTHER) as client:
        served = [client.get("/v1/jobs", headers=_bearer(good)).status_code for _ in range(10)]
        assert served == [200] * 10
        failed = [client.get("/v1/jobs", headers=_bearer(f"gm_x{n}")).status_code for n in range(4)]
        assert failed == [401, 401, 401, 429]
