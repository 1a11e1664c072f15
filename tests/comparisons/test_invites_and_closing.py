"""The owner keeps control of a comparison: an invite link can be revoked (its token is refused
at once, everywhere) and the comparison closed to votes, its results still readable; guessing
tokens is throttled per address, and all of a comparison's raters share one rate limit."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.settings import Settings
from tests.comparisons.test_rating_at_scale import invite, open_comparison


def _vote(client: TestClient, cid: str, rater: dict[str, str]) -> int:
    pair = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()
    voted = client.post(
        f"/v1/comparisons/{cid}/votes", json={"ticket": pair["ticket"], "choice": "a"},
        headers=rater,
    )  # fmt: skip
    return voted.status_code


def test_a_revoked_invite_is_refused_at_once_and_its_votes_stay(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    cid = open_comparison(factory, tenant)
    invited = client.post(f"/v1/comparisons/{cid}/raters", json={"name": "Eve"}, headers=auth)
    rater_id, token = invited.json()["id"], invited.json()["token"]
    rater = {"X-Rater-Token": token}
    kept = invite(client, auth, cid)
    assert _vote(client, cid, rater) == 201
    pending = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()

    # Only the owner revokes, and only its own comparison's invites.
    path = f"/v1/comparisons/{cid}/raters/{rater_id}"
    assert client.delete(path, headers=other_auth).status_code == 404
    assert client.delete(path, headers=rater).status_code == 401
    missing = client.delete(f"/v1/comparisons/{cid}/raters/rtr_nope", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "rater.not_found"
    assert client.delete(path, headers=auth).status_code == 204
    assert client.delete(path, headers=auth).status_code == 204  # again: nothing changes

    for refused in (
        client.get(f"/v1/comparisons/{cid}/next", headers=rater),
        client.get(f"/v1/comparisons/{cid}/next?token={token}"),
        client.post(
            f"/v1/comparisons/{cid}/votes", json={"ticket": pending["ticket"], "choice": "b"},
            headers={"Authorization": f"Bearer {token}"},
        ),
    ):  # fmt: skip
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "rater.revoked"
    page = client.get(f"/rate/{token}")
    assert page.status_code == 410 and "revoked" in page.text
    # The other invite still works; the revoked rater's vote still counts.
    assert _vote(client, cid, kept) == 201
    results = client.get(f"/v1/comparisons/{cid}/results", headers=auth).json()
    assert results["votes"] == 2 and results["raters"] == 2


def test_a_closed_comparison_takes_no_votes_and_keeps_its_results(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    cid = open_comparison(factory, tenant)
    rater = invite(client, auth, cid)
    assert _vote(client, cid, rater) == 201
    pending = client.get(f"/v1/comparisons/{cid}/next", headers=rater).json()

    assert client.post(f"/v1/comparisons/{cid}/close", headers=other_auth).status_code == 404
    assert client.post(f"/v1/comparisons/{cid}/close", headers=rater).status_code == 401
    closed = client.post(f"/v1/comparisons/{cid}/close", headers=auth)
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert closed.json()["votes"] == 1
    assert client.post(f"/v1/comparisons/{cid}/close", headers=auth).json()["status"] == "closed"

    for refused in (
        client.get(f"/v1/comparisons/{cid}/next", headers=rater),
        client.post(
            f"/v1/comparisons/{cid}/votes", json={"ticket": pending["ticket"], "choice": "b"},
            headers=rater,
        ),
        client.get(f"/v1/comparisons/{cid}/next", headers=auth),
    ):  # fmt: skip
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "comparison.closed" and "no more votes" in error["message"]
    results = client.get(f"/v1/comparisons/{cid}/results", headers=auth)
    assert results.status_code == 200 and results.json()["votes"] == 1
    chart = client.get(f"/v1/comparisons/{cid}/chart.png", headers=auth)
    assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
    export = client.get(f"/v1/comparisons/{cid}/votes.jsonl", headers=auth)
    assert len(export.text.splitlines()) == 1


def _limited_app(settings: Settings, **limits: str) -> FastAPI:
    update = {"rate_limit_storage_url": "memory://", **limits}
    return create_app(settings.model_copy(update=update), run_reaper=False)


def test_unknown_rater_tokens_are_throttled_per_client_address(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    cid = open_comparison(factory, tenant)
    good = invite(client, auth, cid)
    token = good["X-Rater-Token"]
    app = _limited_app(settings, rater_failure_limit="3/minute")
    with TestClient(app, raise_server_exceptions=False, client=("203.0.113.9", 5000)) as guesser:
        guesses = [
            guesser.get(f"/v1/comparisons/{cid}/next", headers={"X-Rater-Token": f"gmr_{n}"})
            for n in range(2)
        ]
        guesses.append(guesser.get("/rate/gmr_guess"))  # the page counts too
        assert [g.status_code for g in guesses] == [401, 401, 404]
        # Out of failures: refused before any lookup, even with a real token, for a while.
        blocked = guesser.get(f"/v1/comparisons/{cid}/next", headers=good)
        assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) >= 1
        assert blocked.json()["error"]["code"] == "rate_limited.rater_tokens"
        assert guesser.get(f"/rate/{token}").status_code == 429
    with TestClient(app, raise_server_exceptions=False, client=("198.51.100.7", 5000)) as rater:
        assert rater.get(f"/v1/comparisons/{cid}/next", headers=good).status_code == 200
        assert rater.get(f"/rate/{token}").status_code == 200


def test_the_raters_of_one_comparison_share_a_rate_limit(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    factory: sessionmaker[Session],
    tenant: str,
) -> None:
    cid = open_comparison(factory, tenant)
    first, second = invite(client, auth, cid), invite(client, auth, cid)
    app = _limited_app(settings, rater_rate_limit="3/minute")
    with TestClient(app, raise_server_exceptions=False) as limited:
        answers = [
            limited.get(f"/v1/comparisons/{cid}/next", headers=rater)
            for rater in (first, first, second, second)
        ]
        # The key holder is not one of the invited raters: only its own key limit applies.
        assert limited.get(f"/v1/comparisons/{cid}/next", headers=auth).status_code == 200
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "this comparison's raters" in answers[3].json()["error"]["message"]
