"""The official ``openai`` SDK pointed at Gristmill: files, fine-tuning jobs and models work with
no change beyond ``base_url`` and the key, and every response parses as the SDK's own types."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai.types import FileObject, Model
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.datasets.tables import Dataset
from app.flows.housekeeping import ReaperThread
from app.jobs.tables import JobMetric
from app.settings import Settings
from app.storage import LocalStore
from inference.server import create_app as create_inference_app
from inference.settings import InferenceSettings
from pipeline.finetune import stage as finetune_recipe
from tests.conftest import RunJob
from tests.pipeline.finetune_helpers import build_base, chat_rows, task_split
from tests.timing import scaled, wait_for


@pytest.fixture
def sdk(client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        api_key=key, base_url="http://testserver/v1", http_client=client, max_retries=0
    )


@pytest.fixture
def base_model(client: TestClient, auth: dict[str, str], run_job: RunJob, tmp_path: Path) -> str:
    folder = build_base("qwen2", tmp_path / "base")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(str(folder), arcname="tiny")
    model = client.post(
        "/v1/models",
        files={"file": ("tiny.tar.gz", buffer.getvalue())},
        data={"name": "tiny-qwen"},
        headers=auth,
    ).json()
    assert run_job(model["lineage"]["job_id"])["status"] == "succeeded"
    return str(model["id"])


def strictly(value: object) -> None:
    """The SDK builds responses without validating them: validate each against its own type."""
    assert isinstance(value, openai.BaseModel)
    type(value).model_validate(value.model_dump(mode="json", exclude_unset=True))


def chat_file(n: int) -> bytes:
    train, _ = task_split()
    return "".join(json.dumps(row) + "\n" for row in chat_rows(train[:n])).encode()


def test_files_fine_tuning_and_models_through_the_sdk(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    uploaded = sdk.files.create(file=("train.jsonl", chat_file(40)), purpose="fine-tune")
    assert isinstance(uploaded, FileObject) and uploaded.purpose == "fine-tune"
    # Validation runs the way a worker would run it; then the file is processed.
    run_job(client.get(f"/v1/datasets/{uploaded.id}", headers=sdk.auth_headers).json()["job_id"])
    assert sdk.files.retrieve(uploaded.id).status == "processed"
    assert uploaded.id in [f.id for f in sdk.files.list()]

    job = sdk.fine_tuning.jobs.create(
        model=base_model,
        training_file=uploaded.id,
        suffix="cities",
        seed=7,
        metadata={"team": "geo"},
        hyperparameters={"n_epochs": 1, "batch_size": 8},
    )
    assert isinstance(job, FineTuningJob) and job.status == "queued"
    assert (job.seed, job.metadata, job.training_file) == (7, {"team": "geo"}, uploaded.id)

    run_job(job.id)
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model is not None and done.fine_tuned_model.startswith("ft:")
    assert ":cities:" in done.fine_tuned_model and done.trained_tokens
    assert done.result_files
    for value in (uploaded, job, done, sdk.files.retrieve(done.result_files[0])):
        strictly(value)
    csv = sdk.files.content(done.result_files[0]).text
    assert csv.splitlines()[0].startswith("step,train_loss")

    events = sdk.fine_tuning.jobs.list_events(job.id, limit=3)
    assert all(isinstance(e, FineTuningJobEvent) for e in events.data)
    every = list(sdk.fine_tuning.jobs.list_events(job.id, limit=3))  # follows the cursor
    assert len(every) > 3 and len({e.id for e in every}) == len(every)
    assert [e.id for e in every] == sorted((e.id for e in every), reverse=True)
    assert {"message", "metrics"} <= {e.type for e in every}
    metrics = next(e for e in every if e.type == "metrics")
    assert metrics.data is not None and "train_loss" in metrics.data

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and all(isinstance(c, FineTuningJobCheckpoint) for c in checkpoints)
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == [job.id]
    for value in [*every, *checkpoints, *sdk.models.list()]:
        strictly(value)

    model = sdk.models.retrieve(done.fine_tuned_model)
    assert isinstance(model, Model) and model.id and model.owned_by
    assert done.fine_tuned_model in {m.model_extra.get("name") for m in sdk.models.list()}
    assert sdk.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(done.fine_tuned_model)
    assert sdk.files.delete(uploaded.id).deleted


def test_a_fine_tune_is_known_by_its_ft_name_and_its_job_by_the_model_it_asked_for(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    file_id = processed_file(sdk, client, run_job, 32)
    job = sdk.fine_tuning.jobs.create(
        model="tiny-qwen",  # the base by its name, not its id
        training_file=file_id,
        suffix="geo",
        hyperparameters={"n_epochs": 2, "batch_size": 8},  # 8 steps: checkpoints at 4 and 8
    )
    assert job.model == "tiny-qwen"
    assert run_job(job.id)["status"] == "succeeded"
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    name = done.fine_tuned_model
    assert (done.model, name) == ("tiny-qwen", f"ft:tiny-qwen:geo:{job.id}")
    assert [j.model for j in sdk.fine_tuning.jobs.list() if j.id == job.id] == ["tiny-qwen"]
    native = client.get(f"/v1/jobs/{job.id}", headers=sdk.auth_headers).json()["result"]
    assert native["model_id"].startswith("mdl_")  # the jobs API keeps registry ids

    checkpoints = [
        c.fine_tuned_model_checkpoint for c in sdk.fine_tuning.jobs.checkpoints.list(job.id)
    ]
    assert checkpoints == [name, f"{name}:ckpt-step-4"]
    listed = {m.id: m for m in sdk.models.list()}
    assert {name, f"{name}:adapter", *checkpoints, base_model} == set(listed)
    assert listed[name].model_extra["registry_id"] == native["model_id"]
    paged: list[str] = []  # page by page, an ft: name as the cursor
    while True:
        after = {"after": paged[-1]} if paged else {}
        page = client.get("/v1/models", params={"limit": 1, **after}, headers=sdk.auth_headers)
        paged += [m["id"] for m in page.json()["data"]]
        if not page.json()["has_more"]:
            break
    assert paged == list(listed)
    for model in (name, native["model_id"]):  # either name finds it; OpenAI's is its id
        retrieved = sdk.models.retrieve(model)
        assert isinstance(retrieved, Model) and retrieved.id == name
        strictly(retrieved)

    # The ft: name is a base on either surface, and a job shows it as it was asked for.
    again = sdk.fine_tuning.jobs.create(model=name, training_file=file_id)
    assert (again.model, sdk.fine_tuning.jobs.retrieve(again.id).model) == (name, name)
    body = {"type": "finetune", "params": {"model_id": name, "dataset_id": file_id}}
    queued = client.post("/v1/jobs", json=body, headers=sdk.auth_headers)
    assert queued.status_code == 202, queued.text
    for running in (again.id, queued.json()["id"]):
        assert client.post(f"/v1/jobs/{running}/cancel", headers=sdk.auth_headers).is_success

    deleted = sdk.models.delete(native["model_id"])
    assert (deleted.id, deleted.deleted) == (name, True)
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve(name)


def ends(page: openai.BaseModel) -> tuple[object, object]:
    """A list's ``first_id`` and ``last_id``, which the SDK keeps as extra fields."""
    extra = page.model_extra or {}
    return extra["first_id"], extra["last_id"]


