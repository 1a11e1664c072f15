"""Parameters of the ``evaluate`` stage: perplexity, contamination, a bias probe and samples.

Stdlib only (the API imports this module). Perplexity follows lm-evaluation-harness's
definitions so the headline figure, bits per byte, compares models with different tokenizers:
every figure is a corpus total (ΣNLL over Σtokens, Σbytes or Σwords), never a mean of
per-document ratios.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range
from pipeline.configs.compare import MAX_PROMPT_CHARS
from pipeline.configs.tasks import TaskOptions

MAX_SAMPLE_PROMPTS = 256
MAX_SAMPLE_SEEDS = 64
MAX_SAMPLES = 1024
"""Generations per job (prompts × seeds): each costs up to ``max_new_tokens`` forward passes."""
MAX_SEED = 2**32 - 1
"""llama.cpp takes a 32-bit seed; torch's would be wider, but a sample must repeat in both."""

Windowing = Literal["disjoint", "strided"]
EvalDevice = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class PerplexityOptions:
    """How documents are cut into windows the model can see."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = True
    """Score the datasets (total NLL, token perplexity, bits per byte, word perplexity)."""
    windowing: Windowing = "disjoint"
    """``disjoint``: lm-evaluation-harness's rolling windows, every token scored once, each window
    predicting up to ``max_length`` tokens; ``strided``: Hugging Face's sliding window with
    ``stride`` new tokens per window and the rest as context."""
    max_length: int | None = None
    """Tokens the model sees per window (default: the model's context length, at most 2048)."""
    stride: int = 512
    """New tokens scored per window when windowing is ``strided`` (at most max_length)."""
    batch_size: int = 8
    """Windows scored together in one forward pass."""
    max_documents: int | None = None
    """Score at most this many documents of each dataset (all when unset)."""

    def __post_init__(self) -> None:
        if self.windowing not in get_args(Windowing):
            raise ConfigError("windowing", f"one of {get_args(Windowing)}")
        if self.max_length is not None:
            check_range("max_length", self.max_length, 2, 1 << 20)
            if self.windowing == "strided" and self.stride > self.max_length:
                raise ConfigError("stride", "must not exceed max_length")
        check_range("stride", self.stride, 1, 1 << 20)
        check_range("batch_size", self.batch_size, 1, 1024)
        if self.max_documents is not None:
            check_range("max_documents", self.max_documents, 1, 1 << 40)


@dataclass(frozen=True)
class ContaminationOptions:
    """Overlap between the evaluation text and the model's training text."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    ngram: int = 13
    """Words per n-gram; an evaluation document sharing one n-gram with training text is
    contaminated (the rule and hashing of data preparation)."""
    exclude: bool = False
    """Leave contaminated documents out of the perplexity figures (they are reported either way)."""

    def __post_init__(self) -> None:
        check_range("ngram", self.ngram, 3, 64)


@dataclass(frozen=True)
class BiasOptions:
    """The counterfactual bias probe (templates shipped with Gristmill, or a dataset of yours)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    enabled: bool = False
    """Run the probe."""
    bootstrap_samples: int = 1000
    """Resamples of the frames for the 95% interval."""
    permutations: int = 2000
    """Random sign flips for the permutation p-value."""
    seed: int = 0
    """Seed of the bootstrap and the permutations (figures repeat exactly)."""

    def __post_init__(self) -> None:
        check_range("bootstrap_samples", self.bootstrap_samples, 10, 100_000)
        check_range("permutations", self.permutations, 10, 1_000_000)


@dataclass(frozen=True)
class SampleOptions:
    """Generations kept with the results, reproducible from their seeds."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    prompts: tuple[str, ...] = ()
    """Prompts to continue (none: no samples)."""
    seeds: tuple[int, ...] = (0,)
    """One generation per prompt and seed."""
    max_new_tokens: int = 64
    """Tokens generated per sample."""
    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""

    def __post_init__(self) -> None:
        if len(self.prompts) > MAX_SAMPLE_PROMPTS:
            raise ConfigError("prompts", f"at most {MAX_SAMPLE_PROMPTS} prompts")
        if not 1 <= len(self.seeds) <= MAX_SAMPLE_SEEDS:
            raise ConfigError("seeds", f"give 1-{MAX_SAMPLE_SEEDS} seeds")
        for i, seed in enumerate(self.seeds):
            check_range(f"seeds.{i}", seed, 0, MAX_SEED)
        if len(self.prompts) * len(self.seeds) > MAX_SAMPLES:
            raise ConfigError(
                "seeds",
                f"at most {MAX_SAMPLES} generations (prompts × seeds), got "
                f"{len(self.prompts) * len(self.seeds)}",
            )
        check_range("max_new_tokens", self.max_new_tokens, 1, 4096)
        check_range("temperature", self.temperature, 0.0, 10.0)
        check_range("top_p", self.top_p, 0.01, 1.0)


@dataclass(frozen=True)
class EvaluateConfig:
    """What to measure on one model."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    perplexity: PerplexityOptions = field(default_factory=PerplexityOptions)
    """Perplexity and bits per byte on the evaluation datasets."""
    contamination: ContaminationOptions = field(default_factory=ContaminationOptions)
    """Check the evaluation datasets against training datasets (when any are given)."""
    bias: BiasOptions = field(default_factory=BiasOptions)
    """The counterfactual bias probe."""
    samples: SampleOptions = field(default_factory=SampleOptions)
    """Generations for given prompts."""
    task: TaskOptions = field(default_factory=TaskOptions)
    """How the task dataset (``task_dataset_id``) is scored, when one is given."""
    device: EvalDevice = "auto"
    """Where to run: ``auto`` takes CUDA when present."""
    threads: int = 2
    """CPU threads for torch and llama.cpp."""

    def __post_init__(self) -> None:
        if self.device not in get_args(EvalDevice):
            raise ConfigError("device", f"one of {get_args(EvalDevice)}")
        check_range("threads", self.threads, 1, 256)
        # Here, not in SampleOptions: stages that template their own prompts (synthesize) use
        # SampleOptions too, with longer texts; this bounds what a user sends.
        for i, prompt in enumerate(self.samples.prompts):
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ConfigError(f"samples.prompts.{i}", f"at most {MAX_PROMPT_CHARS} characters")
