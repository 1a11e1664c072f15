"""Parameters of the ``compare`` stage: every model answers every prompt, with a fixed seed.

Stdlib only (the API imports this module to validate ``POST /v1/comparisons``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range

CompareDevice = Literal["auto", "cpu", "cuda"]
MAX_PROMPTS = 500
MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class CompareConfig:
    """How the answers that raters compare are generated."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    prompts: tuple[str, ...] = ()
    """The prompts (empty when they come from a dataset)."""
    max_tokens: int = 128
    """Tokens generated per answer (1-4096)."""
    temperature: float = 0.7
    """Sampling temperature (0: greedy)."""
    seed: int = 0
    """The seed set before every answer, so an answer does not depend on the others."""
    device: CompareDevice = "auto"
    """Where to generate: ``auto`` takes CUDA when present."""
    threads: int = 2
    """CPU threads for torch and llama.cpp."""

    def __post_init__(self) -> None:
        if len(self.prompts) > MAX_PROMPTS:
            raise ConfigError("prompts", f"at most {MAX_PROMPTS} prompts")
        for i, prompt in enumerate(self.prompts):
            if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
                raise ConfigError(f"prompts.{i}", f"1-{MAX_PROMPT_CHARS} characters, not blank")
        check_range("max_tokens", self.max_tokens, 1, 4096)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_range("seed", self.seed, 0, 2**32 - 1)
        if self.device not in get_args(CompareDevice):
            raise ConfigError("device", f"one of {get_args(CompareDevice)}")
        check_range("threads", self.threads, 1, 256)