def test_every_list_names_its_first_and_last_ids(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    empty = sdk.files.list()
    assert (empty.data, ends(empty)) == ([], (None, None))
    older = processed_file(sdk, client, run_job, 16)
    newer = processed_file(sdk, client, run_job, 16)
    files = sdk.files.list(limit=1)
    assert [f.id for f in files.data] == [newer] and files.has_more
    assert ends(files) == (newer, newer)
    assert [f.id for f in files] == [newer, older]  # the SDK follows after=<last id>
    assert ends(sdk.files.list(after=newer)) == (older, older)

    job = sdk.fine_tuning.jobs.create(
        model=base_model, training_file=newer, hyperparameters={"n_epochs": 1, "batch_size": 8}
    )
    assert run_job(job.id)["status"] == "succeeded"
    pages = {
        "jobs": sdk.fine_tuning.jobs.list(),
        "events": sdk.fine_tuning.jobs.list_events(job.id, limit=5),
        "checkpoints": sdk.fine_tuning.jobs.checkpoints.list(job.id),
    }
    for what, page in pages.items():
        assert page.data, what
        ids = [item.id for item in page.data]
        assert ends(page) == (ids[0], ids[-1]), what


def test_a_job_cancelled_right_after_creation_ends_cancelled(
    sdk: openai.OpenAI, client: TestClient, run_job: RunJob, base_model: str
) -> None:
    uploaded = sdk.files.create(file=("t.jsonl", chat_file(16)), purpose="fine-tune")
    run_job(client.get(f"/v1/datasets/{uploaded.id}", headers=sdk.auth_headers).json()["job_id"])
    job = sdk.fine_tuning.jobs.create(model=base_model, training_file=uploaded.id)

    cancelled = sdk.fine_tuning.jobs.cancel(job.id)

    assert cancelled.status == "cancelled"
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # unchanged, not an error


def said(error: openai.APIStatusError) -> str:
    """The message of an error in OpenAI's shape (``{"error": {"message", ...}}``)."""
    assert isinstance(error.body, dict), error.body
    return str(error.body["message"])


def test_errors_are_the_ones_the_sdk_handles(sdk: openai.OpenAI, base_model: str) -> None:
    with pytest.raises(openai.NotFoundError):
        sdk.fine_tuning.jobs.retrieve("job_01JAAAAAAAAAAAAAAAAAAAAAAA")
    missing = "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"
    for call in (sdk.files.retrieve, sdk.files.content, sdk.files.delete):
        with pytest.raises(openai.NotFoundError) as gone:
            call(missing)
        assert said(gone.value) == f"No such File object: {missing}"  # a file, as OpenAI says
        assert (gone.value.code, gone.value.type) == ("file_not_found", "invalid_request_error")
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.create(model=base_model, training_file=missing)
    assert bad.value.status_code == 400
    assert (said(bad.value), bad.value.param) == (
        f"No such File object: {missing}",
        "training_file",
    )
    with pytest.raises(openai.BadRequestError):  # invalid hyper-parameters: 400, not 422
        sdk.fine_tuning.jobs.create(
            model=base_model, training_file="x", hyperparameters={"n_epochs": 0}
        )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            api_key="gm_wrong", base_url=str(sdk.base_url), http_client=sdk._client, max_retries=0
        ).models.list()


