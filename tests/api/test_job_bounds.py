"""Sizes a job asks for are bounded at submission: evaluate's samples, and threads by the cores
of the queue the job goes to (a 422 naming the field, before anything is queued)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.main import create_app
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error
from tests.factories import make_model


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
    model_id = make_model(factory, tenant)
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


def test_a_default_thread_count_is_left_to_the_stage_on_a_smaller_queue(
    settings: Settings, factory: sessionmaker[Session], tenant: str, auth: dict[str, str]
) -> None:
    """A comparison cannot set threads at all: its default (2) is clamped on a one-core worker
    at run time rather than refused."""
    model_id = make_model(factory, tenant)
    app = create_app(settings.model_copy(update={"queue_cores": {"cpu": 1}}), run_reaper=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        body = {"type": "evaluate", "params": {"model_id": model_id, "samples": {"prompts": ["p"]}}}
        assert client.post("/v1/jobs", json=body, headers=auth).status_code == 202
        body["params"]["threads"] = 3  # type: ignore[index]
        assert_error(client.post("/v1/jobs", json=body, headers=auth), 422, param="params.threads")
