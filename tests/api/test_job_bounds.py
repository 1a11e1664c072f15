"""Sizes a job asks for are bounded at submission: evaluate's samples, and threads by the cores
of the queue the job goes to (a 422 naming the field, before anything is queued)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app import layout
from app.artifacts import service as artifacts
from app.artifacts.tables import Artifact
from app.main import create_app
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error


def _model(factory: sessionmaker[Session], tenant: str) -> str:
    """A ready model row: submission checks it exists, nothing here reads its files."""
    model_id = artifacts.new_artifact_id("model")
    with factory() as session:
        session.add(
            Artifact(
                id=model_id,
                tenant_id=tenant,
                category="model",
                name="tiny",
                uri=layout.artifact("model", model_id),
                format="huggingface",
                size_bytes=2,
                sha256="0" * 64,
            )
        )
        session.commit()
    return model_id


@pytest.mark.parametrize(
    ("samples", "param"),
    [
        ({"prompts": ["p"], "seeds": list(range(65))}, "params.samples.seeds"),
        ({"prompts": ["p"], "seeds": [2**63]}, "params.samples.seeds.0"),
        ({"prompts": ["p"], "seeds": [-1]}, "params.samples.seeds.0"),
        ({"prompts": ["p", "x" * 4001]}, "params.samples.prompts.1"),
        ({"prompts": ["p"] * 200, "seeds": list(range(6))}, "params.samples.seeds"),
    ],
)
def test_evaluate_samples_are_bounded(
    client: TestClient, auth: dict[str, str], samples: dict[str, Any], param: str
) -> None:
    body = {"type": "evaluate", "params": {"model_id": "model-x", "samples": samples}}
    assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, param=param)


@pytest.mark.parametrize(
    ("kind", "params", "param"),
    [
        ("evaluate", {"samples": {"prompts": ["p"]}, "threads": 3}, "params.threads"),
        ("quantize", {"gguf": {"threads": 3}}, "params.gguf.threads"),
    ],
)
def test_threads_are_bounded_by_the_queues_cores(
    settings: Settings,
    factory: sessionmaker[Session],
    tenant: str,
    auth: dict[str, str],
    kind: str,
    params: dict[str, Any],
    param: str,
) -> None:
    model_id = _model(factory, tenant)
    app = create_app(settings.model_copy(update={"queue_cores": {"cpu": 2}}), run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"type": kind, "params": {"model_id": model_id, **params}}
        error = assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, param=param)
        assert "offer 2" in error["message"]
        jobs = client.get("/v1/jobs", headers=auth).json()["data"]
        assert jobs == []  # refused before anything was queued

        # As many threads as cores: accepted.
        within = {"type": kind, "params": _with_threads({"model_id": model_id, **params}, 2)}
        assert client.post("/v1/jobs", json=within, headers=auth).status_code == 202


def _with_threads(params: dict[str, Any], threads: int) -> dict[str, Any]:
    if "gguf" in params:
        return {**params, "gguf": {**params["gguf"], "threads": threads}}
    return {**params, "threads": threads}
