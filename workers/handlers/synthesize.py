"""``synthesize``: the teacher's dataset becomes a new dataset of the tenant, its parent the
prompt dataset and its job the one that names the teacher; the checks' report is kept with it.

An endpoint teacher's key is decrypted here, handed to the stage in its inputs (never in its
config, which is stored), and appears in no result, provenance record, event or log line.
"""

from __future__ import annotations

from typing import Any

from app.datasets.outputs import NewDataset
from app.datasets.service import new_dataset_id
from app.errors import GristmillError
from app.jobs.kinds.synthesize import SynthesizeParams
from app.tenants import secrets
from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.parts.endpoints import Endpoint
from pipeline.synthesize.stage import SynthesizeInputs, run_synthesize
from pipeline.types import PipelineError
from workers.handlers.base import JobContext, Outcome, figures, run_stage, stage_config


def handle_synthesize(ctx: JobContext[SynthesizeParams]) -> Outcome:
    params = ctx.params
    prompts = ctx.inputs["dataset_id"]
    teacher_dir, teacher_adapter = (
        ctx.model_folders("model_id") if "model_id" in ctx.inputs else (None, None)
    )
    judge_dir, judge_adapter = (
        ctx.model_folders("judge_model_id") if "judge_model_id" in ctx.inputs else (None, None)
    )
    inputs = SynthesizeInputs(
        teacher_dir=teacher_dir,
        teacher_adapter=teacher_adapter,
        prompts=ctx.dataset("dataset_id"),
        judge_dir=judge_dir,
        judge_adapter=judge_adapter,
        eval=tuple(
            ctx.dataset(f"eval_dataset_ids.{i}") for i in range(len(params.eval_dataset_ids))
        ),
        source=ctx.optional_dataset("source_dataset_id"),
        teacher_id=params.model_id or "",
        endpoint=_endpoint(ctx),
        secret=params.secret or "",
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
    teacher: dict[str, Any] = {"teacher_model_id": params.model_id}
    if params.secret is not None:
        teacher = {"teacher": {"secret": params.secret, "endpoint_model": params.endpoint_model}}
    return Outcome(
        result={
            "dataset_id": output.id,
            **teacher,
            "prompts_dataset_id": params.dataset_id,
            **figures(result),
        },
        outputs=[output],
    )


def _endpoint(ctx: JobContext[SynthesizeParams]) -> Endpoint | None:
    """The endpoint teacher in the clear, from the tenant's secret (None: a registry teacher)."""
    params = ctx.params
    if params.secret is None:
        return None
    assert ctx.session_factory is not None  # the runner always gives one
    try:
        with ctx.session_factory() as session:
            secret = secrets.reveal(
                session=session, settings=ctx.settings, tenant_id=ctx.tenant_id, name=params.secret
            )
    except GristmillError as err:  # the secret was deleted (or the deployment's key changed)
        raise PipelineError(err.code, err.message) from None
    return Endpoint(secret.base_url, params.endpoint_model or "", secret.api_key)
