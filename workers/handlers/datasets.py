"""Dataset jobs: ``validate`` (after an upload) and ``prepare`` (clean into child datasets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.datasets.service import NewDataset, ValidationVerdict, new_dataset_id
from app.jobs.kinds import PrepareParams, ValidateParams
from workers.handlers.base import JobContext, Outcome, Output, run_stage, stage_config
from workers.pipeline.configs.data import PrepareConfig, ValidateConfig
from workers.pipeline.prepare import PrepareInputs
from workers.pipeline.types import PipelineError
from workers.pipeline.validate import ValidateInputs


def handle_validate(ctx: JobContext[ValidateParams]) -> Outcome:
    """A verdict on the upload, whatever it is: a bad file fails its dataset, not the job."""
    dataset = ctx.inputs["dataset_id"]
    values: dict[str, Any]
    try:
        inputs = ValidateInputs(upload=dataset.path, options=dataset.options)
        result = run_stage(ctx, ValidateConfig(), inputs)
    except PipelineError as err:
        values = {"status": "failed", "errors": [{"code": err.code, "reason": err.message}]}
    else:
        values = {
            "status": "ready" if result["ok"] else "failed",
            "format": result["format"],
            "compression": result["compression"],
            "record_type": result["kind"],
            "records": result["records"],
            "text_bytes": result["bytes"],
            "errors": result["errors"] or None,
        }
        if not result["ok"] and result["error_count"] > len(result["errors"]):
            errors = [*result["errors"], {"reason": f"{result['error_count']} errors in all"}]
            values["errors"] = errors
    summary = {k: v for k, v in values.items() if k != "errors"}
    return Outcome(
        result={"dataset_id": dataset.id, **summary},
        outputs=[ValidationVerdict(dataset_id=dataset.id, values=values)],
    )


def handle_prepare(ctx: JobContext[PrepareParams]) -> Outcome:
    source = ctx.inputs["dataset_id"]
    inputs = PrepareInputs(
        source=ctx.dataset("dataset_id"), eval=ctx.optional_dataset("eval_dataset_id")
    )
    result = run_stage(ctx, stage_config(ctx.params, PrepareConfig), inputs)
    report_path = ctx.paths.output_dir / "report.json"
    if not report_path.exists():
        report_path.write_text(json.dumps(result["report"]))
    outputs: list[Output] = []
    ids: dict[str, str] = {}
    for split in ("train", "validation"):
        path = result[f"{split}_path"]
        if path is None:
            continue
        output = NewDataset(
            id=new_dataset_id(),
            path=Path(path),
            name=f"{source.name} ({'prepared' if split == 'train' else 'validation split'})",
            filename=f"{split}.jsonl",
            record_type=result["kind"],
            parent_id=source.id,
            report=report_path,
        )
        outputs.append(output)
        ids[split] = output.id
    summary = {
        k: v for k, v in result.items() if k not in ("report", "train_path", "validation_path")
    }
    return Outcome(
        result={"source_dataset_id": source.id, "dataset_ids": ids, **summary}, outputs=outputs
    )
