"""Where everything lives in the artifact store: the one place that spells out storage keys."""

from __future__ import annotations


def dataset(dataset_id: str) -> str:
    """A dataset's folder: its bytes and, for a prepared one, its report."""
    return f"datasets/{dataset_id}"


def dataset_data(dataset_id: str) -> str:
    return f"{dataset(dataset_id)}/data"


def dataset_report(dataset_id: str) -> str:
    return f"{dataset(dataset_id)}/report.json"


def artifact(category: str, artifact_id: str) -> str:
    """A tokenizer's or model's folder (``tokenizers/tok_…``, ``models/mdl_…``)."""
    return f"{category}s/{artifact_id}"


UPLOAD_NAME = ".upload.archive"


def model_upload(model_id: str) -> str:
    """An uploaded model archive, inside the model's folder until the import job unpacks it."""
    return f"{artifact('model', model_id)}/{UPLOAD_NAME}"


def job(job_id: str) -> str:
    return f"jobs/{job_id}"


def job_work(job_id: str) -> str:
    """Checkpoints and scratch: kept across attempts so a retry resumes."""
    return f"{job(job_id)}/work"


def job_work_item(job_id: str, relative: str) -> str:
    """A file or folder of the job's work folder (``checkpoints/step_00000123``), as copied to
    object storage so that an attempt on another machine can resume from it."""
    return f"{job_work(job_id)}/{relative}"


def job_output(job_id: str) -> str:
    """Finished products of one attempt, before they are registered."""
    return f"{job(job_id)}/output"


def cache(tenant_id: str) -> str:
    """Derived data (token shards) a tenant's jobs reuse; never shared across tenants."""
    return f"cache/{tenant_id}"
