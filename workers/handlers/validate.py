"""``validate``: a verdict on an uploaded dataset, recorded on the dataset."""

from __future__ import annotations

from typing import Any

from app.datasets.outputs import ValidationVerdict
from app.jobs.kinds.validate import ValidateParams
from pipeline.configs.data import ValidateConfig
from pipeline.types import PipelineError
from pipeline.validate.stage import ValidateInputs, run_validate
from workers.handlers.base import JobContext, Outcome, run_stage


def handle_validate(ctx: JobContext[ValidateParams]) -> Outcome:
    """A verdict on the upload, whatever it is: a bad file fails its dataset, not the job."""
    dataset = ctx.inputs["dataset_id"]
    values: dict[str, Any]
    try:
        inputs = ValidateInputs(upload=ctx.file("dataset_id"), options=dataset.options)
        result = run_stage(ctx, run_validate, ValidateConfig(), inputs)
    except PipelineError as err:
        values = {"status": "failed", "errors": [{"code": err.code, "reason": err.message}]}
    else:
        values = {
            "status": "ready" if result.ok else "failed",
            "format": result.format,
            "compression": result.compression,
            "record_type": result.kind,
            "records": result.records,
            "text_bytes": result.bytes,
            "errors": result.errors or None,
        }
        if not result.ok and result.error_count > len(result.errors):
            values["errors"] = [*result.errors, {"reason": f"{result.error_count} errors in all"}]
    summary = {k: v for k, v in values.items() if k != "errors"}
    return Outcome(
        result={"dataset_id": dataset.id, **summary},
        outputs=[ValidationVerdict(dataset_id=dataset.id, values=values)],
    )
