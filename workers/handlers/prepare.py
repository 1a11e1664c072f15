"""``prepare``: a cleaned dataset becomes new datasets (training split, validation split)."""

from __future__ import annotations

from app.datasets.outputs import NewDataset
from app.datasets.service import new_dataset_id
from app.jobs.kinds.prepare import PrepareParams
from pipeline.configs.data import PrepareConfig
from pipeline.prepare.stage import PrepareInputs, run_prepare
from workers.handlers.base import JobContext, Outcome, Output, figures, run_stage, stage_config


def handle_prepare(ctx: JobContext[PrepareParams]) -> Outcome:
    source = ctx.inputs["dataset_id"]
    inputs = PrepareInputs(
        source=ctx.dataset("dataset_id"), eval=ctx.optional_dataset("eval_dataset_id")
    )
    result = run_stage(ctx, run_prepare, stage_config(ctx.params, PrepareConfig), inputs)
    outputs: list[Output] = []
    ids: dict[str, str] = {}
    for split, path in (("train", result.train_path), ("validation", result.validation_path)):
        if path is None:
            continue
        output = NewDataset(
            id=new_dataset_id(),
            path=path,
            name=f"{source.name} ({'prepared' if split == 'train' else 'validation split'})",
            filename=f"{split}.jsonl",
            record_type=result.kind,
            parent_id=source.id,
            report=result.report_path,
        )
        outputs.append(output)
        ids[split] = output.id
    summary = figures(result)
    del summary["report"]  # kept with the datasets, not on the job
    return Outcome(
        result={"source_dataset_id": source.id, "dataset_ids": ids, **summary}, outputs=outputs
    )
