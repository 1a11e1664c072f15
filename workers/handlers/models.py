"""Model jobs: ``import_model`` (an uploaded archive becomes a registry model) and ``finetune``."""

from __future__ import annotations

import shutil
from typing import Any

from app import layout
from app.artifacts.service import ImportVerdict, NewArtifact, new_artifact_id
from app.jobs.kinds import FinetuneParams, ImportModelParams, QuantizeParams
from workers.handlers.base import JobContext, Outcome, Output, details, run_stage, stage_config
from workers.pipeline.configs.finetune import FinetuneConfig, ModelImportConfig
from workers.pipeline.configs.quantize import QuantizeConfig
from workers.pipeline.finetune.export import KEPT_SNAPSHOTS, snapshot_root, snapshots
from workers.pipeline.finetune.import_model import ModelImportInputs
from workers.pipeline.finetune.stage import FinetuneInputs
from workers.pipeline.quantize.stage import QuantizeInputs
from workers.pipeline.types import PipelineError


def handle_import(ctx: JobContext[ImportModelParams]) -> Outcome:
    """A verdict whatever the archive holds: a refused upload fails its model, not the job."""
    model = ctx.inputs["model_id"]
    archive = model.path / layout.UPLOAD_NAME
    verdict: ImportVerdict
    try:
        result = run_stage(ctx, ModelImportConfig(), ModelImportInputs(archive=archive))
    except PipelineError as err:
        verdict = ImportVerdict(model.id, None, errors=[{"code": err.code, "reason": err.message}])
        return Outcome(result={"model_id": model.id, "status": "failed"}, outputs=[verdict])
    info = {k: v for k, v in details(result).items() if k != "model_dir"}
    verdict = ImportVerdict(model.id, ctx.paths.output_dir / "model", details=info)
    return Outcome(result={"model_id": model.id, "status": "ready", **info}, outputs=[verdict])


def handle_finetune(ctx: JobContext[FinetuneParams]) -> Outcome:
    params, base = ctx.params, ctx.inputs["model_id"]
    config = stage_config(params, FinetuneConfig)
    inputs = FinetuneInputs(
        base_model_dir=base.path,
        train=ctx.dataset("dataset_id"),
        validation=ctx.optional_dataset("validation_dataset_id"),
    )
    result = run_stage(ctx, config, inputs, devices=config.devices)
    lineage = {
        "job_id": ctx.job_id,
        "parent_model_id": base.id,
        "dataset_id": params.dataset_id,
        "validation_dataset_id": params.validation_dataset_id,
    }
    summary = {k: v for k, v in details(result).items() if k not in ("model_dir", "adapter_dir")}
    name = f"ft:{_slug(base.name)}:{params.suffix or config.method}:{ctx.job_id}"
    model = NewArtifact(
        id=new_artifact_id("model"),
        category="model",
        folder=ctx.paths.output_dir / "model",
        name=name,
        lineage=lineage,
        details={**summary, "method": config.method},
    )
    outputs: list[Output] = [model]
    ids: dict[str, Any] = {"model_id": model.id, "fine_tuned_model": name}
    if result.get("adapter_dir"):
        adapter = NewArtifact(
            id=new_artifact_id("model"),
            category="model",
            folder=ctx.paths.output_dir / "adapter",
            name=f"{name}:adapter",
            format="peft-adapter",
            lineage=lineage,
            details={
                "base_model_id": base.id,
                "merged_model_id": model.id,
                "method": config.method,
            },
        )
        outputs.append(adapter)
        ids["adapter_id"] = adapter.id
    checkpoints = _checkpoint_models(
        ctx, name, lineage, base_id=base.id, final_step=int(result["steps"]), method=config.method
    )
    outputs.extend(checkpoints)
    ids["checkpoints"] = [
        {"step": c.details["step"], "model_id": c.id, "fine_tuned_model_checkpoint": c.name}
        for c in checkpoints
    ]
    return Outcome(result={**ids, **summary}, outputs=outputs)


