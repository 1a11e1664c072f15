"""Parameters of the ``synthesize`` stage: a teacher model writes a training dataset, and the
result is checked for the three risks of synthetic data (contamination, privacy, bias).

Stdlib only (the API imports this module to validate ``POST /v1/jobs``). Every bound that decides
how long a job runs (prompts, samples per prompt, tokens per answer, instructions grown) is
checked here, so an oversized request is refused with the field named before it is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range
from pipeline.configs.data import PiiConfig

SynthesizeMode = Literal["distill", "self_instruct", "preferences"]
Ranking = Literal["judge", "reference", "length"]
SynthDevice = Literal["auto", "cpu", "cuda"]
MAX_PROMPTS = 10_000
MAX_SAMPLES = 16
MAX_NEW_TOKENS = 4096
MAX_INSTRUCTIONS = 10_000


@dataclass(frozen=True)
class SynthesizeChecks:
    """The risk checks run on every synthetic dataset (their counts are in the job's result)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    contamination_ngram: int = 13
    """Words per n-gram: a record sharing one with an evaluation dataset is removed (GPT-3: 13)."""
    pii: PiiConfig = field(default_factory=PiiConfig)
    """PII scrubbing of every generated text (prepare's scrubber and settings)."""
    regurgitation_chars: int = 50
    """A generated text that reproduces an exact span this long of the source dataset is
    regurgitation."""
    drop_regurgitated: bool = True
    """Remove regurgitating records (false: keep them, flagged in the report only)."""

    def __post_init__(self) -> None:
        check_range("contamination_ngram", self.contamination_ngram, 1, 64)
        check_range("regurgitation_chars", self.regurgitation_chars, 16, 1000)


@dataclass(frozen=True)
class SynthesizeConfig:
    """How a teacher model makes a dataset: answers to prompts (``distill``), new instructions
    grown from seeds and answered (``self_instruct``) or ranked answer pairs (``preferences``)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    mode: SynthesizeMode = "distill"
    """``distill``: chat records ``{"messages": [user, assistant]}``; ``self_instruct``: the
    same for instructions grown from the prompt dataset's seeds; ``preferences``:
    ``{"prompt", "chosen", "rejected"}`` pairs for DPO."""
    max_prompts: int = 1000
    """Prompts (or seed instructions) read from the prompt dataset, in file order (1-10000)."""
    prompt_template: str = "{prompt}\n"
    """What the teacher is asked, with ``{prompt}`` standing for the prompt (written once)."""
    chat_template: bool = False
    """Wrap the templated prompt in the teacher's own chat template as a user turn (a Hugging
    Face teacher whose tokenizer has one); false: the teacher continues the text as it is."""
    max_new_tokens: int = 256
    """Tokens generated per answer (1-4096)."""
    temperature: float = 0.7
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""
    seed: int = 0
    """Every generation is seeded from this and its position, so a run is reproducible."""
    samples: int = 4
    """``preferences``: answers sampled per prompt (2-16); the best and worst become the pair."""
    ranking: Ranking = "judge"
    """``preferences``: ``judge`` ranks by the judge model's mean log-likelihood per token of the
    answer (the teacher when no judge is given); ``reference`` by ROUGE-L against the prompt
    record's own answer; ``length`` prefers the longer answer."""
    num_instructions: int = 100
    """``self_instruct``: new instructions to grow (1-10000)."""
    few_shot: int = 3
    """``self_instruct``: seed instructions shown to the teacher per request (1-16)."""
    rouge_threshold: float = 0.7
    """``self_instruct``: a new instruction is kept only when its ROUGE-L against every
    instruction so far is below this (the Self-Instruct paper's 0.7)."""
    max_attempts: int | None = None
    """``self_instruct``: requests made at most (null: 4 per instruction wanted)."""
    checks: SynthesizeChecks = field(default_factory=SynthesizeChecks)
    """The contamination, privacy and bias checks."""
    device: SynthDevice = "auto"
    """Where to generate: ``auto`` takes CUDA when present; ``cuda`` uses the gpu queue."""
    threads: int = 2
    """CPU threads for torch and llama.cpp."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(SynthesizeMode):
            raise ConfigError("mode", f"one of {get_args(SynthesizeMode)}")
        check_range("max_prompts", self.max_prompts, 1, MAX_PROMPTS)
        if self.prompt_template.count("{prompt}") != 1 or len(self.prompt_template) > 4000:
            raise ConfigError("prompt_template", "at most 4000 characters with {prompt} once")
        check_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_range("top_p", self.top_p, 0.01, 1.0)
        check_range("seed", self.seed, 0, 2**31 - 1)
        check_range("samples", self.samples, 2, MAX_SAMPLES)
        if self.ranking not in get_args(Ranking):
            raise ConfigError("ranking", f"one of {get_args(Ranking)}")
        check_range("num_instructions", self.num_instructions, 1, MAX_INSTRUCTIONS)
        check_range("few_shot", self.few_shot, 1, 16)
        check_range("rouge_threshold", self.rouge_threshold, 0.0, 1.0)
        if self.max_attempts is not None:
            check_range("max_attempts", self.max_attempts, 1, 4 * MAX_INSTRUCTIONS)
        if self.device not in get_args(SynthDevice):
            raise ConfigError("device", f"one of {get_args(SynthDevice)}")
        check_range("threads", self.threads, 1, 256)

    @property
    def attempts(self) -> int:
        """Requests ``self_instruct`` may make."""
        return self.max_attempts or 4 * self.num_instructions
