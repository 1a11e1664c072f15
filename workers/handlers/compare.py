"""``compare``: every model answers every prompt; the answers go to the comparison.

They are stored (:class:`app.comparisons.outputs.ComparisonAnswers`) in the transaction that
marks the job succeeded, which is also what opens the comparison for rating.
"""

from __future__ import annotations

from app.comparisons.outputs import ComparisonAnswers
from app.jobs.kinds.compare import CompareParams
from pipeline.compare.stage import CompareInputs, run_compare
from pipeline.configs.compare import CompareConfig
from workers.handlers.base import JobContext, Outcome, run_stage, stage_config


def handle_compare(ctx: JobContext[CompareParams]) -> Outcome:
    params = ctx.params
    folders = [ctx.model_folders(f"model_ids.{i}") for i in range(len(params.model_ids))]
    inputs = CompareInputs(
        model_dirs=tuple(folder for folder, _ in folders),
        prompts=ctx.optional_dataset("dataset_id"),
        adapter_dirs=tuple(adapter for _, adapter in folders),
    )
    result = run_stage(ctx, run_compare, stage_config(params, CompareConfig), inputs)
    answers = {m: list(t) for m, t in zip(params.model_ids, result.answers, strict=True)}
    output = ComparisonAnswers(
        comparison_id=params.comparison_id, prompts=result.prompts, answers=answers
    )
    return Outcome(
        result={
            "comparison_id": params.comparison_id,
            "prompts": len(result.prompts),
            "models": list(params.model_ids),
            "tokens": result.tokens,
        },
        outputs=[output],
    )