def _checkpoint_models(
    ctx: JobContext[FinetuneParams],
    name: str,
    lineage: dict[str, str | None],
    *,
    base_id: str,
    final_step: int,
    method: str,
) -> list[NewArtifact]:
    """The newest snapshots before the final step (two: with the fine-tuned model itself, the
    three checkpoints OpenAI keeps), each a model of its own named as the job's checkpoint list
    names it (``<fine-tuned name>:ckpt-step-<n>``), so it can be called."""
    earlier = [(s, f) for s, f in snapshots(snapshot_root(ctx.paths.work_dir)) if s < final_step]
    models = []
    for step, folder in earlier[-(KEPT_SNAPSHOTS - 1) :]:
        adapter = (folder / "adapter_config.json").is_file()
        details: dict[str, Any] = {"step": step, "method": method}
        if adapter:
            details["base_model_id"] = base_id
        models.append(
            NewArtifact(
                id=new_artifact_id("model"),
                category="model",
                folder=folder,
                name=f"{name}:ckpt-step-{step}",
                format="peft-adapter" if adapter else "huggingface",
                lineage=lineage,
                details=details,
            )
        )
    return models


def handle_quantize(ctx: JobContext[QuantizeParams]) -> Outcome:
    """Each GGUF type becomes a model of its own (one downloadable file); GPTQ one HF folder."""
    params, source = ctx.params, ctx.inputs["model_id"]
    config = stage_config(params, QuantizeConfig)
    inputs = QuantizeInputs(
        model_dir=source.path,
        heldout=ctx.optional_dataset("heldout_dataset_id"),
        calibration=ctx.optional_dataset("calibration_dataset_id"),
    )
    result = run_stage(ctx, config, inputs)
    report = ctx.paths.output_dir / "report.json"
    lineage = {
        "job_id": ctx.job_id,
        "parent_model_id": source.id,
        "dataset_id": params.heldout_dataset_id or params.calibration_dataset_id,
    }
    common = {k: result[k] for k in ("architecture", "params", "reference_perplexity")}
    outputs: list[Output] = []
    for gguf in result["gguf"]:
        folder = ctx.paths.work_dir / f"gguf-{gguf['type']}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.move(gguf["path"], folder / f"{_slug(source.name)}-{gguf['type']}.gguf")
        shutil.copyfile(report, folder / "report.json")
        outputs.append(
            NewArtifact(
                id=new_artifact_id("model"),
                category="model",
                folder=folder,
                name=f"{source.name}:{gguf['type']}",
                format="gguf",
                lineage=lineage,
                details={**common, **{k: v for k, v in gguf.items() if k != "path"}},
            )
        )
    if result["gptq"] is not None:
        gptq = {k: v for k, v in result["gptq"].items() if k != "output_dir"}
        outputs.append(
            NewArtifact(
                id=new_artifact_id("model"),
                category="model",
                folder=ctx.paths.output_dir,
                name=f"{source.name}:gptq-{gptq['bits']}bit",
                format="gptq",
                lineage=lineage,
                details={**common, **gptq},
            )
        )
    model_ids = [o.id for o in outputs if isinstance(o, NewArtifact)]
    summary = {k: v for k, v in result.items() if k not in ("report_path", "gguf", "gptq")}
    # Each output's figures, without where the worker kept its files.
    summary["gguf"] = [{k: v for k, v in g.items() if k != "path"} for g in result["gguf"]]
    if result["gptq"] is not None:
        summary["gptq"] = {k: v for k, v in result["gptq"].items() if k != "output_dir"}
    return Outcome(result={"model_ids": model_ids, **summary}, outputs=outputs)


def _slug(name: str) -> str:
    """A name safe in a model id and a file name: letters, digits, '-', '_', '.'."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return "-".join(part for part in slug.split("-") if part)[:80] or "model"
