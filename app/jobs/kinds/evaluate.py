"""``evaluate``: one model's figures on the datasets it names, a bias probe and samples."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    grader_model_id: str | None = ref("model", optional=True, formats=("huggingface", "gguf"))
    """A generation task's score grader: a ready model of the tenant's rates each answer 1-10
    against ``task.grader_rubric`` (the likeliest score)."""
    grader_secret: str | None = field(default=None, kw_only=True)
    """The name of a tenant secret holding an OpenAI-compatible endpoint, as the grader (asked
    for ``task.grader_endpoint_model``); the worker decrypts it, the job keeps the name only."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.extra_dataset_id and not self.dataset_id:
            raise ConfigError("extra_dataset_id", "give dataset_id first")
        graded = self.grader_model_id is not None or self.grader_secret is not None
        if self.grader_model_id is not None and self.grader_secret is not None:
            raise ConfigError("grader_model_id", "give grader_model_id or grader_secret, not both")
        if graded and not self.task_dataset_id:
            raise ConfigError("grader_model_id", "a grader rates a task: give task_dataset_id")
        if graded and self.task.kind == "multiple_choice":
            raise ConfigError("grader_model_id", "a grader rates generated answers only")
        if self.grader_secret is not None and not self.task.grader_endpoint_model:
            raise ConfigError("task.grader_endpoint_model", "name the endpoint's model to ask")
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
