"""Keys people manage over the API: an admin key creates, lists, rotates and revokes its
tenant's keys; other keys and other tenants cannot; a revoked or expired key is refused, at once
by the process that revoked it and within the auth cache window by every other."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.main import create_app
from app.settings import Settings
from app.tenants.tables import ApiKey
from tests.api.test_errors_and_auth import assert_error
from tests.timing import scaled, wait_for


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def create(client: TestClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/v1/keys", json=body, headers=auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


def works(client: TestClient, key: str) -> bool:
    """Whether the key is let in (any key may list its tenant's keys)."""
    return client.get("/v1/keys", headers=bearer(key)).status_code == 200


def test_an_admin_key_creates_lists_rotates_and_revokes_keys(
    client: TestClient, auth: dict[str, str], key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    made = create(client, auth, label="ci", expires_in_days=30)
    assert made["key"].startswith("gm_") and made["prefix"] == made["key"][:10]
    assert (made["label"], made["admin"], made["revoked_at"]) == ("ci", False, None)
    assert works(client, made["key"])

    listing = client.get("/v1/keys", headers=auth).json()
    assert listing["object"] == "list"
    by_id = {k["id"]: k for k in listing["data"]}
    assert by_id[made["id"]]["label"] == "ci" and by_id[made["id"]]["expires_at"]
    assert by_id[made["id"]]["last_used_at"] is not None  # it was used just above
    assert "key" not in by_id[made["id"]] and "key_hash" not in by_id[made["id"]]
    assert made["key"] not in str(listing) and key not in str(listing)

    rotated = client.post(f"/v1/keys/{made['id']}/rotate", headers=auth).json()
    assert (rotated["label"], rotated["admin"], rotated["expires_at"]) == (
        "ci",
        False,
        made["expires_at"],
    )
    assert rotated["id"] != made["id"] and works(client, rotated["key"])
    assert not works(client, made["key"])  # this process cached it; the rotation dropped it

    revoked = client.delete(f"/v1/keys/{rotated['id']}", headers=auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert not works(client, rotated["key"])
    for secret in (key, made["key"], rotated["key"]):
        assert secret not in caplog.text


def test_a_rotated_key_works_through_its_grace_period(
    client: TestClient, auth: dict[str, str]
) -> None:
    made = create(client, auth, label="deploy")
    body = {"grace_seconds": 600}
    rotated = client.post(f"/v1/keys/{made['id']}/rotate", json=body, headers=auth).json()
    assert works(client, made["key"]) and works(client, rotated["key"])
    old = {k["id"]: k for k in client.get("/v1/keys", headers=auth).json()["data"]}[made["id"]]
    assert old["revoked_at"] > rotated["created_at"]  # it stops working when the grace ends
    client.delete(f"/v1/keys/{made['id']}", headers=auth)  # …or at once, when revoked
    assert not works(client, made["key"])


def test_a_key_that_is_not_admin_may_list_but_not_manage_keys(
    client: TestClient, auth: dict[str, str]
) -> None:
    plain = create(client, auth, label="laptop")
    as_plain = bearer(plain["key"])
    assert client.get("/v1/keys", headers=as_plain).status_code == 200
    error = assert_error(client.post("/v1/keys", json={}, headers=as_plain), 403, "forbidden")
    assert error["type"] == "permission_error"
    assert_error(client.delete(f"/v1/keys/{plain['id']}", headers=as_plain), 403, "forbidden")
    assert_error(client.post(f"/v1/keys/{plain['id']}/rotate", headers=as_plain), 403)
    assert works(client, plain["key"])


def test_another_tenants_key_id_is_404(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    theirs = create(client, other_auth, label="globex ci")
    assert_error(client.delete(f"/v1/keys/{theirs['id']}", headers=auth), 404, "key_not_found")
    assert_error(client.post(f"/v1/keys/{theirs['id']}/rotate", headers=auth), 404)
    assert theirs["id"] not in str(client.get("/v1/keys", headers=auth).json())
    assert works(client, theirs["key"])


def test_the_last_admin_key_cannot_be_revoked(
    client: TestClient, auth: dict[str, str], acme: Any
) -> None:
    error = assert_error(client.delete(f"/v1/keys/{acme.key_id}", headers=auth), 409)
    assert error["code"] == "key.last_admin" and "last admin key" in error["message"]
    second = create(client, auth, label="second admin", admin=True)
    assert client.delete(f"/v1/keys/{acme.key_id}", headers=auth).status_code == 200
    as_second = bearer(second["key"])
    assert_error(
        client.delete(f"/v1/keys/{second['id']}", headers=as_second), 409, "key.last_admin"
    )
    assert works(client, second["key"])


def test_an_expired_key_is_refused_like_an_unknown_one(
    client: TestClient, auth: dict[str, str], factory: sessionmaker[Session]
) -> None:
    made = create(client, auth, label="temp", expires_in_days=1)
    with factory() as session:  # a day goes by
        past = utcnow() - timedelta(seconds=1)
        session.execute(update(ApiKey).where(ApiKey.id == made["id"]).values(expires_at=past))
        session.commit()
    expired = client.get("/v1/keys", headers=bearer(made["key"]))
    unknown = client.get("/v1/keys", headers=bearer("gm_not-a-real-key"))
    assert (expired.status_code, expired.json()) == (401, unknown.json())


def test_an_expiry_in_the_past_or_twice_is_refused(
    client: TestClient, auth: dict[str, str]
) -> None:
    past = (utcnow() - timedelta(days=1)).isoformat()
    assert_error(client.post("/v1/keys", json={"expires_at": past}, headers=auth), 422)
    body = {"expires_at": (utcnow() + timedelta(days=1)).isoformat(), "expires_in_days": 1}
    assert_error(client.post("/v1/keys", json=body, headers=auth), 422)


def test_a_revoked_key_is_refused_by_another_api_process_within_the_cache_window(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    made = create(client, auth, label="leaked")
    with TestClient(create_app(settings, run_reaper=False)) as other:  # a second API process
        assert works(other, made["key"])  # …which now trusts it for auth_cache_seconds
        assert client.delete(f"/v1/keys/{made['id']}", headers=auth).status_code == 200
        assert not works(client, made["key"])  # at once where it was revoked
        window = settings.auth_cache_seconds
        wait_for(lambda: not works(other, made["key"]), timeout=window + 1, what="refusal")


def test_a_trusted_key_is_refused_once_it_expires(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    soon = utcnow() + timedelta(seconds=scaled(3))
    made = create(client, auth, label="short-lived", expires_at=soon.isoformat())
    trusting = settings.model_copy(update={"auth_cache_seconds": 3600})
    with TestClient(create_app(trusting, run_reaper=False)) as other:
        assert works(other, made["key"])  # cached, but never past the key's expiry
        wait_for(lambda: not works(other, made["key"]), timeout=3 + 1, what="expiry")


def test_key_creation_is_idempotent_under_an_idempotency_key(
    client: TestClient, auth: dict[str, str]
) -> None:
    headers = {**auth, "Idempotency-Key": "make-ci-key"}
    first = client.post("/v1/keys", json={"label": "ci"}, headers=headers)
    again = client.post("/v1/keys", json={"label": "ci"}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    labels = [k["label"] for k in client.get("/v1/keys", headers=auth).json()["data"]]
    assert labels.count("ci") == 1
    # Only the secret's hash is kept: the retry got a fresh one, and the lost one is void.
    assert not works(client, first.json()["key"]) and works(client, again.json()["key"])
    used = client.post("/v1/keys", json={"label": "ci"}, headers=headers)
    assert_error(used, 409, "idempotency_key.key_in_use")
    other_body = client.post("/v1/keys", json={"label": "cd"}, headers=headers)
    assert_error(other_body, 400, "idempotency_key.reused")
