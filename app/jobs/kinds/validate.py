"""``validate``: check an uploaded dataset; created by the service after each upload."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import JobKind, ref


@dataclass(frozen=True)
class ValidateParams:
    dataset_id: str = ref("dataset", ready=False)
    """The uploaded dataset to check."""


KIND = JobKind(
    name="validate",
    summary="Check an uploaded dataset: format, compression, records, errors by line.",
    params=ValidateParams,
    handler="workers.handlers.validate:handle_validate",
    stage="pipeline.validate.stage:run_validate",
    submittable=False,
)
