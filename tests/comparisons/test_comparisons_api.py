"""Blind side-by-side comparisons through the API: two imported tiny models answer two prompts
in a ``compare`` job, an invited rater (no API key) and a key holder vote, and the results,
chart and export name the models only there."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base


def _model(
    client: TestClient, auth: dict[str, str], run_job: RunJob, folder: Path, seed: int = 0
) -> str:
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", folder, seed=seed)))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    return str(model["id"])


def test_a_comparison_is_generated_rated_blind_and_scored(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    run_job: RunJob,
    tmp_path: Path,
) -> None:
    first = _model(client, auth, run_job, tmp_path / "a")
    second = _model(client, auth, run_job, tmp_path / "b", seed=1)
    body = {
        "models": [first, second],
        "prompts": ["The capital of France is", "Once upon a time"],
        "max_tokens": 4,
        "temperature": 0.0,
        "seed": 7,
    }
    foreign = client.post("/v1/comparisons", json=body, headers=other_auth)
    assert foreign.status_code == 400 and foreign.json()["error"]["param"] == "models.0"
    assert client.post("/v1/comparisons", json={**body, "models": [first]}, headers=auth)\
        .status_code == 422  # fmt: skip

    created = client.post("/v1/comparisons", json=body, headers=auth)
    assert created.status_code == 202, created.text
    comparison = created.json()
    cid = comparison["id"]
    assert comparison["status"] == "generating" and comparison["models"] == [first, second]
    early = client.get(f"/v1/comparisons/{cid}/next", headers=auth)
    assert early.status_code == 409 and early.json()["error"]["code"] == "comparison.not_open"

    job = run_job(comparison["job_id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["prompts"] == 2
    opened = client.get(f"/v1/comparisons/{cid}", headers=auth).json()
    assert opened["status"] == "open" and opened["prompts"] == 2

    # Another tenant sees nothing of it.
    for path in ("", "/results", "/chart.png", "/votes.jsonl", "/next"):
        assert client.get(f"/v1/comparisons/{cid}{path}", headers=other_auth).status_code == 404
    assert client.post(f"/v1/comparisons/{cid}/raters", headers=other_auth).status_code == 404

    invite = client.post(f"/v1/comparisons/{cid}/raters", json={"name": "Ada"}, headers=auth)
    assert invite.status_code == 201, invite.text
    token = invite.json()["token"]
    assert invite.json()["url"] == f"/rate/{token}"
    page = client.get(f"/rate/{token}")
    assert page.status_code == 200 and cid in page.text and "http" not in page.text.lower()
    # Never framed (clickjacking the vote buttons); only its own script and style run.
    assert page.headers["X-Frame-Options"] == "DENY"
    policy = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "script-src 'sha256-" in policy and "unsafe-inline" not in policy
    assert client.get("/rate/gmr_nope").status_code == 404

    # The invited rater, without a key: by bearer token (as the page does), header or query.
    bearer = {"Authorization": f"Bearer {token}"}
    shown = client.get(f"/v1/comparisons/{cid}/next", headers=bearer)
    assert shown.status_code == 200, shown.text
    pair = shown.json()
    assert set(pair) == {"ticket", "prompt", "a", "b"}
    assert first not in json.dumps(pair) and second not in json.dumps(pair)
    voted = client.post(
        f"/v1/comparisons/{cid}/votes",
        json={"ticket": pair["ticket"], "choice": "a", "note": "clearer"},
        headers={"X-Rater-Token": token},
    )
    assert voted.status_code == 201 and voted.json() == {"votes": 1}
    again = client.post(
        f"/v1/comparisons/{cid}/votes?token={token}", json={"ticket": pair["ticket"], "choice": "b"}
    )
    assert again.status_code == 409
    second_pair = client.get(f"/v1/comparisons/{cid}/next?token={token}").json()
    assert second_pair["ticket"] != pair["ticket"]
    long_note = {"ticket": second_pair["ticket"], "choice": "tie", "note": "x" * 1001}
    assert client.post(f"/v1/comparisons/{cid}/votes", json=long_note, headers=bearer)\
        .status_code == 422  # fmt: skip
    assert client.post(
        f"/v1/comparisons/{cid}/votes",
        json={"ticket": second_pair["ticket"], "choice": "b"},
        headers=bearer,
    ).json() == {"votes": 2}
    assert client.get(f"/v1/comparisons/{cid}/next", headers=bearer).json() == {"done": True}

    # A token works only for its own comparison; a made-up one not at all; no key, no entry.
    other_id = "cmp_01JAAAAAAAAAAAAAAAAAAAAAAA"
    assert client.get(f"/v1/comparisons/{other_id}/next", headers=bearer).status_code == 404
    bad = client.get(f"/v1/comparisons/{cid}/next", headers={"X-Rater-Token": "gmr_forged"})
    assert bad.status_code == 401
    assert client.get(f"/v1/comparisons/{cid}/next").status_code == 401
    assert client.get(f"/v1/comparisons/{cid}/results", headers=bearer).status_code == 401
    # A ticket is the rater's own: the key holder cannot spend the invited rater's.
    stolen = client.post(
        f"/v1/comparisons/{cid}/votes", json={"ticket": pair["ticket"], "choice": "a"},
        headers=auth,
    )  # fmt: skip
    assert stolen.status_code == 400 and stolen.json()["error"]["code"] == "vote.bad_ticket"

    # The tenant's own key rates too, as a rater of its own.
    mine = client.get(f"/v1/comparisons/{cid}/next", headers=auth).json()
    assert client.post(
        f"/v1/comparisons/{cid}/votes", json={"ticket": mine["ticket"], "choice": "both_bad"},
        headers=auth,
    ).json() == {"votes": 1}  # fmt: skip

    results = client.get(f"/v1/comparisons/{cid}/results", headers=auth).json()
    assert results["votes"] == 3 and results["raters"] == 2
    assert {row["model"] for row in results["ladder"]} == {first, second}
    for row in results["ladder"]:
        assert row["ci95"][0] <= row["rating"] <= row["ci95"][1]
    assert results["votes_per_model"] == {first: 3, second: 3}
    assert results["outcomes"] == {"a": 1, "b": 1, "tie": 0, "both_bad": 1}
    assert results["left_win_rate"] == 0.5
    assert set(results["win_rate"][first]) == {second}
    chart = client.get(f"/v1/comparisons/{cid}/chart.png", headers=auth)
    assert chart.status_code == 200 and chart.content[:8] == b"\x89PNG\r\n\x1a\n"
    lines = client.get(f"/v1/comparisons/{cid}/votes.jsonl", headers=auth).text.splitlines()
    votes = [json.loads(line) for line in lines]
    assert len(votes) == 3 and votes[0]["note"] == "clearer"
    assert {votes[0]["model_a"], votes[0]["model_b"]} == {first, second}


def test_a_cancelled_generation_fails_the_comparison_and_rater_calls_keep_the_edge_rules(
    client: TestClient,
    auth: dict[str, str],
    settings: Settings,
    run_job: RunJob,
    tmp_path: Path,
) -> None:
    first = _model(client, auth, run_job, tmp_path / "a")
    second = _model(client, auth, run_job, tmp_path / "b", seed=1)
    body = {"models": [first, second], "prompts": ["Hi"], "max_tokens": 2}
    comparison = client.post("/v1/comparisons", json=body, headers=auth).json()
    cid = comparison["id"]
    token = client.post(f"/v1/comparisons/{cid}/raters", headers=auth).json()["token"]
    assert client.post(f"/v1/jobs/{comparison['job_id']}/cancel", headers=auth).status_code == 200

    assert client.get(f"/v1/comparisons/{cid}", headers=auth).json()["status"] == "failed"
    closed = client.get(f"/v1/comparisons/{cid}/next", headers={"X-Rater-Token": token})
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "comparison.not_open"
    unclosable = client.post(f"/v1/comparisons/{cid}/close", headers=auth)
    assert unclosable.status_code == 409 and "only an open" in unclosable.json()["error"]["message"]
    # A rater's body is bounded like anyone's; the query is checked for NUL.
    huge = {"ticket": "t", "choice": "a", "note": "x" * (2 << 20)}
    too_big = client.post(f"/v1/comparisons/{cid}/votes?token={token}", json=huge)
    assert too_big.status_code == 413
    assert client.get(f"/v1/comparisons/{cid}/next?token=a%00b").status_code == 422
    # …and rate limited per token.
    app = create_app(
        settings.model_copy(
            update={"rate_limit": "2/minute", "rate_limit_storage_url": "memory://"}
        ),
        run_reaper=False,
    )
    with TestClient(app, raise_server_exceptions=False) as limited:
        headers = {"X-Rater-Token": token}
        answers = [limited.get(f"/v1/comparisons/{cid}/next", headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [409, 409, 429]
