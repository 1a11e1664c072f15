"""Tokenizer and pretraining jobs through the API and the job layer, down to loadable files."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from tests.conftest import RunJob
from tests.timing import scaled

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"
TINY = {
    "model": {"preset": "tiny", "context_length": 64},
    "max_steps": 30,
    "global_batch_tokens": 1024,
    "micro_batch_size": 8,
    "lr": 3e-3,
    "warmup_steps": 5,
    "log_interval": 5,
    "eval_interval": 15,
    "eval_batches": 2,
    "checkpoint_interval": 10,
    "sample_tokens": 8,
}


def upload_stories(client: TestClient, auth: dict[str, str], run_job: RunJob) -> str:
    """The shipped story corpus as the caller's dataset, validated to ``ready``."""
    data = b"".join(CORPUS.read_bytes().splitlines(keepends=True)[:1500])
    dataset = client.post(
        "/v1/datasets", files={"file": ("stories.jsonl", io.BytesIO(data))}, headers=auth
    ).json()
    assert run_job(dataset["job_id"])["status"] == "succeeded"
    return str(dataset["id"])


@pytest.fixture
def stories(client: TestClient, auth: dict[str, str], run_job: RunJob) -> str:
    return upload_stories(client, auth, run_job)


def submit(client: TestClient, auth: dict[str, str], job_type: str, params: dict) -> dict:
    response = client.post("/v1/jobs", json={"type": job_type, "params": params}, headers=auth)
    assert response.status_code == 202, response.text
    return response.json()


def test_tokenizer_job_registers_a_loadable_tokenizer(
    client: TestClient, auth: dict[str, str], stories: str, run_job: RunJob
) -> None:
    job = submit(client, auth, "tokenizer", {"dataset_id": stories, "vocab_size": 400})

    done = run_job(job["id"])

    assert done["status"] == "succeeded", done["error"]
    tokenizer = client.get(f"/v1/tokenizers/{done['result']['tokenizer_id']}", headers=auth).json()
    assert tokenizer["object"] == "tokenizer"
    assert tokenizer["lineage"] == {
        **tokenizer["lineage"],
        "dataset_id": stories,
        "job_id": job["id"],
    }
    assert tokenizer["details"]["bytes_per_token"] > 1
    files = {
        f["path"]
        for f in client.get(f"/v1/tokenizers/{tokenizer['id']}/files", headers=auth).json()["data"]
    }
    assert "tokenizer.json" in files


def test_pretrain_job_produces_a_model_that_loads_anywhere(
    client: TestClient,
    auth: dict[str, str],
    stories: str,
    run_job: RunJob,
    tmp_path: Path,
    settings: Settings,
) -> None:
    tok = run_job(
        submit(client, auth, "tokenizer", {"dataset_id": stories, "vocab_size": 400})["id"],
    )
    tokenizer_id = tok["result"]["tokenizer_id"]
    job = submit(
        client, auth, "pretrain", {"dataset_id": stories, "tokenizer_id": tokenizer_id, **TINY}
    )
    assert job["status"] == "queued"

    done = run_job(job["id"])

    assert done["status"] == "succeeded", done["error"]
    result = done["result"]
    assert result["final_val_perplexity"] < result["unigram_val_perplexity"]
    assert done["progress"]["step"] == 30
    assert not (settings.resolved_storage_dir / "jobs" / job["id"]).exists()  # checkpoints gone
    losses = client.get(f"/v1/jobs/{job['id']}/metrics?name=train_loss", headers=auth).json()[
        "data"
    ]
    assert [m["step"] for m in losses] == [5, 10, 15, 20, 25, 30]
    assert losses[-1]["value"] < losses[0]["value"]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    assert any(e["data"] and "samples" in str(e["data"]) for e in events)

    model = client.get(f"/v1/models/{result['model_id']}", headers=auth).json()
    assert model["lineage"]["tokenizer_id"] == tokenizer_id
    assert model["lineage"]["dataset_id"] == stories and model["lineage"]["job_id"] == job["id"]
    archive = client.get(f"/v1/models/{model['id']}/content", headers=auth)
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / model["id"]
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))
    load = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "ids = t('Once upon a time', return_tensors='pt').input_ids\n"
        "print(t.decode(m.generate(ids, max_new_tokens=5, do_sample=False)[0]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", load, str(folder)],
        capture_output=True, text=True, timeout=scaled(120),
        env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Once upon a time")


