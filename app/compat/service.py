"""OpenAI's fine-tuning, files and models objects over Gristmill's own jobs, datasets and models.

Nothing here is stored twice: a file is a dataset, a fine-tuning job is a ``finetune`` job, its
events are the job's events plus one ``metrics`` event per reported step, its result file is a CSV
made from the job's metrics on request. Creating a fine-tuning job is a flow
(``app.flows.fine_tuning``); this module maps requests and objects.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.compat import schemas
from app.datasets.schemas import DatasetRead
from app.errors import NotFound
from app.jobs import service as jobs
from app.jobs.messages import public_error, public_event
from app.jobs.states import JobStatus
from app.jobs.tables import Job, JobEvent, JobMetric
from app.jobs.waiting import is_waiting

FINE_TUNE_RECORDS = frozenset({"chat", "prompt_completion", "preference"})
RESULT_PREFIX = "result_"
STATUS = {
    JobStatus.queued: "queued",
    JobStatus.running: "running",
    JobStatus.cancelling: "running",  # still running until it stops at its next step
    # OpenAI's API answers "pausing" and "paused" for paused jobs; the Python SDK's status
    # Literal does not list them yet, but it parses them (it does not validate responses).
    JobStatus.pausing: "pausing",
    JobStatus.paused: "paused",
    JobStatus.succeeded: "succeeded",
    JobStatus.failed: "failed",
    JobStatus.cancelled: "cancelled",
}
LEVELS = {"warning": "warn", "warn": "warn", "error": "error"}
METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


# --- Files ---------------------------------------------------------------------------------------


def file_view(dataset: DatasetRead) -> schemas.FileObject:
    """A dataset as a file: ``processed`` once validation found chat, prompt/completion or
    preference records, ``error`` otherwise."""
    status, details = "uploaded", None
    if dataset.status == "failed":
        status = "error"
        details = "; ".join(str(e.get("reason", e)) for e in (dataset.errors or [])[:3])
    elif dataset.status == "ready":
        if dataset.record_type in FINE_TUNE_RECORDS:
            status = "processed"
        else:
            status = "error"
            details = (
                f"the file holds {dataset.record_type} records; fine-tuning needs chat "
                "messages, prompt/completion or prompt/chosen/rejected records"
            )
    return schemas.FileObject(
        id=dataset.id,
        bytes=dataset.size_bytes,
        created_at=unix(dataset.created_at) or 0,
        filename=dataset.filename or dataset.name,
        purpose="fine-tune",
        status=status,
        status_details=details or None,
    )


def file_not_found(file_id: str) -> NotFound:
    """OpenAI's answer for a file that does not exist (or was deleted, or is another tenant's)."""
    return NotFound(f"No such File object: {file_id}", code="file_not_found", param="file_id")


def result_file_view(job: Job) -> schemas.FileObject:
    return schemas.FileObject(
        id=RESULT_PREFIX + job.id,
        bytes=0,
        created_at=unix(job.finished_at or job.created_at) or 0,
        filename=f"{job.id}-metrics.csv",
        purpose="fine-tune-results",
        status="processed",
    )


def result_job(*, session: Session, tenant_id: str, file_id: str) -> Job | None:
    """The fine-tuning job whose metrics CSV ``file_id`` names, or None for an ordinary file."""
    if not file_id.startswith(RESULT_PREFIX):
        return None
    job = jobs.get_job(session=session, tenant_id=tenant_id, job_id=file_id[len(RESULT_PREFIX) :])
    if job.type != "finetune" or job.status != JobStatus.succeeded:
        raise file_not_found(file_id)
    return job


def result_csv(*, session: Session, job: Job) -> str:
    """One row per step with the step's metrics, as OpenAI's fine-tuning result files have."""
    rows: dict[int, dict[str, float]] = {}
    for step, name, value in session.execute(
        select(JobMetric.step, JobMetric.name, JobMetric.value)
        .where(JobMetric.job_id == job.id)
        .order_by(JobMetric.step)
    ):
        rows.setdefault(step, {})[name] = value
    names = sorted({n for row in rows.values() for n in row}, key=_metric_order)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["step", *names])
    for step, values in sorted(rows.items()):
        writer.writerow([step, *(values.get(n, "") for n in names)])
    return out.getvalue()


def _metric_order(name: str) -> tuple[int, str]:
    return (METRICS.index(name) if name in METRICS else len(METRICS), name)


# --- Fine-tuning jobs ----------------------------------------------------------------------------


def finetune_params(body: schemas.FineTuningJobCreate, *, model_id: str) -> dict[str, Any]:
    """The ``finetune`` job's parameters: the base by its registry id (a name could later find
    another model), and the request's own string kept to show as the job's ``model``."""
    method = body.method.type if body.method is not None else "supervised"
    hyper: schemas.Hyperparameters | None = body.hyperparameters
    params: dict[str, Any] = {
        "model_id": model_id,
        "requested_model": body.model,
        "dataset_id": body.training_file,
        "validation_dataset_id": body.validation_file,
        "suffix": body.suffix,
        "metadata": body.metadata,
    }
    if body.seed is not None:
        params["seed"] = body.seed
    if method == "dpo":
        params["method"] = "dpo"
        dpo = body.method.dpo if body.method is not None else None
        dpo_hyper = dpo.hyperparameters if dpo is not None else None
        hyper = dpo_hyper or hyper
        params["dpo"] = {"use_lora": not body.full_weights}
        if dpo_hyper is not None and isinstance(dpo_hyper.beta, float | int):
            params["dpo"]["beta"] = dpo_hyper.beta
    else:
        params["method"] = "full" if body.full_weights else "lora"
        supervised = body.method.supervised if body.method is not None else None
        if supervised is not None and supervised.hyperparameters is not None:
            hyper = supervised.hyperparameters
    if hyper is not None:
        for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
            value = getattr(hyper, name)
            if value is not None and not (name == "learning_rate_multiplier" and value == "auto"):
                params[name] = value
    if body.lora is not None:
        params["lora"] = body.lora.model_dump(exclude_none=True)
    return params


def first_error(err: ValueError) -> str:
    """The first of a validation error's messages, with where it is (``n_epochs: ...``)."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', '')}".removeprefix(": ")
    return str(err)


