"""``judge``: a model from the registry, or an external endpoint named by a tenant secret, votes
on a comparison's pairs (each in both orders) as a rater of its own.

Created by ``POST /v1/comparisons/{id}/judges``, which checks the comparison and the secret; the
job stores the secret's name only, and the worker decrypts it when it calls the endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.jobs.kinds.registry import DAY, JobKind, device_queue, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.judge import JudgeConfig


@dataclass(frozen=True)
class JudgeParams(JudgeConfig):
    comparison_id: str = field(kw_only=True)
    """The comparison whose pairs are judged (open or closed, with its answers)."""
    judge_model_id: str | None = ref(
        "model", optional=True, formats=("huggingface", "gguf", "peft-adapter")
    )
    """A ready model of the tenant's as the judge (Hugging Face folder or GGUF)."""
    secret: str | None = field(default=None, kw_only=True)
    """The name of a tenant secret holding an OpenAI-compatible endpoint, as the judge."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.judge_model_id is None) == (self.secret is None):
            raise ConfigError("judge_model_id", "give judge_model_id or secret (one of them)")
        if self.secret is not None and not self.endpoint_model:
            raise ConfigError("endpoint_model", "name the endpoint's model to ask")


KIND = JobKind(
    name="judge",
    summary=(
        "A judge model or endpoint votes on a comparison's pairs, each in both orders "
        "(disagreeing orders are a tie), as a rater of its own in the comparison's ladder."
    ),
    params=JudgeParams,
    queue=device_queue,
    handler="workers.handlers.judge:handle_judge",
    stage="pipeline.judge.stage:run_judge",
    submittable=False,
    time_limit_s=DAY,
)