def test_pretrain_with_an_inline_tokenizer_registers_both(
    client: TestClient, auth: dict[str, str], stories: str, run_job: RunJob
) -> None:
    params = {"dataset_id": stories, "tokenizer": {"vocab_size": 400}, **TINY, "max_steps": 10}
    done = run_job(submit(client, auth, "pretrain", params)["id"])

    assert done["status"] == "succeeded", done["error"]
    tokenizer = client.get(f"/v1/tokenizers/{done['result']['tokenizer_id']}", headers=auth)
    assert tokenizer.status_code == 200
    assert [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]] == [
        done["result"]["model_id"]
    ]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"model": {"preset": None, "layers": 2, "heads": 3, "kv_heads": 3, "hidden_size": 64,
                    "intermediate_size": 128, "context_length": 64, "rope_theta": 1e4,
                    "tied_embeddings": True}}, "params.model.heads"),
        ({"global_batch_tokens": 1000}, "params.global_batch_tokens"),
        ({"tokenizer_id": "tok_01ARZ3NDEKTSV4RRFFQ69G5FAV", "tokenizer": {}}, "params.tokenizer"),
        ({"lr": -1}, "params.lr"),
    ],
)  # fmt: skip
def test_bad_pretrain_parameters_name_the_field(
    client: TestClient, auth: dict[str, str], params: dict, param: str
) -> None:
    body = {
        "type": "pretrain",
        "params": {"dataset_id": "ds_01ARZ3NDEKTSV4RRFFQ69G5FAV", **TINY, **params},
    }
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_pretrain_refuses_another_tenants_tokenizer(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    stories: str,
    run_job: RunJob,
) -> None:
    """The other tenant names its own ready dataset and our tokenizer → 400 on the tokenizer:
    only the tokenizer's ownership check stands between the request and a queued job."""
    tokenizer = run_job(
        submit(client, auth, "tokenizer", {"dataset_id": stories, "vocab_size": 300})["id"]
    )["result"]["tokenizer_id"]
    their_stories = upload_stories(client, other_auth, run_job)
    body = {
        "type": "pretrain",
        "params": {"dataset_id": their_stories, "tokenizer_id": tokenizer, **TINY},
    }

    response = client.post("/v1/jobs", json=body, headers=other_auth)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "params.tokenizer_id"
    assert client.get(f"/v1/tokenizers/{tokenizer}", headers=other_auth).status_code == 404
    their_jobs = client.get("/v1/jobs?type=pretrain", headers=other_auth).json()["data"]
    assert their_jobs == []


@pytest.mark.slow
def test_pretrain_on_two_processes_runs_under_torchrun(
    client: TestClient, auth: dict[str, str], stories: str, run_job: RunJob
) -> None:
    """``devices: 2`` → the job runs under torchrun (gloo on CPU), rank 0 reports through files,
    and the model is registered like any other."""
    params = {"dataset_id": stories, "tokenizer": {"vocab_size": 400}, **TINY, "devices": 2}
    params["global_batch_tokens"] = 2 * 8 * 64

    done = run_job(submit(client, auth, "pretrain", params)["id"])

    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["step"] == TINY["max_steps"]
    model = client.get(f"/v1/models/{done['result']['model_id']}", headers=auth).json()
    assert model["lineage"]["tokenizer_id"] == done["result"]["tokenizer_id"]
