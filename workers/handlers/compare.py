"""The ``compare`` job: every model answers every prompt; the answers go to the comparison.

The runner stores them (:class:`app.comparisons.service.ComparisonAnswers`) in the transaction
that marks the job succeeded, which is also what opens the comparison for rating.
"""

from __future__ import annotations

from app.comparisons.service import ComparisonAnswers
from app.jobs.kinds import CompareParams
from workers.handlers.base import JobContext, Outcome, run_stage, stage_config
from workers.pipeline.compare import CompareInputs
from workers.pipeline.configs.compare import CompareConfig


def handle_compare(ctx: JobContext[CompareParams]) -> Outcome:
    params = ctx.params
    inputs = CompareInputs(
        model_dirs=tuple(ctx.folder(f"model_ids.{i}") for i in range(len(params.model_ids))),
        prompts=ctx.optional_dataset("dataset_id"),
    )
    result = run_stage(ctx, stage_config(params, CompareConfig), inputs)
    prompts: list[str] = result["prompts"]
    texts = result["answers"]
    answers = {m: list(t) for m, t in zip(params.model_ids, texts, strict=True)}
    output = ComparisonAnswers(comparison_id=params.comparison_id, prompts=prompts, answers=answers)
    return Outcome(
        result={
            "comparison_id": params.comparison_id,
            "prompts": len(prompts),
            "models": list(params.model_ids),
            "tokens": result["tokens"],
        },
        outputs=[output],
    )
