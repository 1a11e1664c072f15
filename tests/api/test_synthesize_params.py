"""``synthesize`` parameters are refused before a job is queued, naming the field: the bounds on
prompts, samples and tokens that decide how long a job runs, and inputs that do not fit the mode."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

MODEL, DATASET = "mdl_01JAAAAAAAAAAAAAAAAAAAAAAA", "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"max_prompts": 10_001}, "params.max_prompts"),
        ({"mode": "preferences", "samples": 17}, "params.samples"),
        ({"max_new_tokens": 4097}, "params.max_new_tokens"),
        ({"num_instructions": 10_001}, "params.num_instructions"),
        ({"judge_model_id": MODEL}, "params.judge_model_id"),
        ({"eval_dataset_ids": [DATASET] * 2}, "params.eval_dataset_ids"),
        ({"checks": {"regurgitation_chars": 5}}, "params.checks.regurgitation_chars"),
    ],
)
def test_out_of_bounds_parameters_are_refused_naming_the_field(
    client: TestClient, auth: dict[str, str], params: dict[str, object], param: str
) -> None:
    body = {"type": "synthesize", "params": {"model_id": MODEL, "dataset_id": DATASET, **params}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_a_valid_request_is_checked_against_the_tenants_inputs(
    client: TestClient, auth: dict[str, str]
) -> None:
    body = {"type": "synthesize", "params": {"model_id": MODEL, "dataset_id": DATASET}}
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "params.model_id"  # inputs in declared order


ENDPOINT = {"secret": "teacher", "endpoint_model": "teacher-1", "dataset_id": DATASET}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"dataset_id": DATASET}, "params.model_id"),  # no teacher
        ({**ENDPOINT, "model_id": MODEL}, "params.model_id"),  # two teachers
        ({**ENDPOINT, "endpoint_model": None}, "params.endpoint_model"),
        (
            {"model_id": MODEL, "dataset_id": DATASET, "endpoint_model": "m"},
            "params.endpoint_model",
        ),
        ({**ENDPOINT, "chat_template": True}, "params.chat_template"),
        # An endpoint has no log-likelihoods: judge ranking needs a registry judge model.
        ({**ENDPOINT, "mode": "preferences"}, "params.judge_model_id"),
    ],
)
def test_an_endpoint_teacher_is_refused_where_it_cannot_serve_naming_the_field(
    client: TestClient, auth: dict[str, str], params: dict[str, object], param: str
) -> None:
    response = client.post("/v1/jobs", json={"type": "synthesize", "params": params}, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_an_endpoint_teacher_with_a_rule_or_a_judge_model_is_accepted_for_preferences(
    client: TestClient, auth: dict[str, str]
) -> None:
    for extra in ({"ranking": "length"}, {"judge_model_id": MODEL}):
        params = {**ENDPOINT, "mode": "preferences", **extra}
        response = client.post(
            "/v1/jobs", json={"type": "synthesize", "params": params}, headers=auth
        )
        assert response.status_code == 400, response.text  # past validation: the inputs
        assert response.json()["error"]["param"] == "params.dataset_id"
