"""Parameters of the ``quantize`` stage: GGUF for llama.cpp on CPUs, GPTQ for GPUs.

Stdlib only (the API imports this module). The thresholds a quantised file must meet live here
too, so a job that asked for a type knows before it runs what "passing its check" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range

GgufType = Literal["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]
QuantFormat = Literal["gguf", "gptq"]

# Worst held-out perplexity ratio (quantised / full precision) each GGUF type may show before
# the stage fails it; the lower end of the ratio's 95% interval is what is compared, so the
# measurement's own noise does not fail a good file. Generous on purpose: they catch a broken
# file (wrong permutation, wrong tokenizer), not a model that quantises a little worse than
# usual; the report has the figures.
DEFAULT_MAX_PERPLEXITY_RATIO: dict[str, float] = {
    "f32": 1.001,
    "f16": 1.01,
    "bf16": 1.03,
    "q8_0": 1.03,
    "q6_k": 1.08,
    "q5_k_m": 1.15,
    "q4_k_m": 1.35,
    "q4_0": 1.6,
}

_DEFAULT_PROMPTS = (
    "Once upon a time",
    "The little dog ran to the",
    "She opened the door and saw",
    "In the morning, the sun",
)


@dataclass(frozen=True)
class GgufOptions:
    """What GGUF files to write and how strictly to check them."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    types: tuple[GgufType, ...] = ("q8_0",)
    """GGUF types to produce, one file each (f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0)."""
    max_logit_delta: float = 1e-2
    """F16/F32 files fail when llama.cpp's logits differ from torch's by more than this."""
    max_perplexity_ratio: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_MAX_PERPLEXITY_RATIO)
    )
    """Per type: fail when held-out perplexity exceeds full precision's by more than this ratio,
    even at the lower end of its 95% interval (types left out keep their default)."""
    generation_tokens: int = 64
    """Tokens generated in llama.cpp to measure CPU generation speed (0 skips it)."""
    threads: int = 2
    """CPU threads llama.cpp uses for the checks and the speed figure."""

    def __post_init__(self) -> None:
        if not self.types:
            raise ConfigError("types", "give at least one GGUF type")
        for t in self.types:
            if t not in get_args(GgufType):
                raise ConfigError("types", f"unknown GGUF type {t!r}; one of {get_args(GgufType)}")
        if len(set(self.types)) != len(self.types):
            raise ConfigError("types", "each type at most once")
        check_range("max_logit_delta", self.max_logit_delta, 0.0, 100.0)
        for name, ratio in self.max_perplexity_ratio.items():
            if name not in get_args(GgufType):
                raise ConfigError("max_perplexity_ratio", f"unknown GGUF type {name!r}")
            check_range("max_perplexity_ratio", ratio, 1.0, 100.0)
        check_range("generation_tokens", self.generation_tokens, 0, 4096)
        check_range("threads", self.threads, 1, 256)


@dataclass(frozen=True)
class GptqOptions:
    """GPTQ (Frantar et al. 2022) through gptqmodel, calibrated on a Gristmill dataset."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    bits: Literal[3, 4, 8] = 4
    """Bits per weight (3, 4 or 8)."""
    group_size: int = 128
    """Columns sharing one scale; -1 for one scale per output row."""
    act_order: bool = True
    """Quantise columns in order of decreasing activation magnitude (desc_act)."""
    symmetric: bool = True
    """Symmetric grid (zero point in the middle); False learns a zero point per group."""
    damp_percent: float = 0.01
    """Hessian dampening, as a fraction of its mean diagonal (0-1)."""
    calibration_samples: int = 128
    """Calibration sequences drawn from the calibration dataset (1-4096)."""
    calibration_length: int = 512
    """Tokens per calibration sequence (16-8192)."""

    def __post_init__(self) -> None:
        if self.bits not in (3, 4, 8):
            raise ConfigError("bits", "must be 3, 4 or 8")
        if self.group_size != -1:
            check_range("group_size", self.group_size, 8, 65536)
            if self.group_size & (self.group_size - 1):
                raise ConfigError("group_size", "must be a power of two or -1")
        check_range("damp_percent", self.damp_percent, 0.0, 1.0)
        check_range("calibration_samples", self.calibration_samples, 1, 4096)
        check_range("calibration_length", self.calibration_length, 16, 8192)


@dataclass(frozen=True)
class QuantizeConfig:
    """Quantise a Hugging Face Llama-family model to GGUF or GPTQ, and measure what it cost."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    format: QuantFormat = "gguf"
    """gguf (llama.cpp, CPUs) or gptq (GPUs; HF folder loadable by transformers)."""
    gguf: GgufOptions = field(default_factory=GgufOptions)
    """Options used when format is gguf."""
    gptq: GptqOptions = field(default_factory=GptqOptions)
    """Options used when format is gptq."""
    prompts: tuple[str, ...] = _DEFAULT_PROMPTS
    """Fixed prompts on which quantised logits are compared with the torch model's."""
    eval_tokens: int = 16384
    """Held-out tokens scored for perplexity and bits per byte (256-10000000); without a held-out
    dataset the shipped default text (a few thousand tokens) is scored whole up to this cap."""
    eval_window: int = 256
    """Tokens per perplexity window, capped at the model's context length (16-32768)."""
    seed: int = 1234
    """Seeds the calibration sample draw."""

    def __post_init__(self) -> None:
        if self.format not in get_args(QuantFormat):
            raise ConfigError("format", f"must be one of {get_args(QuantFormat)}")
        if not 1 <= len(self.prompts) <= 32 or any(not p.strip() for p in self.prompts):
            raise ConfigError("prompts", "give 1-32 non-blank prompts")
        check_range("eval_tokens", self.eval_tokens, 256, 10_000_000)
        check_range("eval_window", self.eval_window, 16, 32768)
        check_range("seed", self.seed, 0, 2**63 - 1)