def hold_after(
    monkeypatch: pytest.MonkeyPatch, steps: int, until: threading.Event | None = None
) -> None:
    """Train ``steps`` optimiser steps, then hold each next one until the stage is asked to stop
    (or ``until`` is set), so a pause lands mid-run, at the same step, whatever the machine; the
    numbers are the stage's own."""
    original = finetune_recipe.train_step
    trained = 0

    def held(run: Any, items: list[Any]) -> Any:
        nonlocal trained
        if trained >= steps:
            go = until.is_set if until is not None else run.hooks.should_stop
            wait_for(go, timeout=60, interval=0.02, what="a stop request or the test's go-ahead")
        trained += 1
        return original(run, items)

    monkeypatch.setattr(finetune_recipe, "train_step", held)


def processed_file(sdk: openai.OpenAI, client: TestClient, run_job: RunJob, rows: int) -> str:
    uploaded = sdk.files.create(file=("t.jsonl", chat_file(rows)), purpose="fine-tune")
    run_job(client.get(f"/v1/datasets/{uploaded.id}", headers=sdk.auth_headers).json()["job_id"])
    return uploaded.id


def loss_curve(client: TestClient, headers: Any, job_id: str) -> dict[int, float]:
    page = client.get(f"/v1/jobs/{job_id}/metrics?name=train_loss", headers=headers).json()
    return {m["step"]: m["value"] for m in page["data"]}


