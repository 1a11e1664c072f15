"""``synthesize``: a teacher model writes a dataset (distillation, Self-Instruct or preference
pairs), checked for contamination, privacy and bias before it is kept."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.jobs.kinds.registry import DAY, JobKind, device_queue, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.synthesize import SynthesizeConfig

MAX_EVAL_DATASETS = 8


@dataclass(frozen=True)
class SynthesizeParams(SynthesizeConfig):
    model_id: str | None = ref(
        "model", optional=True, formats=("huggingface", "gguf", "peft-adapter")
    )
    """The teacher: a registry model in Hugging Face layout (a fine-tune's merged model
    included) or a GGUF (run in llama.cpp). Give this or ``secret``."""
    secret: str | None = field(default=None, kw_only=True)
    """The teacher as an external OpenAI-compatible endpoint: the name of a tenant secret
    (``POST /v1/secrets``). Answers come from its ``/chat/completions``, Self-Instruct's new
    instructions from its ``/completions``; the job stores the name only."""
    endpoint_model: str | None = field(default=None, kw_only=True)
    """With ``secret``: the endpoint's model to ask."""
    dataset_id: str = ref("dataset")
    """Prompts to answer, or the seed instructions of ``self_instruct`` (chat, prompt/completion,
    preference or text records; a record's own answer serves ``reference`` ranking)."""
    judge_model_id: str | None = ref(
        "model", optional=True, formats=("huggingface", "gguf", "peft-adapter")
    )
    """``preferences`` ranked by ``judge``: the judge model (null: the teacher judges)."""
    eval_dataset_ids: tuple[str, ...] = ref("dataset", optional=True, many=True)
    """Evaluation datasets (up to 8): synthetic records sharing an n-gram with them are
    removed."""
    source_dataset_id: str | None = ref("dataset", optional=True)
    """Text the generations must not copy verbatim, such as the teacher's training data:
    records reproducing a ``checks.regurgitation_chars`` span of it are flagged."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ids = self.eval_dataset_ids
        if len(ids) > MAX_EVAL_DATASETS or len(set(ids)) != len(ids):
            raise ConfigError("eval_dataset_ids", f"up to {MAX_EVAL_DATASETS} different datasets")
        if self.judge_model_id is not None and (
            self.mode != "preferences" or self.ranking != "judge"
        ):
            raise ConfigError("judge_model_id", "only for mode preferences with ranking judge")
        self._check_teacher()

    def _check_teacher(self) -> None:
        if (self.model_id is None) == (self.secret is None):
            raise ConfigError("model_id", "give model_id or secret (one of them)")
        if self.secret is None:
            if self.endpoint_model is not None:
                raise ConfigError("endpoint_model", "only with secret")
            return
        if not self.endpoint_model or len(self.endpoint_model) > 200:
            raise ConfigError("endpoint_model", "name the endpoint's model (up to 200 characters)")
        if self.chat_template:
            raise ConfigError(
                "chat_template",
                "an endpoint teacher is asked through its chat API, which applies its own template",
            )
        if self.mode == "preferences" and self.ranking == "judge" and self.judge_model_id is None:
            raise ConfigError(
                "judge_model_id",
                "an endpoint teacher gives no log-likelihoods: name a judge model, or rank by "
                "reference or length",
            )


KIND = JobKind(
    name="synthesize",
    summary=(
        "Make a dataset with a teacher model (distillation, Self-Instruct or preference pairs), "
        "with contamination, privacy and bias checks counted in the result."
    ),
    params=SynthesizeParams,
    outputs=("dataset",),
    queue=device_queue,
    handler="workers.handlers.synthesize:handle_synthesize",
    stage="pipeline.synthesize.stage:run_synthesize",
    time_limit_s=DAY,
)
