"""Parameters of the ``judge`` stage: a model (or an external endpoint) votes on a comparison's
pairs, each pair asked in both orders.

Stdlib only (the API imports this module to validate a judge request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range
from pipeline.configs.rubric import check_rubric, fill

JudgeDevice = Literal["auto", "cpu", "cuda"]
SLOTS = ("question", "answer_a", "answer_b")

DEFAULT_RUBRIC = (
    "Two assistants answered the same question. Decide which answer is better: more helpful, "
    "correct and clear. The order they are shown in and their length must not matter.\n\n"
    "Question: {question}\n\n"
    "Answer A: {answer_a}\n\n"
    "Answer B: {answer_b}\n\n"
    "Which answer is better? Reply with the single letter A or B.\n"
    "Better answer:"
)
"""MT-Bench's pairwise prompt, shortened: the verdict is the next token (" A" or " B")."""


@dataclass(frozen=True)
class JudgeConfig:
    """How the judge is asked: the rubric, and where a registry model runs."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    rubric: str = DEFAULT_RUBRIC
    """The prompt; ``{question}``, ``{answer_a}`` and ``{answer_b}`` are filled in (each once).
    It should end where the verdict comes: a registry model's next token is read as " A" or
    " B" (log-likelihood), an endpoint's reply is searched for the letter."""
    endpoint_model: str = ""
    """The model name sent to an external endpoint (required with ``secret``)."""
    max_pairs: int = 2000
    """Judge at most this many pairs (the first ones, in prompt order)."""
    max_length: int | None = None
    """A registry model's scoring window (None: its context, at most 2048); a longer prompt
    keeps its end."""
    timeout_s: float = 60.0
    """How long one endpoint call may take (each is tried up to three times)."""
    device: JudgeDevice = "auto"
    """Where a registry model runs: ``auto`` takes CUDA when present."""
    threads: int = 2
    """CPU threads for torch and llama.cpp."""

    def __post_init__(self) -> None:
        check_rubric("rubric", self.rubric, SLOTS)
        if len(self.endpoint_model) > 200:
            raise ConfigError("endpoint_model", "at most 200 characters")
        check_range("max_pairs", self.max_pairs, 1, 100_000)
        if self.max_length is not None:
            check_range("max_length", self.max_length, 16, 131_072)
        check_range("timeout_s", self.timeout_s, 1.0, 600.0)
        if self.device not in get_args(JudgeDevice):
            raise ConfigError("device", f"one of {get_args(JudgeDevice)}")
        check_range("threads", self.threads, 1, 256)

    def render(self, question: str, answer_a: str, answer_b: str) -> str:
        """The rubric filled in, in one pass (braces in the texts are kept as they are)."""
        return fill(self.rubric, {"question": question, "answer_a": answer_a, "answer_b": answer_b})