def test_a_paused_fine_tune_resumes_from_its_checkpoint_on_the_same_loss_curve(
    sdk: openai.OpenAI,
    client: TestClient,
    run_job: RunJob,
    base_model: str,
    monkeypatch: pytest.MonkeyPatch,
    factory: sessionmaker[Session],
) -> None:
    file_id = processed_file(sdk, client, run_job, 32)
    request: dict[str, Any] = {
        "model": base_model,
        "training_file": file_id,
        "seed": 3,
        "hyperparameters": {"n_epochs": 3, "batch_size": 8},  # 12 steps, a checkpoint each 4
    }
    straight = sdk.fine_tuning.jobs.create(**request)
    assert run_job(straight.id)["status"] == "succeeded"

    # Step 2's numbers are read when step 3 has run: hold step 4 until the pause arrives.
    hold_after(monkeypatch, 3)
    job = sdk.fine_tuning.jobs.create(**request)
    ended: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: ended.append(run_job(job.id)))
    worker.start()

    def trained_two_steps() -> bool:
        assert worker.is_alive(), f"the job ended before its pause: {ended}"
        job_now = client.get(f"/v1/jobs/{job.id}", headers=sdk.auth_headers).json()
        return bool((job_now["progress"] or {}).get("step", 0) >= 2)

    wait_for(trained_two_steps, timeout=60, interval=0.05, what="two steps of training")

    pausing = sdk.fine_tuning.jobs.pause(job.id)
    assert pausing.status == "pausing"
    worker.join(timeout=scaled(30))
    assert ended and ended[0]["status"] == "paused"
    paused = sdk.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused" and paused.fine_tuned_model is None
    strictly_but_status(paused)
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"  # unchanged, not an error
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    saved = [e.data["step"] for e in events if e.message == "checkpoint" and e.data]
    stopped_at = saved[0]  # newest first: the checkpoint written as it stopped
    assert 2 <= stopped_at < 12
    assert ended[0]["attempt"] == 1

    monkeypatch.undo()
    resumed = sdk.fine_tuning.jobs.resume(job.id)
    assert resumed.status == "queued"
    assert run_job(job.id)["status"] == "succeeded"
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model
    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=100))
    assert any(e.message == "resumed" and e.data == {"step": stopped_at} for e in events)
    # The interrupted run retraces the uninterrupted one, step for step.
    interrupted = loss_curve(client, sdk.auth_headers, job.id)
    assert sorted(interrupted) == list(range(1, 13))
    with factory() as session:
        trained_by = dict(
            session.execute(
                select(JobMetric.step, JobMetric.attempt).where(
                    JobMetric.job_id == job.id, JobMetric.name == "train_loss"
                )
            )
            .tuples()
            .all()
        )
    # No step was trained twice: the second attempt started after the checkpoint.
    assert trained_by == {s: 1 if s <= stopped_at else 2 for s in range(1, 13)}
    assert interrupted == pytest.approx(loss_curve(client, sdk.auth_headers, straight.id), rel=1e-6)
    # Pausing or resuming a finished job returns it as it is.
    assert sdk.fine_tuning.jobs.pause(job.id).status == "succeeded"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "succeeded"


def stored(factory: sessionmaker[Session], settings: Settings, file_id: str) -> Path | None:
    """Where the file's bytes are, while its row (hidden or not) is kept; None once purged."""
    with factory() as session:
        dataset = session.get(Dataset, file_id)
        if dataset is None:
            return None
        return LocalStore(settings.resolved_storage_dir).local_path(dataset.storage_key)


