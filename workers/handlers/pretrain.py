"""``pretrain``: the model (and a tokenizer trained first, if none was given) become artifacts."""

from __future__ import annotations

from app.artifacts.outputs import NewArtifact
from app.artifacts.service import new_artifact_id
from app.jobs.kinds.pretrain import PretrainParams
from pipeline.configs.training import PretrainConfig, TokenizerConfig
from pipeline.pretrain.stage import PretrainInputs, run_pretrain
from pipeline.tokenizer.stage import TokenizerInputs, ensure_tokenizer
from workers.handlers.base import JobContext, Outcome, Output, figures, run_stage, stage_config


def handle_pretrain(ctx: JobContext[PretrainParams]) -> Outcome:
    params, source = ctx.params, ctx.inputs["dataset_id"]
    train = ctx.dataset("dataset_id")
    outputs: list[Output] = []
    if params.tokenizer_id is not None:
        tokenizer_id, tokenizer_dir = params.tokenizer_id, ctx.folder("tokenizer_id")
    else:
        # Trained here, before any launch, so every rank of a multi-process run reads one copy.
        tokenizer_dir, trained = ensure_tokenizer(
            params.tokenizer or TokenizerConfig(), TokenizerInputs(train), ctx.paths, ctx.hooks
        )
        tokenizer = NewArtifact(
            id=new_artifact_id("tokenizer"),
            category="tokenizer",
            folder=tokenizer_dir,
            name=f"bpe-{source.name}",
            lineage={"job_id": ctx.job_id, "dataset_id": source.id},
            details=figures(trained) if trained else {},
            copy=True,  # the model's export copies the tokenizer files from here too
        )
        tokenizer_id = tokenizer.id
        outputs.append(tokenizer)

    config = stage_config(params, PretrainConfig)
    inputs = PretrainInputs(
        train=train,
        validation=ctx.optional_dataset("validation_dataset_id"),
        tokenizer_dir=tokenizer_dir,
    )
    result = run_stage(ctx, run_pretrain, config, inputs, devices=config.devices)
    summary = figures(result)
    model = NewArtifact(
        id=new_artifact_id("model"),
        category="model",
        folder=result.output_dir,
        name=f"{config.model.preset or 'custom'}-{source.name}",
        lineage={
            "job_id": ctx.job_id,
            "dataset_id": source.id,
            "validation_dataset_id": params.validation_dataset_id,
            "tokenizer_id": tokenizer_id,
        },
        details=summary,
    )
    outputs.append(model)
    return Outcome(
        result={"model_id": model.id, "tokenizer_id": tokenizer_id, **summary}, outputs=outputs
    )
