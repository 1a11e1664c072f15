"""``evaluate``: one model against the datasets it names; the figures are the job result.

An evaluation produces figures, not a model. The per-document scores, bias items and samples stay
in the job's output folder next to its report; a task's per-item outputs and scores become a new
dataset of the tenant (JSONL, downloadable), named in the result as
``task.examples_dataset_id``.

A grader endpoint's key is decrypted here, handed to the stage in its inputs (never in its
config, which is stored), and appears in no result, event or log line.
"""

from __future__ import annotations

from app.datasets.outputs import NewDataset
from app.datasets.service import new_dataset_id
from app.errors import GristmillError
from app.jobs.kinds.evaluate import EvaluateParams
from app.tenants import secrets
from pipeline.configs.evaluate import EvaluateConfig
from pipeline.evaluate.grader import GraderInputs
from pipeline.evaluate.stage import EvaluateInputs, run_evaluate
from pipeline.parts.endpoints import Endpoint
from pipeline.types import PipelineError
from workers.handlers.base import (
    JobContext,
    Outcome,
    Output,
    figures,
    run_stage,
    stage_config,
)


def handle_evaluate(ctx: JobContext[EvaluateParams]) -> Outcome:
    params = ctx.params
    config = stage_config(params, EvaluateConfig)
    datasets = tuple(ctx.dataset(p) for p in ("dataset_id", "extra_dataset_id") if p in ctx.inputs)
    training = ctx.optional_dataset("training_dataset_id")
    model_dir, adapter_dir = ctx.model_folders("model_id")
    inputs = EvaluateInputs(
        model_dir=model_dir,
        adapter_dir=adapter_dir,
        datasets=datasets,
        training=(training,) if training is not None else (),
        bias_templates=ctx.optional_dataset("bias_templates_id"),
        task=ctx.optional_dataset("task_dataset_id"),
        grader=_grader(ctx),
    )
    stage_result = run_stage(ctx, run_evaluate, config, inputs)
    result = figures(stage_result)
    ids = [i for i in (params.dataset_id, params.extra_dataset_id) if i]
    for scores, dataset_id in zip(result["perplexity"], ids, strict=True):
        scores["dataset_id"] = dataset_id
    # Contamination is checked only against training text, so its list is empty without it.
    for report, dataset_id in zip(result["contamination"], ids if training else [], strict=True):
        report["dataset_id"] = dataset_id
        report["training_dataset_id"] = params.training_dataset_id
    outputs: list[Output] = []
    if stage_result.task_examples_path is not None and result["task"] is not None:
        source = ctx.inputs["task_dataset_id"]
        examples = NewDataset(
            id=new_dataset_id(),
            path=stage_result.task_examples_path,
            name=f"{source.name} (task examples of {params.model_id})",
            filename="task_examples.jsonl",
            record_type="task_examples",
            parent_id=source.id,
        )
        outputs.append(examples)
        result["task"] |= {"dataset_id": source.id, "examples_dataset_id": examples.id}
        if "grader" in result["task"]:
            result["task"]["grader"]["name"] = (
                params.grader_model_id
                or f"{params.grader_secret}/{params.task.grader_endpoint_model}"
            )
    return Outcome(result={"model_id": params.model_id, **result}, outputs=outputs)


def _grader(ctx: JobContext[EvaluateParams]) -> GraderInputs | None:
    params = ctx.params
    if params.grader_model_id is not None:
        return GraderInputs(model_dir=ctx.folder("grader_model_id"))
    if params.grader_secret is None:
        return None
    assert ctx.session_factory is not None  # the runner always gives one
    try:
        with ctx.session_factory() as session:
            secret = secrets.reveal(
                session=session, settings=ctx.settings, tenant_id=ctx.tenant_id,
                name=params.grader_secret,
            )  # fmt: skip
    except GristmillError as err:  # the secret was deleted (or the deployment's key changed)
        raise PipelineError(err.code, err.message) from None
    endpoint = Endpoint(secret.base_url, params.task.grader_endpoint_model, secret.api_key)
    return GraderInputs(endpoint=endpoint)
