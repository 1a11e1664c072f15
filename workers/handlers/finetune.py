"""``finetune``: the fine-tuned model, its adapter (adapter methods) and the earlier checkpoints
become registry models; the job result names them as OpenAI's fine-tuning job does."""

from __future__ import annotations

from typing import Any

from app.artifacts.outputs import NewArtifact
from app.artifacts.service import new_artifact_id
from app.jobs.kinds.finetune import FinetuneParams
from pipeline.configs.finetune import FinetuneConfig
from pipeline.finetune.stage import FinetuneInputs, run_finetune
from pipeline.parts.hf import Snapshot
from workers.handlers.base import JobContext, Outcome, figures, run_stage, slug, stage_config


def handle_finetune(ctx: JobContext[FinetuneParams]) -> Outcome:
    params, base = ctx.params, ctx.inputs["model_id"]
    config = stage_config(params, FinetuneConfig)
    inputs = FinetuneInputs(
        base_model_dir=ctx.folder("model_id"),
        train=ctx.dataset("dataset_id"),
        validation=ctx.optional_dataset("validation_dataset_id"),
    )
    result = run_stage(ctx, run_finetune, config, inputs, devices=config.devices)
    lineage = {
        "job_id": ctx.job_id,
        "parent_model_id": base.id,
        "dataset_id": params.dataset_id,
        "validation_dataset_id": params.validation_dataset_id,
    }
    summary = figures(result)
    name = f"ft:{slug(base.name)}:{params.suffix or config.method}:{ctx.job_id}"
    model = NewArtifact(
        id=new_artifact_id("model"),
        category="model",
        folder=result.model_dir,
        name=name,
        lineage=lineage,
        details={**summary, "method": config.method},
    )
    models = [model]
    ids: dict[str, Any] = {"model_id": model.id, "fine_tuned_model": name}
    if result.adapter_dir is not None:
        adapter = NewArtifact(
            id=new_artifact_id("model"),
            category="model",
            folder=result.adapter_dir,
            name=f"{name}:adapter",
            format="peft-adapter",
            lineage=lineage,
            details={
                "base_model_id": base.id,
                "merged_model_id": model.id,
                "method": config.method,
            },
        )
        models.append(adapter)
        ids["adapter_id"] = adapter.id
    checkpoints = [
        _checkpoint_model(s, name, lineage, base.id, config.method) for s in result.snapshots
    ]
    models.extend(checkpoints)
    ids["checkpoints"] = [
        {"step": c.details["step"], "model_id": c.id, "fine_tuned_model_checkpoint": c.name}
        for c in checkpoints
    ]
    return Outcome(result={**ids, **summary}, outputs=[*models])


def _checkpoint_model(
    snapshot: Snapshot, name: str, lineage: dict[str, str | None], base_id: str, method: str
) -> NewArtifact:
    """An earlier checkpoint as a model of its own, named as the job's checkpoint list names it
    (``<fine-tuned name>:ckpt-step-<n>``), so it can be called."""
    details: dict[str, Any] = {"step": snapshot.step, "method": method}
    if snapshot.adapter:
        details["base_model_id"] = base_id
    return NewArtifact(
        id=new_artifact_id("model"),
        category="model",
        folder=snapshot.folder,
        name=f"{name}:ckpt-step-{snapshot.step}",
        format="peft-adapter" if snapshot.adapter else "huggingface",
        lineage=lineage,
        details=details,
    )
