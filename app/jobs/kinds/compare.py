"""``compare``: every model answers every prompt for a blind side-by-side comparison.

Created with its comparison by ``POST /v1/comparisons``; rating opens when the job succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.jobs.kinds.registry import DAY, JobKind, device_queue, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.compare import CompareConfig


@dataclass(frozen=True)
class CompareParams(CompareConfig):
    comparison_id: str = field(kw_only=True)
    """The comparison whose answers this job generates (created by ``POST /v1/comparisons``)."""
    model_ids: tuple[str, ...] = ref("model", formats=("huggingface", "gguf", "peft-adapter"))
    """The models compared, two or more, each the tenant's own and ready."""
    dataset_id: str | None = ref("dataset", optional=True)
    """Prompts as a dataset's texts (the first 500) instead of ``prompts``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= len(self.model_ids) <= 16 or len(set(self.model_ids)) != len(self.model_ids):
            raise ConfigError("model_ids", "2-16 different models")
        if bool(self.prompts) == (self.dataset_id is not None):
            raise ConfigError("prompts", "give prompts or dataset_id (one of them)")


KIND = JobKind(
    name="compare",
    summary=(
        "Generate every model's answer to every prompt (fixed seeds) for a blind "
        "side-by-side comparison; rating opens when it succeeds."
    ),
    params=CompareParams,
    queue=device_queue,
    handler="workers.handlers.compare:handle_compare",
    stage="pipeline.compare.stage:run_compare",
    submittable=False,
    time_limit_s=DAY,
)
