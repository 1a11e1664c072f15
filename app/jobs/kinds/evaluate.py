"""``evaluate``: one model's figures on the datasets it names, a bias probe and samples."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import DAY, JobKind, device_queue, ref
from pipeline.configs.base import ConfigError
from pipeline.configs.evaluate import EvaluateConfig


@dataclass(frozen=True)
class EvaluateParams(EvaluateConfig):
    model_id: str = ref("model", formats=("huggingface", "gguf", "peft-adapter"))
    """The model to evaluate: Hugging Face layout (imported, pretrained, fine-tuned), a LoRA
    adapter (merged onto its base) or a GGUF (scored in llama.cpp)."""
    dataset_id: str | None = ref("dataset", optional=True)
    """Evaluation text: perplexity, bits per byte and word perplexity."""
    extra_dataset_id: str | None = ref("dataset", optional=True)
    """A second evaluation dataset, scored separately."""
    training_dataset_id: str | None = ref("dataset", optional=True)
    """The model's training text (from its lineage), to check the evaluation text for
    contamination."""
    bias_templates_id: str | None = ref("dataset", optional=True)
    """Your own bias template file (JSONL in the shipped set's format) instead of Gristmill's."""
    task_dataset_id: str | None = ref("dataset", optional=True)
    """Task items (JSONL: multiple choice or generation, see ``task``), scored into accuracy,
    exact match, F1, ROUGE-L, chrF, BLEU or label figures with 95% intervals."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extra_dataset_id and not self.dataset_id:
            raise ConfigError("extra_dataset_id", "give dataset_id first")
        wanted = self.dataset_id or self.task_dataset_id or self.bias.enabled
        if not (wanted or self.samples.prompts):
            # Refused here rather than as a failed job: nothing would be measured.
            raise ConfigError(
                "dataset_id",
                "give a dataset or a task dataset, enable the bias probe or pass samples.prompts",
            )


KIND = JobKind(
    name="evaluate",
    summary=(
        "Evaluate a model: perplexity and bits per byte per dataset, contamination "
        "against training text, task metrics on a task dataset, a bias probe, and seeded samples."
    ),
    params=EvaluateParams,
    queue=device_queue,
    handler="workers.handlers.evaluate:handle_evaluate",
    stage="pipeline.evaluate.stage:run_evaluate",
    time_limit_s=2 * DAY,
)
