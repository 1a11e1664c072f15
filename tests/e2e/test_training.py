"""Training through real API and worker processes: data preparation in a worker's pool process,
and a pretraining run whose worker is killed mid-training resuming to the very same result."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, StackFactory
from tests.timing import wait_for

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"
LEASE_S = 4
# Seconds a pretraining run below may take: a few seconds on an idle two-core machine, with room
# for other processes keeping both cores busy (GRISTMILL_TEST_TIMEOUT_FACTOR stretches it more).
TRAIN_S = 180
# The `tiny` preset keeps each run to seconds; 240 steps leave ~190 steps of slack after the kill
# point (step 50), so the kill lands mid-run however fast or slow the machine is.
PRETRAIN: dict[str, Any] = {
    "model": {"preset": "tiny", "context_length": 128},
    "max_steps": 240,
    "global_batch_tokens": 1024,
    "micro_batch_size": 8,
    "lr": 2e-3,
    "warmup_steps": 10,
    "log_interval": 5,
    "eval_interval": 240,
    "eval_batches": 2,
    "checkpoint_interval": 40,
    "sample_tokens": 0,
}


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    stack = make_stack(job_lease_seconds=LEASE_S)
    stack.start_api()
    stack.start_worker()
    return stack


def test_prepare_runs_its_process_pool_inside_a_worker(stack: Stack) -> None:
    """A prepare job in a real Celery pool process → it may start its own worker processes and
    succeeds with a cleaned child dataset."""
    lines = CORPUS.read_bytes().splitlines(keepends=True)[:600]
    source = stack.api.upload("/v1/datasets", "stories.jsonl", b"".join(lines), logs=stack.logs)[
        "id"
    ]
    done = stack.api.run_job(
        "prepare", {"dataset_id": source, "validation_fraction": 0.1}, logs=stack.logs
    )

    children = done["result"]["dataset_ids"]
    train = stack.api.get(f"/v1/datasets/{children['train']}")
    assert train["status"] == "ready" and train["parent_id"] == source


@pytest.mark.timeout(600)  # two training runs, each up to TRAIN_S; stretched by the factor
def test_killed_pretraining_resumes_to_the_same_final_loss(stack: Stack) -> None:
    """SIGKILL of the worker's pool process after the step-40 checkpoint → the reaper re-queues
    the job, attempt 2 resumes from that checkpoint, and the run ends exactly where an
    uninterrupted run with the same settings ends."""
    lines = CORPUS.read_bytes().splitlines(keepends=True)[:1500]
    dataset = stack.api.upload("/v1/datasets", "stories.jsonl", b"".join(lines), logs=stack.logs)[
        "id"
    ]
    tokenizer = stack.api.run_job(
        "tokenizer", {"dataset_id": dataset, "vocab_size": 400}, logs=stack.logs
    )
    params = {
        "dataset_id": dataset,
        "tokenizer_id": tokenizer["result"]["tokenizer_id"],
        **PRETRAIN,
    }

    baseline = stack.api.run_job("pretrain", params, timeout=TRAIN_S, logs=stack.logs)

    job = stack.api.post("/v1/jobs", json={"type": "pretrain", "params": params})
    wait_for(
        lambda: (stack.api.job(job["id"])["progress"] or {}).get("step", 0) >= 50,
        timeout=TRAIN_S,
        interval=0.1,
        what="training past the step-40 checkpoint",
        logs=stack.logs,
    )
    os.kill(stack.pool_child(), signal.SIGKILL)
    resumed = stack.api.wait_status(
        job["id"], "succeeded", timeout=TRAIN_S + LEASE_S + 30, logs=stack.logs
    )

    assert resumed["attempt"] == 2
    resumed_from = resumed["result"]["resumed_from_step"]
    assert resumed_from is not None and resumed_from % 40 == 0 and 40 <= resumed_from < 240
    for key in ("final_train_loss", "final_val_loss", "steps", "tokens_seen"):
        assert resumed["result"][key] == baseline["result"][key], key
    steps = [m["step"] for m in stack.api.metrics(job["id"]) if m["name"] == "train_loss"]
    assert steps == list(range(5, 241, 5))  # every step once, none twice
