"""Training jobs: ``tokenizer`` and ``pretrain``. Their outputs become registered artifacts."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from app.artifacts.service import PREFIXES, write_manifest
from app.artifacts.tables import Artifact
from app.ids import new_id
from workers.handlers.base import JobContext, Outcome
from workers.handlers.datasets import dataset_file, load_dataset
from workers.launch import run_distributed
from workers.pipeline.configs.training import PretrainConfig, TokenizerConfig
from workers.pipeline.pretrain import PretrainInputs, run_pretrain
from workers.pipeline.tokenizer import TokenizerInputs, ensure_tokenizer, run_tokenizer
from workers.pipeline.types import DatasetFile, PipelineError

PRETRAIN_INPUTS = ("dataset_id", "validation_dataset_id", "tokenizer_id", "tokenizer")


def handle_tokenizer(ctx: JobContext) -> Outcome:
    params = dict(ctx.params)
    dataset = load_dataset(ctx, params.pop("dataset_id"))
    config = TypeAdapter(TokenizerConfig).validate_python(params)
    inputs = TokenizerInputs(dataset_file(ctx.store, dataset))
    result = run_tokenizer(config, inputs, ctx.paths, ctx.hooks)
    artifact = register(
        ctx,
        "tokenizer",
        ctx.paths.output_dir,
        name=f"bpe-{result.vocab_size}-{dataset.name}",
        lineage={"job_id": ctx.job_id, "dataset_id": dataset.id},
        details=_details(result),
    )
    return Outcome(
        result={"tokenizer_id": artifact.id, **_details(result)},
        commit=lambda session: session.add(artifact),
    )


def handle_pretrain(ctx: JobContext) -> Outcome:
    params = dict(ctx.params)
    inputs = {name: params.pop(name, None) for name in PRETRAIN_INPUTS}
    config = TypeAdapter(PretrainConfig).validate_python(params)
    source = load_dataset(ctx, inputs["dataset_id"])
    train = dataset_file(ctx.store, source)
    validation = None
    if inputs["validation_dataset_id"]:
        validation = dataset_file(ctx.store, load_dataset(ctx, inputs["validation_dataset_id"]))

    rows: list[Artifact] = []
    tokenizer_id = inputs["tokenizer_id"]
    if tokenizer_id:
        tokenizer_dir = _artifact_dir(ctx, "tokenizer", tokenizer_id)
    else:
        tok_config = TypeAdapter(TokenizerConfig).validate_python(inputs["tokenizer"] or {})
        tokenizer_dir, trained = ensure_tokenizer(
            tok_config, TokenizerInputs(train), ctx.paths, ctx.hooks
        )
        tokenizer = register(
            ctx,
            "tokenizer",
            tokenizer_dir,
            name=f"bpe-{source.name}",
            lineage={"job_id": ctx.job_id, "dataset_id": source.id},
            details=_details(trained) if trained else {},
            copy=True,
        )
        tokenizer_id = tokenizer.id
        rows.append(tokenizer)

    result = _train(ctx, config, train, validation, tokenizer_dir)
    model = register(
        ctx,
        "model",
        ctx.paths.output_dir,
        name=f"{config.model.preset or 'custom'}-{source.name}",
        lineage={
            "job_id": ctx.job_id,
            "dataset_id": source.id,
            "validation_dataset_id": inputs["validation_dataset_id"],
            "tokenizer_id": tokenizer_id,
            "parent_model_id": None,
        },
        details=result,
    )
    rows.append(model)

    def commit(session: Session) -> None:
        session.add_all(rows)

    return Outcome(
        result={"model_id": model.id, "tokenizer_id": tokenizer_id, **result}, commit=commit
    )


def _train(
    ctx: JobContext,
    config: PretrainConfig,
    train: DatasetFile,
    validation: DatasetFile | None,
    tokenizer_dir: Path,
) -> dict[str, Any]:
    """In this process for one device; under torchrun (rank 0 reporting) for several."""
    inputs = PretrainInputs(train, validation, tokenizer_dir)
    if config.devices > 1:
        stage = "workers.pipeline.pretrain:run_pretrain"
        ranks = run_distributed(stage, config, inputs, ctx.paths, ctx.hooks, config.devices)
        return {k: v for k, v in ranks.items() if k != "output_dir"}
    result = run_pretrain(config, inputs, ctx.paths, ctx.hooks)
    return _details(result)


def register(
    ctx: JobContext,
    kind: str,
    folder: Path,
    *,
    name: str,
    lineage: dict[str, Any],
    details: dict[str, Any],
    copy: bool = False,
) -> Artifact:
    """Put a finished folder into the store under a new id; its row is committed with the job."""
    artifact_id = new_id(PREFIXES[kind])
    key = f"{kind}s/{artifact_id}"
    target = ctx.store.local_path(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(folder, target)
    else:
        shutil.move(folder, target)
        folder.mkdir(parents=True, exist_ok=True)
    size, digest = write_manifest(target)
    return Artifact(
        id=artifact_id,
        tenant_id=ctx.tenant_id,
        job_id=ctx.job_id,
        kind=kind,
        name=name[:255],
        uri=key,
        format="huggingface",
        size_bytes=size,
        sha256=digest,
        lineage={k: v for k, v in lineage.items() if v is not None},
        details=details,
    )


def _artifact_dir(ctx: JobContext, kind: str, artifact_id: str) -> Path:
    with ctx.session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None or artifact.tenant_id != ctx.tenant_id or artifact.kind != kind:
            raise PipelineError(
                f"{kind}.not_found", f"The {kind} '{artifact_id}' no longer exists."
            )
        return ctx.store.local_path(artifact.uri)


def _details(result: Any) -> dict[str, Any]:
    """A result dataclass as JSON-friendly details (paths dropped)."""
    return {
        k: v
        for k, v in dataclasses.asdict(result).items()
        if not isinstance(v, Path) and k not in ("output_dir",)
    }
