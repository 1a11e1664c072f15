"""Parameters of task evaluation in the ``evaluate`` stage: a dataset of the user's items scored
as lm-evaluation-harness scores them (multiple choice by log-likelihood) or answered greedily and
compared with references (generation, label tasks).

Stdlib only (the API imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range
from pipeline.configs.rubric import check_rubric, fill

TaskKind = Literal["auto", "multiple_choice", "generation"]

DEFAULT_GRADER_RUBRIC = (
    "Rate how well the answer responds to the question: correct, complete and clear. A "
    "reference answer is given as a guide to what is correct.\n\n"
    "Question: {question}\n\n"
    "Reference answer: {reference}\n\n"
    "Answer: {answer}\n\n"
    "Rate the answer from 1 (useless or wrong) to 10 (fully correct and clear). Reply with the "
    "number only.\n"
    "Score:"
)
"""OpenAI's score-model grader's task, shortened: the score is what comes next."""
GRADER_SLOTS = ("question", "reference")


@dataclass(frozen=True)
class TaskOptions:
    """How the task dataset (``task_dataset_id``, JSONL) is scored.

    Records are ``{"prompt", "choices", "answer"}`` (multiple choice, ``answer`` the index of
    the right choice) or ``{"prompt" | "messages", "reference" | "references"}`` (generation;
    a record may name its own ``"labels"``).
    """

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    kind: TaskKind = "auto"
    """``multiple_choice``, ``generation``, or ``auto``: multiple choice when the first record
    has ``choices``."""
    num_fewshot: int = 0
    """Multiple choice: solved examples (other items of the dataset, drawn with
    ``fewshot_seed``) put before each prompt, as lm-evaluation-harness does."""
    fewshot_seed: int = 1234
    """Seed of the few-shot draw (each item's draw depends on it and the item's index only)."""
    target_delimiter: str = " "
    """Between a prompt and its choice (lm-evaluation-harness's default)."""
    fewshot_delimiter: str = "\n\n"
    """Between few-shot examples and before the prompt (lm-evaluation-harness's default)."""
    labels: tuple[str, ...] = ()
    """Generation as classification: the answer is read as one of these labels (accuracy,
    macro-F1, a confusion matrix). Records may also carry their own ``labels``."""
    max_new_tokens: int = 32
    """Generation: most tokens generated per item (greedy)."""
    stop: tuple[str, ...] = ("\n\n",)
    """Generation: the answer is cut at the first of these strings."""
    max_items: int | None = None
    """Score at most this many items (all when unset)."""
    bootstrap_samples: int = 1000
    """Resamples of the items for each figure's 95% interval."""
    seed: int = 0
    """Seed of the bootstrap (figures repeat exactly)."""
    worst_examples: int = 10
    """How many of the worst-scored items the result and the report show."""

    grader_rubric: str = DEFAULT_GRADER_RUBRIC
    """With a grader (``grader_model_id`` or ``grader_secret``): the prompt each generated
    answer is rated with, 1 to 10. ``{answer}`` is filled in (once); ``{question}`` and
    ``{reference}`` (the references, one per line) may be. It should end where the score
    comes."""
    grader_endpoint_model: str = ""
    """The model name sent to the grader endpoint (required with ``grader_secret``)."""
    grader_timeout_s: float = 60.0
    """How long one grader endpoint call may take (each is tried up to three times)."""

    def __post_init__(self) -> None:
        check_rubric("grader_rubric", self.grader_rubric, ("answer",), GRADER_SLOTS)
        if len(self.grader_endpoint_model) > 200:
            raise ConfigError("grader_endpoint_model", "at most 200 characters")
        check_range("grader_timeout_s", self.grader_timeout_s, 1.0, 600.0)
        if self.kind not in get_args(TaskKind):
            raise ConfigError("kind", f"one of {get_args(TaskKind)}")
        check_range("num_fewshot", self.num_fewshot, 0, 64)
        check_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        check_range("bootstrap_samples", self.bootstrap_samples, 10, 100_000)
        check_range("worst_examples", self.worst_examples, 0, 1000)
        if self.max_items is not None:
            check_range("max_items", self.max_items, 1, 1 << 40)
        if len(self.labels) > 1000 or len(set(self.labels)) != len(self.labels):
            raise ConfigError("labels", "at most 1000 distinct labels")
        if any(not s for s in self.stop) or len(self.stop) > 16:
            raise ConfigError("stop", "at most 16 non-empty strings")
        if len(self.target_delimiter) > 64 or len(self.fewshot_delimiter) > 64:
            raise ConfigError("fewshot_delimiter", "delimiters are at most 64 characters")

    def grader_prompt(self, question: str, answer: str, references: tuple[str, ...]) -> str:
        """The grader's rubric filled in for one answer."""
        values = {"question": question, "answer": answer, "reference": "\n".join(references)}
        return fill(self.grader_rubric, values)
