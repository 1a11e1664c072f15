"""Model judges on a comparison, with real tiny models run by the real runtime: each pair is
asked in both orders, so a judge that always names the first answer gives only ties (and a
position bias of 1), while one that follows the answers agrees with the planted truth and with
the people who voted on the same pairs."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.comparisons.judge_models import MODELS
from tests.comparisons.judging import (
    judge,
    judge_figures,
    make_planted_comparison,
    upload_judge,
    vote_for_the_marker,
)
from tests.conftest import RunJob


def test_a_first_position_judge_only_ties_and_a_marker_judge_agrees_with_people(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tenant: str,
    tmp_path: Path,
) -> None:
    cid = make_planted_comparison(factory, tenant)
    assert vote_for_the_marker(client, auth, cid) == 6
    first = upload_judge(client, auth, run_job, tmp_path / "first", "first")
    marker = upload_judge(client, auth, run_job, tmp_path / "marker", "marker")

    job = judge(client, auth, run_job, cid, {"model": first})
    assert job["status"] == "succeeded", job
    assert job["result"]["pairs"] == 6 and job["result"]["ties"] == 6
    assert job["result"]["position_bias"] == 1.0 and job["result"]["first_position"] == 1.0
    job = judge(client, auth, run_job, cid, {"model": marker, "device": "cpu"})
    assert job["status"] == "succeeded", job
    assert job["result"]["wins"] == 6 and job["result"]["position_bias"] == 0.0

    results = client.get(f"/v1/comparisons/{cid}/results", headers=auth).json()
    assert results["votes"] == 18 and results["raters"] == 3
    always_first = judge_figures(results, f"judge:{first}")
    assert always_first["votes"] == 6 and always_first["ties"] == 6
    assert always_first["position_bias"] == 1.0
    # People never tie here; this judge only ties: no agreement beyond chance.
    assert always_first["human_agreement"] == {
        "pairs": 6, "votes": 6, "agreement": 0.0, "kappa": 0.0
    }  # fmt: skip
    follows = judge_figures(results, f"judge:{marker}")
    assert follows["ties"] == 0 and follows["position_bias"] == 0.0
    assert follows["human_agreement"] == {"pairs": 6, "votes": 6, "agreement": 1.0, "kappa": 1.0}
    # Its votes name the planted winner of every pair (x's answer is marked on even prompts).
    export = client.get(f"/v1/comparisons/{cid}/votes.jsonl", headers=auth).text
    mine = [v for v in map(json.loads, export.splitlines()) if v["rater"] == follows["rater"]]
    winners = [v["model_a"] if v["outcome"] == "a" else v["model_b"] for v in mine]
    assert winners == [MODELS[i % 2] for i in range(6)]
    # Both sides marked equally often: the ladder stays level with people and judges alike.
    ratings = {row["model"]: row["rating"] for row in results["ladder"]}
    assert abs(ratings[MODELS[0]] - ratings[MODELS[1]]) < 1e-6

    # The judge's questions are the tenant's own, and one judge at a time.
    assert client.post(f"/v1/comparisons/{cid}/judges", json={"model": first},
                       headers=other_auth).status_code == 404  # fmt: skip
    both = {"model": first, "secret": "nope"}
    assert client.post(f"/v1/comparisons/{cid}/judges", json=both, headers=auth)\
        .status_code == 422  # fmt: skip
    bad_rubric = client.post(f"/v1/comparisons/{cid}/judges",
                             json={"model": first, "rubric": "no slots"}, headers=auth)  # fmt: skip
    assert bad_rubric.status_code == 400 and bad_rubric.json()["error"]["param"] == "rubric"
    foreign = upload_judge(client, other_auth, run_job, tmp_path / "foreign", "first")
    refused = client.post(f"/v1/comparisons/{cid}/judges", json={"model": foreign}, headers=auth)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
