"""The evaluate job through the API: an imported model scored on two datasets, checked for
contamination against a third, with the bias probe on a user template file and samples."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.jobs.tables import JobEvent
from tests.conftest import RunJob
from tests.jobs.test_model_jobs import job_of, tar_bytes, upload_model
from tests.pipeline.finetune_helpers import build_base
from tests.timing import scaled, wait_for


def _dataset(client: TestClient, auth: dict[str, str], run_job: RunJob, texts: list[str]) -> str:
    rows = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    dataset = client.post(
        "/v1/datasets", files={"file": ("d.jsonl", io.BytesIO(rows))}, headers=auth
    ).json()
    assert run_job(dataset["job_id"])["status"] == "succeeded"
    return str(dataset["id"])


def test_an_evaluate_job_returns_the_figures(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    shared = "the quick brown fox jumps over the lazy dog near the old river bank"
    stories = [f"Story {i}: {shared} and then {i} birds sang." for i in range(3)]
    stories += ["A completely different tale about a cat who slept all day long."]
    first = _dataset(client, auth, run_job, stories)
    second = _dataset(client, auth, run_job, ["Another small text.", "And one more line here."])
    train = _dataset(client, auth, run_job, [f"Training text: {shared}."])
    template = {
        "category": "age",
        "text": "We met {group} and they were {attribute}.",
        "group_a": "the old man",
        "group_b": "the young man",
        "stereotyped": ["slow"],
        "anti_stereotyped": ["quick"],
    }
    rows = "".join(
        json.dumps(template | {"frame_id": f"f{i}", "text": f"Day {i}: " + template["text"]}) + "\n"
        for i in range(3)
    ).encode()
    uploaded = client.post(
        "/v1/datasets", files={"file": ("bias.jsonl", io.BytesIO(rows))}, headers=auth
    ).json()
    assert run_job(uploaded["job_id"])["status"] == "succeeded"
    templates = uploaded["id"]
    body = {
        "type": "evaluate",
        "params": {
            "model_id": model["id"],
            "dataset_id": first,
            "extra_dataset_id": second,
            "training_dataset_id": train,
            "bias_templates_id": templates,
            "contamination": {"ngram": 8, "exclude": True},
            "bias": {"enabled": True, "bootstrap_samples": 50, "permutations": 50},
            "samples": {"prompts": ["Once upon a time"], "max_new_tokens": 4},
        },
    }
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 202, response.text
    done = run_job(response.json()["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert result["model_id"] == model["id"]
    one, two = result["perplexity"]
    assert one["dataset_id"] == first and two["dataset_id"] == second
    assert one["documents"] == 1 and one["excluded_documents"] == 3
    assert two["documents"] == 2 and one["bits_per_byte"] > 0 and two["word_perplexity"] > 1
    assert result["contamination"][0]["contaminated"] == 3
    assert result["bias"]["categories"]["age"]["n"] == 3
    assert len(result["samples"]) == 1

    bad = client.post(
        "/v1/jobs",
        json={"type": "evaluate", "params": {"model_id": first, "dataset_id": first}},
        headers=auth,
    )
    # A dataset's id where a model's belongs: the input check names the field.
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "params.model_id"


def test_an_evaluate_job_needs_no_training_text(
    client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path
) -> None:
    """Without training text contamination is skipped; with nothing to measure at all the job
    is refused at submission, naming the field, rather than failing later."""
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    text = _dataset(client, auth, run_job, ["A short text to score.", "And a second line."])

    params = {"model_id": model["id"], "dataset_id": text}
    response = client.post("/v1/jobs", json={"type": "evaluate", "params": params}, headers=auth)
    assert response.status_code == 202, response.text
    done = run_job(response.json()["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["result"]["perplexity"][0]["dataset_id"] == text
    assert done["result"]["contamination"] == []

    alone = {"type": "evaluate", "params": {"model_id": model["id"]}}
    refused = client.post("/v1/jobs", json=alone, headers=auth)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["param"] == "params.dataset_id"


def test_cancelling_an_evaluate_job_stops_its_sampling(
    client: TestClient,
    auth: dict[str, str],
    run_job: RunJob,
    factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    """1,024 generations of 512 tokens (minutes on this model); a cancel once sampling has begun
    ends the job within seconds, not after the last sample."""
    model = upload_model(client, auth, tar_bytes(build_base("qwen2", tmp_path / "base")))
    assert run_job(job_of(client, auth, model))["status"] == "succeeded"
    samples = {"prompts": [f"Story {i}:" for i in range(64)], "seeds": list(range(16))}
    params = {"model_id": model["id"], "samples": {**samples, "max_new_tokens": 512}}
    job = client.post("/v1/jobs", json={"type": "evaluate", "params": params}, headers=auth)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    result: list[str | None] = []
    worker = threading.Thread(target=lambda: result.append(run_job.execute(job_id)))
    worker.start()

    def sampling() -> bool:
        with factory() as session:
            started = select(func.count()).where(
                JobEvent.job_id == job_id, JobEvent.message.like("sampling %")
            )
            return bool(session.scalar(started))

    wait_for(sampling, timeout=30, what="sampling to begin")
    asked = time.monotonic()
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
    worker.join(timeout=scaled(30))

    assert result == ["cancelled"]
    assert time.monotonic() - asked < scaled(10)
