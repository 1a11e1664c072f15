"""Dataset jobs: ``validate`` (after an upload) and ``prepare`` (clean into a child dataset)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.datasets.service import data_key
from app.datasets.tables import Dataset
from app.db import utcnow
from app.ids import new_id
from app.storage import CHUNK, LocalStore
from workers.handlers.base import JobContext, Outcome
from workers.pipeline.configs.data import PrepareConfig, ValidateConfig
from workers.pipeline.formats import detect_format
from workers.pipeline.prepare import PrepareInputs, run_prepare
from workers.pipeline.types import DatasetFile, PipelineError
from workers.pipeline.validate import ValidateInputs, run_validate


def load_dataset(ctx: JobContext, dataset_id: str) -> Dataset:
    with ctx.session_factory() as session:
        dataset = session.get(Dataset, dataset_id)
        if dataset is None or dataset.tenant_id != ctx.tenant_id:
            raise PipelineError("dataset.not_found", f"Dataset '{dataset_id}' no longer exists.")
        return dataset


def dataset_file(store: LocalStore, dataset: Dataset) -> DatasetFile:
    """How the pipeline reads a dataset that validation already described."""
    if dataset.format is None:
        return detect_format(store.local_path(dataset.storage_key), dataset.options)
    return DatasetFile(
        path=store.local_path(dataset.storage_key),
        format=dataset.format,
        compression=dataset.compression,
        options=dataset.options,
    )


def handle_validate(ctx: JobContext) -> Outcome:
    dataset = load_dataset(ctx, ctx.params["dataset_id"])
    inputs = ValidateInputs(ctx.store.local_path(dataset.storage_key), dataset.options)
    values: dict[str, Any]
    try:
        result = run_validate(ValidateConfig(), inputs, ctx.paths, ctx.hooks)
    except PipelineError as err:
        values = {"status": "failed", "errors": [{"code": err.code, "reason": err.message}]}
    else:
        values = {
            "status": "ready" if result.ok else "failed",
            "format": result.format,
            "compression": result.compression,
            "kind": result.kind,
            "records": result.records,
            "text_bytes": result.bytes,
            "errors": result.errors or None,
        }
        if not result.ok and result.error_count > len(result.errors):
            values["errors"] = [*result.errors, {"reason": f"{result.error_count} errors in all"}]

    def commit(session: Session) -> None:
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset.id)
            .values(**values, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )

    summary = {k: v for k, v in values.items() if k != "errors"}
    return Outcome(result={"dataset_id": dataset.id, **summary}, commit=commit)


def handle_prepare(ctx: JobContext) -> Outcome:
    params = dict(ctx.params)
    source = load_dataset(ctx, params.pop("dataset_id"))
    config = TypeAdapter(PrepareConfig).validate_python(params)
    eval_file = None
    if config.eval_dataset_id:
        eval_file = dataset_file(ctx.store, load_dataset(ctx, config.eval_dataset_id))
    inputs = PrepareInputs(dataset_file(ctx.store, source), eval_file)
    result = run_prepare(config, inputs, ctx.paths, ctx.hooks)
    report_path = ctx.paths.output_dir / "report.json"
    if not report_path.exists():
        report_path.write_text(json.dumps(result.report))
    children: list[Dataset] = []
    splits = [("train", result.train_path), ("validation", result.validation_path)]
    for split, path in splits:
        if path is None:
            continue
        children.append(_child_dataset(ctx, source, split, path, result.kind, report_path))

    def commit(session: Session) -> None:
        session.add_all(children)

    summary = {k: v for k, v in asdict(result).items() if k not in ("report", "train_path")}
    summary.pop("validation_path", None)
    return Outcome(
        result={
            "source_dataset_id": source.id,
            "dataset_ids": {split: d.id for (split, _), d in zip(splits, children, strict=False)},
            **summary,
        },
        commit=commit,
    )


def _child_dataset(
    ctx: JobContext, source: Dataset, split: str, path: Path, kind: str, report: Path
) -> Dataset:
    """Move a prepared file into the store as a new ready dataset (its row comes on success)."""
    dataset_id = new_id("ds")
    target = ctx.store.local_path(data_key(dataset_id))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    report_key = f"datasets/{dataset_id}/report.json"
    shutil.copyfile(report, ctx.store.local_path(report_key))
    digest, records = _hash_and_count_lines(target)
    return Dataset(
        id=dataset_id,
        tenant_id=ctx.tenant_id,
        name=f"{source.name} ({'prepared' if split == 'train' else 'validation split'})",
        status="ready",
        filename=f"{split}.jsonl",
        options={},
        storage_key=data_key(dataset_id),
        size_bytes=target.stat().st_size,
        sha256=digest,
        format="jsonl",
        compression=None,
        kind=kind,
        records=records,
        text_bytes=target.stat().st_size,
        report_key=report_key,
        parent_id=source.id,
        job_id=ctx.job_id,
    )


def _hash_and_count_lines(path: Path) -> tuple[str, int]:
    """SHA-256 and JSONL record count of a file, in one read."""
    digest, lines = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
            lines += data.count(b"\n")
    return digest.hexdigest(), lines
