"""The official ``openai`` SDK against a live embedded server (``gristmill serve``: API, worker
and inference service): upload → fine-tune, its file deleted while it is queued, paused as it
runs and resumed → poll → events and checkpoints → chat completion, streamed too, and completions
from an earlier checkpoint → a job cancelled right away → 404s → delete. Only ``base_url`` and
the key change."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path

import openai
import pytest

from tests.e2e.stack import FINAL_STATES
from tests.e2e.test_embedded import Embedded, start_serve, stop_serve
from tests.pipeline.finetune_helpers import build_base, chat_rows, task, task_split
from tests.timing import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    embedded = start_serve(tmp_path_factory.mktemp("openai"))
    embedded.api.key = embedded.key_file.read_text().strip()
    yield embedded
    stop_serve(embedded)


def upload_base(server: Embedded, folder: Path) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="tiny")
    model = server.api.upload("/v1/models", "tiny.tar.gz", buffer.getvalue(), timeout=120)
    return str(model["id"])


# 96 rows in batches of 12 make 8 steps an epoch; enough epochs that the job is still running
# when the worker's monitor (about one tick a second) sees the pause, even on a fast machine.
STEPS_PER_EPOCH, EPOCHS = 8, 40


def wait_status(
    sdk: openai.OpenAI, job_id: str, statuses: Collection[str], timeout: float, poll: float = 1
) -> openai.types.fine_tuning.FineTuningJob:
    """Poll the job through the SDK until its status is one of ``statuses``; a job that ends in
    another status fails at once."""

    def reached() -> openai.types.fine_tuning.FineTuningJob | None:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert job.status not in FINAL_STATES, f"job {job_id} ended {job.status}, not {statuses}"
        return None

    return wait_for(reached, timeout=timeout, interval=poll, what=f"{job_id} {statuses}")


def wait_done(
    sdk: openai.OpenAI, job_id: str, timeout: float
) -> openai.types.fine_tuning.FineTuningJob:
    return wait_status(sdk, job_id, FINAL_STATES, timeout)


def pause_and_resume(sdk: openai.OpenAI, job_id: str) -> int:
    """Pause the job as soon as it runs, check it stopped with a checkpoint, resume it; returns
    the step it stopped at."""
    wait_status(sdk, job_id, ("running",), timeout=300, poll=0.1)
    assert sdk.fine_tuning.jobs.pause(job_id).status == "pausing"  # it was running
    paused = wait_status(sdk, job_id, ("paused",), timeout=120, poll=0.2)
    assert paused.fine_tuned_model is None
    events = list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))
    saved = [e.data["step"] for e in events if e.message == "checkpoint" and e.data]
    assert saved, "the job paused without a checkpoint"
    assert sdk.fine_tuning.jobs.resume(job_id).status == "queued"
    return int(saved[0])  # newest first: the one written as it stopped


def test_the_sdk_fine_tunes_and_chats_with_the_result(server: Embedded, tmp_path: Path) -> None:
    base = upload_base(server, build_base("qwen2", tmp_path / "base"))
    sdk = openai.OpenAI(api_key=server.api.key, base_url=server.api.base_url + "/v1", max_retries=2)
    train, held_out = task_split()
    rows = "".join(json.dumps(r) + "\n" for r in chat_rows(train[:96]))

    file = sdk.files.create(file=("train.jsonl", rows.encode()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=base,
        training_file=file.id,
        suffix="fmt",
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 12, "learning_rate_multiplier": 10},
        extra_body={"full_weights": True},
    )
    cancelled = sdk.fine_tuning.jobs.create(model=base, training_file=file.id)
    assert sdk.fine_tuning.jobs.cancel(cancelled.id).status == "cancelled"
    # Deleted while the job is queued, as OpenAI allows: gone at once, kept for the job.
    assert sdk.files.delete(file.id).deleted
    assert file.id not in [f.id for f in sdk.files.list()]
    stopped_at = pause_and_resume(sdk, job.id)

    done = wait_done(sdk, job.id, timeout=600)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model and done.fine_tuned_model.startswith("ft:")
    assert (done.model, done.training_file) == (base, file.id)
    assert sdk.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.type == "metrics" for e in events)
    assert any(e.message == "resumed" and e.data == {"step": stopped_at} for e in events)
    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    # A checkpoint each epoch and one where it paused; the final three are kept.
    epochs = {STEPS_PER_EPOCH * epoch for epoch in range(1, EPOCHS + 1)}
    kept = sorted(epochs | {stopped_at}, reverse=True)[:3]
    assert [c.step_number for c in checkpoints] == kept
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model

    name, city = held_out[0]
    prompt, _ = task(name, city)
    chat = sdk.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
    )
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and chat.usage.completion_tokens > 0
    text = chat.choices[0].message.content or ""
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in sdk.chat.completions.create(
            model=done.fine_tuned_model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        if chunk.choices
    )
    assert streamed == text
    assert text.strip().startswith("NAME =")  # it learned the format

    # An earlier checkpoint is a model of its own: served, and not the final one again.
    first_tokens = []
    for checkpoint in (checkpoints[0], checkpoints[-1]):
        completion = sdk.completions.create(
            model=checkpoint.fine_tuned_model_checkpoint,
            prompt=prompt,
            max_tokens=2,
            temperature=0,
            logprobs=5,
        )
        assert completion.model == checkpoint.fine_tuned_model_checkpoint
        assert completion.choices[0].logprobs and completion.choices[0].logprobs.top_logprobs
        first_tokens.append(completion.choices[0].logprobs.top_logprobs[0])
    assert first_tokens[0] != first_tokens[1]

    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="ft:nothing", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("job_01JAAAAAAAAAAAAAAAAAAAAAAA")
    assert sdk.models.delete(done.fine_tuned_model).id == done.fine_tuned_model
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(file.id)
