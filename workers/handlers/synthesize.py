"""``synthesize``: the teacher's dataset becomes a new dataset of the tenant, its parent the
prompt dataset and its job the one that names the teacher; the checks' report is kept with it."""

from __future__ import annotations

from app.datasets.outputs import NewDataset
from app.datasets.service import new_dataset_id
from app.jobs.kinds.synthesize import SynthesizeParams
from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.synthesize.stage import SynthesizeInputs, run_synthesize
from workers.handlers.base import JobContext, Outcome, figures, run_stage, stage_config


def handle_synthesize(ctx: JobContext[SynthesizeParams]) -> Outcome:
    params = ctx.params
    prompts = ctx.inputs["dataset_id"]
    inputs = SynthesizeInputs(
        teacher_dir=ctx.folder("model_id"),
        prompts=ctx.dataset("dataset_id"),
        judge_dir=ctx.folder("judge_model_id") if "judge_model_id" in ctx.inputs else None,
        eval=tuple(
            ctx.dataset(f"eval_dataset_ids.{i}") for i in range(len(params.eval_dataset_ids))
        ),
        source=ctx.optional_dataset("source_dataset_id"),
        teacher_id=params.model_id,
        judge_id=params.judge_model_id,
        prompts_id=params.dataset_id,
    )
    result = run_stage(ctx, run_synthesize, stage_config(params, SynthesizeConfig), inputs)
    output = NewDataset(
        id=new_dataset_id(),
        path=result.dataset_path,
        name=f"{prompts.name} (synthetic, {result.mode})",
        filename="synthetic.jsonl",
        record_type=result.record_type,
        parent_id=prompts.id,
        report=result.report_path,
    )
    return Outcome(
        result={
            "dataset_id": output.id,
            "teacher_model_id": params.model_id,
            "prompts_dataset_id": params.dataset_id,
            **figures(result),
        },
        outputs=[output],
    )
