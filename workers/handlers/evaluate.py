"""``evaluate``: one model against the datasets it names; the figures are the job result.

Nothing is registered: an evaluation produces figures, not a model or a dataset. The per-document
scores, bias items and samples stay in the job's output folder next to its report.
"""

from __future__ import annotations

from app.jobs.kinds.evaluate import EvaluateParams
from pipeline.configs.evaluate import EvaluateConfig
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from workers.handlers.base import JobContext, Outcome, figures, run_stage, stage_config


def handle_evaluate(ctx: JobContext[EvaluateParams]) -> Outcome:
    params = ctx.params
    config = stage_config(params, EvaluateConfig)
    datasets = tuple(ctx.dataset(p) for p in ("dataset_id", "extra_dataset_id") if p in ctx.inputs)
    training = ctx.optional_dataset("training_dataset_id")
    inputs = EvaluateInputs(
        model_dir=ctx.folder("model_id"),
        datasets=datasets,
        training=(training,) if training is not None else (),
        bias_templates=ctx.optional_dataset("bias_templates_id"),
    )
    result = figures(run_stage(ctx, run_evaluate, config, inputs))
    ids = [i for i in (params.dataset_id, params.extra_dataset_id) if i]
    for scores, dataset_id in zip(result["perplexity"], ids, strict=True):
        scores["dataset_id"] = dataset_id
    # Contamination is checked only against training text, so its list is empty without it.
    for report, dataset_id in zip(result["contamination"], ids if training else [], strict=True):
        report["dataset_id"] = dataset_id
        report["training_dataset_id"] = params.training_dataset_id
    return Outcome(result={"model_id": params.model_id, **result})