def job_view(job: Job) -> schemas.FineTuningJob:
    params, result = job.params, job.result or {}
    fine_tuned = result.get("fine_tuned_model") if job.status == JobStatus.succeeded else None
    resolved = result.get("hyperparameters") or {}
    hyper = schemas.JobHyperparameters(
        n_epochs=resolved.get("n_epochs", params.get("n_epochs", "auto")),
        batch_size=resolved.get("batch_size", params.get("batch_size", "auto")),
        learning_rate_multiplier=params.get("learning_rate_multiplier", "auto"),
    )
    method_type = "dpo" if params.get("method") == "dpo" else "supervised"
    method_hyper = hyper.model_dump()
    if method_type == "dpo":
        method_hyper["beta"] = (params.get("dpo") or {}).get("beta", "auto")
    error = None
    if job.error_code:
        message = public_error(job.error_code, job.error_message or "", job.id)
        error = schemas.JobError(code=job.error_code, message=message)
    eta = (job.progress or {}).get("eta_s")
    estimated = None
    if job.status in (JobStatus.running, JobStatus.cancelling) and eta is not None:
        estimated = int(time.time() + float(eta))
    return schemas.FineTuningJob(
        id=job.id,
        created_at=unix(job.created_at) or 0,
        finished_at=unix(job.finished_at),
        error=error,
        fine_tuned_model=fine_tuned,
        hyperparameters=hyper,
        method={"type": method_type, method_type: {"hyperparameters": method_hyper}},
        model=params.get("requested_model") or params.get("model_id", ""),
        organization_id=job.tenant_id,
        result_files=[RESULT_PREFIX + job.id] if job.status == JobStatus.succeeded else [],
        seed=int(params.get("seed", 42)),
        status="validating_files" if is_waiting(job) else STATUS[JobStatus(job.status)],
        trained_tokens=result.get("trained_tokens"),
        training_file=params.get("dataset_id", ""),
        validation_file=params.get("validation_dataset_id"),
        estimated_finish=estimated,
        metadata=params.get("metadata"),
    )


def list_fine_tuning_jobs(
    *, session: Session, tenant_id: str, after: str | None, limit: int
) -> tuple[list[Job], bool]:
    return jobs.list_jobs(
        session=session, tenant_id=tenant_id, limit=limit, after=after, job_type="finetune"
    )


