"""Helpers for the judge tests: a comparison with planted answers, people's votes, a judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.comparisons import service
from app.comparisons.outputs import ComparisonAnswers
from app.comparisons.schemas import ComparisonCreate
from tests.comparisons.judge_models import MARKER, MODELS, build_judge, planted_answers
from tests.conftest import RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model


def make_planted_comparison(factory: sessionmaker[Session], tenant_id: str) -> str:
    """An open comparison whose answers were written as its ``compare`` job writes them."""
    prompts, answers = planted_answers()
    with factory() as session:
        comparison = service.add_comparison(
            session=session, comparison_id=service.new_comparison_id(), tenant_id=tenant_id,
            body=ComparisonCreate(models=list(MODELS), prompts=prompts),
        )  # fmt: skip
        session.flush()
        ComparisonAnswers(comparison.id, prompts, answers).record(session=session)
        session.commit()
        return comparison.id


def vote_for_the_marker(client: TestClient, auth: dict[str, str], cid: str) -> int:
    """A person (a key holder) votes on every pair for the answer holding the marker."""
    votes = 0
    while "ticket" in (pair := client.get(f"/v1/comparisons/{cid}/next", headers=auth).json()):
        choice = "a" if MARKER in pair["a"] else "b"
        body = {"ticket": pair["ticket"], "choice": choice}
        response = client.post(f"/v1/comparisons/{cid}/votes", json=body, headers=auth)
        assert response.status_code == 201, response.text
        votes += 1
    return votes


def upload_judge(
    client: TestClient, auth: dict[str, str], run_job: RunJob, folder: Path, prefers: str
) -> str:
    model = upload_model(client, auth, tar_bytes(build_judge(folder, prefers=prefers)))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    return str(model["id"])


def judge(
    client: TestClient, auth: dict[str, str], run_job: RunJob, cid: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Start a judge on the comparison, run its job, and return the job."""
    started = client.post(f"/v1/comparisons/{cid}/judges", json=body, headers=auth)
    assert started.status_code == 202, started.text
    return run_job(started.json()["job_id"])


def judge_figures(results: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [j for j in results["judges"] if j["name"] == name]
    return found
