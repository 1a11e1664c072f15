"""Two machines that share only Postgres, Redis and a bucket: a pretraining job whose worker is
killed on one machine resumes on the other from the checkpoint in the bucket, and ends exactly
where an uninterrupted run ends; an inference service on a third data folder serves the model."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.store.folders import MANIFEST
from app.store.s3 import S3Store
from tests.e2e import procs
from tests.e2e.procs import GRISTMILL, Proc
from tests.e2e.stack import Api, Stack, StackFactory
from tests.s3server import MotoServer, s3_options, storage_env
from tests.serving import free_port
from tests.timing import wait_for

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"
LEASE_S = 4
TRAIN_S = 120
"""Seconds a pretraining run below may take, start to end (a few on an idle two-core machine)."""
CHECKPOINT_EVERY = 10
# The `tiny` preset, 160 steps: the first checkpoint reaches the bucket long before the end. The
# tokenizer is trained inline, in the job's work folder: machine B must fetch it with the
# checkpoint, or the checkpoint would not match the tokenizer B trained.
PRETRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "context_length": 64},
    "tokenizer": {"vocab_size": 300},
    "max_steps": 160,
    "global_batch_tokens": 512,
    "micro_batch_size": 8,
    "lr": 2e-3,
    "warmup_steps": 10,
    "log_interval": 5,
    "eval_interval": 160,
    "eval_batches": 2,
    "checkpoint_interval": CHECKPOINT_EVERY,
    "sample_tokens": 0,
}


@dataclass
class Machines:
    a: Stack
    b: Stack
    inference: Proc
    """``gristmill inference`` on a third data folder; the API forwards completions to it."""
    inference_url: str
    bucket: S3Store


@pytest.fixture
def machines(
    make_stack: StackFactory, moto_server: MotoServer, bucket: str, tmp_path: Path
) -> Machines:
    """Machines A and B (an API and a worker each, started by the test) and C (the inference
    service, started now: it loads the ML stack while A trains): each its own data folder
    (scratch, cache), all on one bucket."""
    env = storage_env(moto_server.url, bucket)
    s3 = {k.removeprefix("GRISTMILL_").lower(): v for k, v in env.items() if "GRISTMILL_" in k}
    inference_url = f"http://127.0.0.1:{free_port()}"
    a = make_stack(job_lease_seconds=LEASE_S, inference_url=inference_url, **s3)
    b = make_stack(job_lease_seconds=LEASE_S, inference_url=inference_url, **s3)
    port = inference_url.rsplit(":", 1)[1]
    inference = procs.start(
        "inference",
        [GRISTMILL, "inference", "--host", "127.0.0.1", "--port", port],
        env=procs.clean_env(data_dir=str(tmp_path / "c"), inference_device="cpu", **s3),
        log_dir=tmp_path / "c" / "logs",
    )
    a.started.append(inference)  # stopped with machine A's processes
    store = S3Store(bucket, "gristmill/", s3_options(moto_server.url))
    return Machines(a, b, inference, inference_url, store)


def stored_checkpoints(bucket: S3Store, job_id: str) -> list[str]:
    """The complete checkpoints of the job in the bucket (their manifest is written last)."""
    prefix = f"jobs/{job_id}/work/checkpoints"
    return [i.key for i in bucket.list(prefix) if i.key.endswith(f"/{MANIFEST}")]


def loss_curve(api: Api, job_id: str) -> dict[int, float]:
    page = api.get(f"/v1/jobs/{job_id}/metrics?name=train_loss&limit=5000")
    return {m["step"]: m["value"] for m in page["data"]}


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def assert_downloads_and_loads(api: Api, model_id: str, into: Path) -> None:
    response = api.client.get(f"/v1/models/{model_id}/content", headers=api.auth)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(into, filter="data")
    folder = next(p.parent for p in into.rglob("config.json"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = AutoTokenizer.from_pretrained(folder)("Once upon a time", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids["input_ids"]).logits).all()


@pytest.mark.timeout(300)  # two short pretraining runs, three cold processes; times the factor
def test_a_job_killed_on_one_machine_finishes_on_another_from_the_bucket(
    machines: Machines, tmp_path: Path
) -> None:
    """upload → prepare → pretrain on machine A; SIGKILL of A's worker once a checkpoint is
    complete in the bucket → machine B, which never saw A's folders, resumes the job from that
    checkpoint and ends with the losses and loss curve of an uninterrupted run; the model
    downloads through the API and loads in transformers, and the inference service on a third
    folder answers a completion from it."""
    a, b, bucket = machines.a, machines.b, machines.bucket
    a.start_api()
    a.start_worker()
    logs = a.logs + b.logs
    lines = CORPUS.read_bytes().splitlines(keepends=True)[:1200]
    source = a.api.upload("/v1/datasets", "stories.jsonl", b"".join(lines), logs=logs)["id"]
    prepared = a.api.run_job(
        "prepare", {"dataset_id": source, "validation_fraction": 0.1}, logs=logs
    )
    split = prepared["result"]["dataset_ids"]
    params = {
        "dataset_id": split["train"],
        "validation_dataset_id": split["validation"],
        **PRETRAIN,
    }
    baseline = a.api.run_job("pretrain", params, timeout=TRAIN_S, logs=logs)

    job_id = str(a.api.post("/v1/jobs", json={"type": "pretrain", "params": params})["id"])
    stored = wait_for(
        lambda: stored_checkpoints(bucket, job_id),
        timeout=TRAIN_S,
        interval=0.1,
        what="a checkpoint complete in the bucket",
        logs=a.logs,
    )
    a.kill_worker()
    assert a.api.job(job_id)["status"] == "running", "the kill came too late"
    b.start_worker()
    logs = a.logs + b.logs
    resumed = a.api.wait_status(job_id, "succeeded", timeout=TRAIN_S + LEASE_S + 30, logs=logs)

    assert resumed["attempt"] == 2
    resumed_from = resumed["result"]["resumed_from_step"]
    first_stored = int(stored[0].split("/step_")[1].split("/")[0])
    assert resumed_from is not None and first_stored <= resumed_from < PRETRAIN["max_steps"]
    assert not (b.root / "data" / "scratch" / "jobs" / job_id).exists()  # cleaned on success
    for key in ("final_train_loss", "final_val_loss", "steps", "tokens_seen"):
        assert resumed["result"][key] == baseline["result"][key], key
    expected = loss_curve(a.api, baseline["id"])
    curve = loss_curve(a.api, job_id)
    assert set(range(resumed_from + 5, PRETRAIN["max_steps"] + 1, 5)) <= set(curve)
    assert curve == {step: expected[step] for step in curve}
    assert not stored_checkpoints(bucket, job_id)  # a finished job's checkpoints are deleted

    assert_downloads_and_loads(a.api, resumed["result"]["model_id"], tmp_path / "model")

    wait_for(
        lambda: healthy(f"{machines.inference_url}/health"),
        timeout=120,
        what="the inference service's /health",
        logs=[machines.inference],
    )
    completion = a.api.client.post(
        "/v1/completions",
        headers=a.api.auth,
        json={"model": resumed["result"]["model_id"], "prompt": "Once upon", "max_tokens": 4},
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] > 0
    assert httpx.get(f"{machines.inference_url}/health").json()["store_downloads"] > 0