def list_fine_tuning_events(
    *, session: Session, job: Job, after: str | None, limit: int
) -> tuple[list[schemas.FineTuningJobEvent], bool]:
    """Newest first: the job's messages and one ``metrics`` event per reported step. Ids sort
    by time, so ``after`` (the last id of the previous page) continues where it stopped."""
    events = list(_message_events(session, job)) + list(_metric_events(session, job))
    events.sort(key=lambda e: e.id, reverse=True)
    if after is not None:
        events = [e for e in events if e.id < after]
    return events[:limit], len(events) > limit


def _event_id(moment: datetime, tail: str) -> str:
    return f"ftevent-{int(moment.timestamp() * 1_000_000):017d}-{tail}"


def _message_events(session: Session, job: Job) -> Iterable[schemas.FineTuningJobEvent]:
    for event in session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)):
        message, data = public_event(event.message, event.data, job.id)
        yield schemas.FineTuningJobEvent(
            id=_event_id(event.created_at, f"e{event.id:012d}"),
            created_at=unix(event.created_at) or 0,
            level=LEVELS.get(event.level, "info"),
            message=message,
            type="message",
            data=data,
        )


def _metric_events(session: Session, job: Job) -> Iterable[schemas.FineTuningJobEvent]:
    steps: dict[int, tuple[datetime, dict[str, float]]] = {}
    rows = session.execute(
        select(JobMetric.step, JobMetric.name, JobMetric.value, JobMetric.created_at).where(
            JobMetric.job_id == job.id
        )
    )
    for step, name, value, created_at in rows:
        moment, values = steps.setdefault(step, (created_at, {}))
        values[name] = value
        steps[step] = (max(moment, created_at), values)
    total = (job.progress or {}).get("total")
    for step, (moment, values) in steps.items():
        yield schemas.FineTuningJobEvent(
            id=_event_id(moment, f"m{step:012d}"),
            created_at=unix(moment) or 0,
            level="info",
            message=f"Step {step}/{total}" if total else f"Step {step}",
            type="metrics",
            data={"step": step, "total_steps": total, **values},
        )


def list_checkpoints(
    *, session: Session, job: Job, after: str | None, limit: int
) -> tuple[list[schemas.FineTuningJobCheckpoint], bool]:
    """Newest first: the checkpoints of a succeeded job that can be called as models — the final
    one (the fine-tuned model) and the two before it, which the job kept as models of their own —
    with the step and metrics the job reported when it saved them. Until a job succeeds it has
    none (OpenAI lists a job's checkpoints once it has succeeded too)."""
    result = job.result or {}
    if job.status != JobStatus.succeeded or not result.get("fine_tuned_model"):
        return [], False
    final_step = int(result.get("steps", 0))
    names = {
        int(c["step"]): c["fine_tuned_model_checkpoint"] for c in result.get("checkpoints", [])
    }
    names[final_step] = result["fine_tuned_model"]
    rows = session.scalars(
        select(JobEvent)
        .where(JobEvent.job_id == job.id, JobEvent.message == "checkpoint")
        .order_by(JobEvent.id.desc())
    )
    seen: set[int] = set()
    out: list[schemas.FineTuningJobCheckpoint] = []
    for event in rows:
        step = int((event.data or {}).get("step", 0))
        if step in seen or step not in names:  # a resumed attempt saves the same step again
            continue
        seen.add(step)
        out.append(_checkpoint(job, step, names[step], event.created_at, event.data or {}))
    if final_step not in seen:  # the last step was not a checkpoint step: the model is one
        out.append(_checkpoint(job, final_step, names[final_step], job.finished_at, result))
    out.sort(key=lambda c: c.step_number, reverse=True)
    if after is not None:
        out = [c for c in out if c.id < after]
    return out[:limit], len(out) > limit


def _checkpoint(
    job: Job, step: int, model: str, at: datetime | None, data: dict[str, Any]
) -> schemas.FineTuningJobCheckpoint:
    metrics = {k: v for k, v in (data.get("metrics") or {}).items() if k in METRICS}
    return schemas.FineTuningJobCheckpoint(
        id=f"ftckpt-{job.id}-{step:09d}",
        created_at=unix(at) or 0,
        fine_tuned_model_checkpoint=model,
        fine_tuning_job_id=job.id,
        metrics=schemas.CheckpointMetrics(step=step, **metrics),
        step_number=step,
    )
