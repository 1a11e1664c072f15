"""``prepare``: clean a dataset into new ones (normalise, filter, deduplicate, split)."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import JobKind, ref
from pipeline.configs.data import PrepareConfig


@dataclass(frozen=True)
class PrepareParams(PrepareConfig):
    dataset_id: str = ref("dataset")
    """The ready dataset to clean; it is never modified (a new dataset is written)."""
    eval_dataset_id: str | None = ref("dataset", optional=True)
    """Dataset to check for train/eval overlap (n-gram contamination); null to skip."""


KIND = JobKind(
    name="prepare",
    summary=(
        "Clean a dataset: normalise, filter, deduplicate, scrub PII, check contamination, split."
    ),
    params=PrepareParams,
    outputs=("dataset",),
    handler="workers.handlers.prepare:handle_prepare",
    stage="pipeline.prepare.stage:run_prepare",
)
