"""Training jobs: ``tokenizer`` and ``pretrain``. Their outputs become registered artifacts."""

from __future__ import annotations

from app.artifacts.service import NewArtifact, new_artifact_id
from app.jobs.kinds import PretrainParams, TokenizerParams
from workers.handlers.base import JobContext, Outcome, Output, details, run_stage, stage_config
from workers.pipeline.configs.codec import encode
from workers.pipeline.configs.training import PretrainConfig, TokenizerConfig
from workers.pipeline.pretrain import PretrainInputs
from workers.pipeline.tokenizer import TokenizerInputs, ensure_tokenizer


def handle_tokenizer(ctx: JobContext[TokenizerParams]) -> Outcome:
    dataset = ctx.inputs["dataset_id"]
    inputs = TokenizerInputs(train=ctx.dataset("dataset_id"))
    result = details(run_stage(ctx, stage_config(ctx.params, TokenizerConfig), inputs))
    tokenizer = NewArtifact(
        id=new_artifact_id("tokenizer"),
        category="tokenizer",
        folder=ctx.paths.output_dir,
        name=f"bpe-{result['vocab_size']}-{dataset.name}",
        lineage={"job_id": ctx.job_id, "dataset_id": dataset.id},
        details=result,
    )
    return Outcome(result={"tokenizer_id": tokenizer.id, **result}, outputs=[tokenizer])


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
            details=details(encode(trained)) if trained else {},
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
    result = details(run_stage(ctx, config, inputs, devices=config.devices))
    model = NewArtifact(
        id=new_artifact_id("model"),
        category="model",
        folder=ctx.paths.output_dir,
        name=f"{config.model.preset or 'custom'}-{source.name}",
        lineage={
            "job_id": ctx.job_id,
            "dataset_id": source.id,
            "validation_dataset_id": params.validation_dataset_id,
            "tokenizer_id": tokenizer_id,
        },
        details=result,
    )
    outputs.append(model)
    return Outcome(
        result={"model_id": model.id, "tokenizer_id": tokenizer_id, **result}, outputs=outputs
    )
