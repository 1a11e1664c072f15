"""``tokenizer``: the trained tokenizer becomes a registered artifact."""

from __future__ import annotations

from app.artifacts.outputs import NewArtifact
from app.artifacts.service import new_artifact_id
from app.jobs.kinds.tokenizer import TokenizerParams
from pipeline.configs.training import TokenizerConfig
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from workers.handlers.base import JobContext, Outcome, figures, run_stage, stage_config


def handle_tokenizer(ctx: JobContext[TokenizerParams]) -> Outcome:
    dataset = ctx.inputs["dataset_id"]
    inputs = TokenizerInputs(train=ctx.dataset("dataset_id"))
    result = run_stage(ctx, run_tokenizer, stage_config(ctx.params, TokenizerConfig), inputs)
    summary = figures(result)
    tokenizer = NewArtifact(
        id=new_artifact_id("tokenizer"),
        category="tokenizer",
        folder=result.output_dir,
        name=f"bpe-{result.vocab_size}-{dataset.name}",
        lineage={"job_id": ctx.job_id, "dataset_id": dataset.id},
        details=summary,
    )
    return Outcome(result={"tokenizer_id": tokenizer.id, **summary}, outputs=[tokenizer])
