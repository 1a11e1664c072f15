"""Fine-tunes whose whole worker is SIGKILLed after a checkpoint: Postgres' lease brings the job
back on a new worker, attempt 2 resumes from the checkpoint, and the run ends bit for bit where an
uninterrupted run of the same job ends (losses, per-step loss curve, checkpoints and weights)."""

from __future__ import annotations

import io
import json
import tarfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.e2e.procs import Proc
from tests.e2e.stack import Api, Stack, StackFactory
from tests.pipeline.finetune_helpers import build_base, chat_rows, task_split
from tests.timing import wait_for

pytestmark = pytest.mark.slow

LEASE_S = 4
# Seconds a fine-tune may take, start to end: ~10 on an idle two-core machine, most of it a
# fresh pool process importing the ML stack.
FINETUNE_S = 90
CHECKPOINT_EVERY = 30
METHODS = ("lora", "full")
# 64 chat examples, 8 held out, batches of 4: 14 steps an epoch, 560 in all (~5 s on an idle
# machine; the first checkpoint's event reaches the API about a second after it is written), so
# the kill lands mid-run however fast the machine. LoRA's dropout draws from the torch RNG at
# every step: a resume that did not restore it would drift at once.
FINETUNE: dict[str, Any] = {
    "n_epochs": 40,
    "batch_size": 4,
    "learning_rate": 3e-3,
    "validation_fraction": 0.125,
    "lora": {"rank": 4, "dropout": 0.1},
    "max_seq_len": 64,
    "checkpoint_interval": CHECKPOINT_EVERY,
    "eval_interval": 20,
    "eval_batches": 1,
    "sample_count": 0,
    "seed": 3,
}


def upload_model(api: Api, folder: Path, logs: list[Proc]) -> str:
    """Upload ``folder`` (HF layout) as a tar.gz and wait until its import job made it ready."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="tiny")
    return str(
        api.upload("/v1/models", "tiny.tar.gz", buffer.getvalue(), timeout=60, logs=logs)["id"]
    )


def loss_curve(api: Api, job_id: str) -> dict[int, float]:
    page = api.get(f"/v1/jobs/{job_id}/metrics?name=train_loss&limit=5000")
    assert not page["has_more"]
    return {m["step"]: m["value"] for m in page["data"]}


def saved_steps(api: Api, job_id: str) -> list[int]:
    """The steps of the checkpoints the job has recorded so far (its events)."""
    return [e["data"]["step"] for e in api.events(job_id) if e["message"] == "checkpoint"]


def checkpoints(api: Api, job_id: str) -> dict[int, dict[str, Any]]:
    """Step → metrics of a succeeded job's checkpoints, in the API's order (newest first)."""
    page = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=100")
    assert not page["has_more"]
    return {c["step_number"]: c["metrics"] for c in page["data"]}


def weights_sha256(api: Api, model_id: str) -> str:
    files = api.get(f"/v1/models/{model_id}/files")["data"]
    return next(str(f["sha256"]) for f in files if f["path"] == "model.safetensors")


def assert_loads(api: Api, model_id: str, into: Path) -> None:
    """Download the model as its .tar; plain transformers loads it offline and runs it."""
    response = api.client.get(f"/v1/models/{model_id}/content", headers=api.auth)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        tar.extractall(into, filter="data")
    folder = next(p.parent for p in into.rglob("config.json"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = AutoTokenizer.from_pretrained(folder)("Format: anna in oslo", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids["input_ids"]).logits).all()


def assert_same_run(api: Api, baseline: dict[str, Any], resumed: dict[str, Any], seen: int) -> None:
    """``resumed``, killed once its checkpoint at step ``seen`` was recorded, ended exactly as the
    uninterrupted ``baseline`` did."""
    total = baseline["result"]["steps"]
    resumed_from = resumed["result"]["resumed_from_step"]
    assert resumed["attempt"] == 2
    assert resumed_from is not None and resumed_from % CHECKPOINT_EVERY == 0
    assert seen <= resumed_from < total
    for key in ("metrics", "steps", "trained_tokens", "hyperparameters"):
        assert resumed["result"][key] == baseline["result"][key], key
    assert {"train_loss", "full_valid_loss"} <= set(resumed["result"]["metrics"])

    # Attempt 2 recomputed every step after its checkpoint. Of those before it, attempt 1 wrote
    # at least the ones up to the checkpoint seen (metrics are written in batches: a kill loses
    # the newest unwritten rows). Every value is the uninterrupted run's, bit for bit.
    expected_curve = loss_curve(api, baseline["id"])
    assert list(expected_curve) == list(range(1, total + 1))
    curve = loss_curve(api, resumed["id"])
    assert set(range(1, seen + 1)) | set(range(resumed_from + 1, total + 1)) <= set(curve)
    assert curve == {step: expected_curve[step] for step in curve}

    # The checkpoints listed are the ones that can be called as models: the final one and the
    # two saved before it, newest first, each with the metrics the uninterrupted run had.
    expected = checkpoints(api, baseline["id"])
    before = list(range(CHECKPOINT_EVERY, total, CHECKPOINT_EVERY))[-2:]
    assert list(expected) == [total, *reversed(before)]
    assert checkpoints(api, resumed["id"]) == expected

    assert weights_sha256(api, resumed["result"]["model_id"]) == weights_sha256(
        api, baseline["result"]["model_id"]
    )


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    stack = make_stack(job_lease_seconds=LEASE_S)
    stack.start_api()
    stack.start_worker()
    return stack


@pytest.mark.timeout(400)  # a model import, four fine-tunes, two cold workers; times the factor
def test_fine_tunes_resume_to_the_same_result_after_their_worker_is_killed(
    stack: Stack, tmp_path: Path
) -> None:
    """A LoRA and then a full fine-tune, each with SIGKILL of the worker's main and pool process
    once it has recorded a checkpoint, then a new worker → each succeeds on attempt 2, resumed
    from a checkpoint, with the very losses, loss curve, checkpoints and weights of an
    uninterrupted run of the same job; the resumed models load."""
    base = upload_model(stack.api, build_base("qwen2", tmp_path / "base"), stack.logs)
    rows = "".join(json.dumps(r) + "\n" for r in chat_rows(task_split()[0][:64]))
    dataset = stack.api.upload("/v1/datasets", "stories.jsonl", rows.encode(), logs=stack.logs)[
        "id"
    ]
    params = {
        m: {"model_id": base, "dataset_id": dataset, "method": m, **FINETUNE} for m in METHODS
    }
    baselines = {
        m: stack.api.run_job("finetune", params[m], timeout=FINETUNE_S, logs=stack.logs)
        for m in METHODS
    }

    for method in METHODS:
        job_id = str(
            stack.api.post("/v1/jobs", json={"type": "finetune", "params": params[method]})["id"]
        )
        saved = wait_for(
            partial(saved_steps, stack.api, job_id),
            timeout=FINETUNE_S,
            interval=0.1,
            what=f"a first {method} checkpoint",
            logs=stack.logs,
        )
        stack.kill_worker()
        assert stack.api.job(job_id)["status"] == "running", "the kill came too late"
        stack.start_worker()
        resumed = stack.api.wait_status(
            job_id, "succeeded", timeout=FINETUNE_S + LEASE_S + 15, logs=stack.logs
        )
        assert_same_run(stack.api, baselines[method], resumed, seen=max(saved))
        assert_loads(stack.api, resumed["result"]["model_id"], tmp_path / method)
