"""``import_model``: unpack and check an uploaded model archive; created by the service."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import JobKind, ref


@dataclass(frozen=True)
class ImportModelParams:
    model_id: str = ref("model", ready=False)
    """The uploaded model archive to unpack and check."""


KIND = JobKind(
    name="import_model",
    summary="Unpack and check an uploaded Hugging Face model archive.",
    params=ImportModelParams,
    handler="workers.handlers.import_model:handle_import_model",
    stage="pipeline.import_model.stage:run_model_import",
    submittable=False,
)
