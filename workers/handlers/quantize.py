"""``quantize``: each GGUF type becomes a model of its own (one downloadable file); GPTQ one
Hugging Face folder. Every quantised model carries the quality report."""

from __future__ import annotations

import shutil
from pathlib import Path

from app.artifacts.outputs import NewArtifact
from app.artifacts.service import new_artifact_id
from app.jobs.kinds.quantize import QuantizeParams
from pipeline.configs.quantize import QuantizeConfig
from pipeline.quantize.stage import GgufReport, QuantizeInputs, run_quantize
from workers.handlers.base import (
    JobContext,
    Outcome,
    figures,
    run_stage,
    slug,
    stage_config,
)


def handle_quantize(ctx: JobContext[QuantizeParams]) -> Outcome:
    params, source = ctx.params, ctx.inputs["model_id"]
    inputs = QuantizeInputs(
        model_dir=ctx.folder("model_id"),
        heldout=ctx.optional_dataset("heldout_dataset_id"),
        calibration=ctx.optional_dataset("calibration_dataset_id"),
    )
    result = run_stage(ctx, run_quantize, stage_config(params, QuantizeConfig), inputs)
    lineage = {
        "job_id": ctx.job_id,
        "parent_model_id": source.id,
        "dataset_id": params.heldout_dataset_id or params.calibration_dataset_id,
    }
    common = {
        "architecture": result.architecture,
        "params": result.params,
        "reference_perplexity": result.reference_perplexity,
    }
    models: list[NewArtifact] = []
    for gguf in result.gguf:
        models.append(
            NewArtifact(
                id=new_artifact_id("model"),
                category="model",
                folder=_gguf_folder(ctx, gguf, result.report_path, source.name),
                name=f"{source.name}:{gguf.type}",
                format="gguf",
                lineage=lineage,
                details={**common, **figures(gguf)},
            )
        )
    if result.gptq is not None:
        models.append(
            NewArtifact(
                id=new_artifact_id("model"),
                category="model",
                folder=result.gptq.output_dir,
                name=f"{source.name}:gptq-{result.gptq.bits}bit",
                format="gptq",
                lineage=lineage,
                details={**common, **figures(result.gptq)},
            )
        )
    summary = figures(result)  # each output's figures, without where the worker kept its files
    if result.gptq is None:
        del summary["gptq"]
    return Outcome(result={"model_ids": [m.id for m in models], **summary}, outputs=[*models])


def _gguf_folder(
    ctx: JobContext[QuantizeParams], gguf: GgufReport, report: Path, source_name: str
) -> Path:
    """A folder of its own for one GGUF file and the report, named for the user's download."""
    folder = ctx.paths.work_dir / f"gguf-{gguf.type}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.move(gguf.path, folder / f"{slug(source_name)}-{gguf.type}.gguf")
    shutil.copyfile(report, folder / "report.json")
    return folder