def test_a_file_deleted_while_fine_tunes_read_it_is_gone_at_once_and_they_still_succeed(
    sdk: openai.OpenAI,
    client: TestClient,
    run_job: RunJob,
    base_model: str,
    monkeypatch: pytest.MonkeyPatch,
    factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    file_id = processed_file(sdk, client, run_job, 16)
    request: dict[str, Any] = {
        "model": base_model,
        "training_file": file_id,
        "hyperparameters": {"n_epochs": 2, "batch_size": 8},  # 4 steps
    }
    running = sdk.fine_tuning.jobs.create(**request)
    queued = sdk.fine_tuning.jobs.create(**request)
    bytes_at = stored(factory, settings, file_id)
    assert bytes_at is not None and bytes_at.is_file()
    go_on = threading.Event()
    hold_after(monkeypatch, 1, until=go_on)  # the first job holds at its second step
    ended: list[dict[str, Any]] = []
    worker = threading.Thread(target=lambda: ended.append(run_job(running.id)))
    worker.start()

    def is_running() -> bool:
        assert worker.is_alive(), f"the job ended before the file was deleted: {ended}"
        return sdk.fine_tuning.jobs.retrieve(running.id).status == "running"

    wait_for(is_running, timeout=60, interval=0.05, what="the first job running")

    deleted = sdk.files.delete(file_id)  # read by a running and a queued job: no refusal
    assert (deleted.id, deleted.deleted) == (file_id, True)
    assert file_id not in [f.id for f in sdk.files.list()]
    with pytest.raises(openai.NotFoundError) as gone:
        sdk.files.retrieve(file_id)
    assert said(gone.value) == f"No such File object: {file_id}"
    with pytest.raises(openai.NotFoundError):
        sdk.files.delete(file_id)
    with pytest.raises(openai.BadRequestError) as refused:  # no new job may read it
        sdk.fine_tuning.jobs.create(**request)
    assert refused.value.param == "training_file"
    assert client.get(f"/v1/datasets/{file_id}", headers=sdk.auth_headers).status_code == 404

    go_on.set()
    worker.join(timeout=scaled(60))
    assert ended and ended[0]["status"] == "succeeded", ended
    assert bytes_at.is_file()  # the queued job still reads it
    monkeypatch.undo()
    assert run_job(queued.id)["status"] == "succeeded"  # it opens the file only now
    for job in (running, queued):
        done = sdk.fine_tuning.jobs.retrieve(job.id)
        assert (done.status, done.training_file) == ("succeeded", file_id)
        assert done.fine_tuned_model
    # The last job reading it has ended: its bytes and its row went with that job's end.
    assert stored(factory, settings, file_id) is None and not bytes_at.exists()


def test_a_deleted_file_whose_job_is_cancelled_goes_at_the_next_housekeeping_pass(
    sdk: openai.OpenAI,
    client: TestClient,
    run_job: RunJob,
    base_model: str,
    factory: sessionmaker[Session],
    settings: Settings,
) -> None:
    file_id = processed_file(sdk, client, run_job, 16)
    job = sdk.fine_tuning.jobs.create(model=base_model, training_file=file_id)
    assert sdk.files.delete(file_id).deleted
    bytes_at = stored(factory, settings, file_id)
    assert bytes_at is not None and bytes_at.is_file()  # kept for the queued job

    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # ends it in the API
    assert bytes_at.is_file()
    store = LocalStore(settings.resolved_storage_dir)
    ReaperThread(factory, settings, enqueue=lambda *_: True, store=store).tick()

    assert stored(factory, settings, file_id) is None and not bytes_at.exists()


def strictly_but_status(job: FineTuningJob) -> None:
    """The SDK's status Literal lags OpenAI's API ("pausing", "paused"): check the rest."""
    data = job.model_dump(mode="json", exclude_unset=True)
    FineTuningJob.model_validate({**data, "status": "running"})


@pytest.fixture
def inference(client: TestClient, settings: Settings) -> None:
    """Completions reach the real inference service, in this process (on the ASGI transport)."""
    service = create_inference_app(
        InferenceSettings(
            device="cpu", memory_budget_bytes=2**28, model_root=settings.resolved_storage_dir
        )
    )
    transport = httpx.ASGITransport(app=service)
    client.app.state.inference = httpx.AsyncClient(transport=transport, timeout=60)  # type: ignore[attr-defined]


def test_every_listed_checkpoint_is_a_model_completions_can_call(
    sdk: openai.OpenAI,
    client: TestClient,
    run_job: RunJob,
    base_model: str,
    inference: None,
    other_auth: dict[str, str],
) -> None:
    file_id = processed_file(sdk, client, run_job, 32)
    job = sdk.fine_tuning.jobs.create(
        model=base_model,
        training_file=file_id,
        hyperparameters={"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 20},
    )
    assert run_job(job.id)["status"] == "succeeded"
    done = sdk.fine_tuning.jobs.retrieve(job.id)

    checkpoints = list(sdk.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [12, 8, 4]
    names = [c.fine_tuned_model_checkpoint for c in checkpoints]
    assert names[0] == done.fine_tuned_model
    assert names[1:] == [f"{done.fine_tuned_model}:ckpt-step-{s}" for s in (8, 4)]
    for checkpoint in checkpoints:
        strictly(checkpoint)

    first_tokens = {}
    for name in names:
        completion = sdk.completions.create(
            model=name, prompt="Format: anna in", max_tokens=4, temperature=0, logprobs=5
        )
        assert completion.model == name and completion.choices[0].text
        assert completion.choices[0].logprobs is not None
        top = completion.choices[0].logprobs.top_logprobs
        assert top is not None
        first_tokens[name] = top[0]
        chat = sdk.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Format: anna in oslo"}], max_tokens=4
        )
        assert chat.model == name and chat.choices[0].message.content is not None
    # Three sets of weights: the earlier checkpoints are not the final model served again.
    assert len({json.dumps(t, sort_keys=True) for t in first_tokens.values()}) == 3
    # Another tenant cannot call them.
    foreign = client.post(
        "/v1/completions", json={"model": names[1], "prompt": "x"}, headers=other_auth
    )
    assert foreign.status_code == 404
