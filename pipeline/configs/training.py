"""Parameters of tokenizer training and pretraining, with the rules that keep them consistent.

Stdlib only (the API imports this module to validate job parameters). Cross-field rules that need
the model shape (batch divisibility, memory) live here too, so the API rejects an impossible job
before it is queued rather than after a GPU was found for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, Precision, check_range
from pipeline.configs.optim import OptimizerConfig, ScheduleConfig

AUTO = -1  # an integer parameter whose value follows the run (resolved in __post_init__)


@dataclass(frozen=True)
class TokenizerConfig:
    """Train a byte-level BPE tokenizer (GPT-2/Llama-3 style: every byte is representable)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    vocab_size: int = 8192
    """Target vocabulary size including special tokens (256 + specials .. 262144)."""
    min_frequency: int = 2
    """A pair must occur at least this often to be merged (1-1000000)."""
    bos_token: str = "<|bos|>"
    """Beginning-of-sequence token."""
    eos_token: str = "<|eos|>"
    """End-of-sequence token; also separates documents in the packed training stream."""
    pad_token: str = "<|pad|>"
    """Padding token (never trained on)."""
    extra_special_tokens: tuple[str, ...] = ()
    """More special tokens, e.g. chat role markers; never split, never merged."""
    chat_template: str | None = None
    """Jinja chat template stored in tokenizer_config.json; null for none."""
    max_training_bytes: int = 1 << 30
    """Stop reading training text after this many UTF-8 bytes (1 MiB-64 GiB)."""
    heldout_fraction: float = 0.01
    """Share of documents kept out of training to report bytes/token on (0-0.5)."""

    def special_tokens(self) -> list[str]:
        return [self.bos_token, self.eos_token, self.pad_token, *self.extra_special_tokens]

    def __post_init__(self) -> None:
        specials = self.special_tokens()
        if any(not token for token in specials) or len(set(specials)) != len(specials):
            raise ConfigError("extra_special_tokens", "special tokens must be distinct, non-empty")
        if len(self.extra_special_tokens) > 1024 or any(len(t) > 64 for t in specials):
            raise ConfigError("extra_special_tokens", "at most 1024 tokens of ≤ 64 characters")
        if self.chat_template is not None and len(self.chat_template) > 65536:
            raise ConfigError("chat_template", "at most 65536 characters")
        # 256 byte symbols must fit next to the specials, or some bytes could not be encoded.
        check_range("vocab_size", self.vocab_size, 256 + len(specials), 262144)
        check_range("min_frequency", self.min_frequency, 1, 1_000_000)
        check_range("max_training_bytes", self.max_training_bytes, 1 << 20, 64 << 30)
        check_range("heldout_fraction", self.heldout_fraction, 0.0, 0.5)


@dataclass(frozen=True)
class ModelShape:
    """A fully resolved Llama shape (what a ModelConfig means once its preset is applied)."""

    layers: int
    heads: int
    kv_heads: int
    hidden_size: int
    intermediate_size: int
    context_length: int
    rope_theta: float
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads


PRESETS: dict[str, ModelShape] = {
    # name: layers, heads, kv_heads, hidden, intermediate, context, rope_theta, tied
    "tiny": ModelShape(2, 4, 4, 64, 192, 128, 10_000.0, True),  # tests: trains in seconds
    "small": ModelShape(4, 4, 4, 192, 512, 256, 10_000.0, True),  # quickstart on a laptop CPU
    "gpt2-small": ModelShape(12, 12, 12, 768, 2048, 1024, 10_000.0, True),  # ≈124M at 50k vocab
    "350m": ModelShape(24, 16, 16, 1024, 2816, 2048, 10_000.0, False),
    "1b": ModelShape(22, 32, 4, 2048, 5632, 2048, 10_000.0, False),  # TinyLlama's shape
}


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-architecture decoder: a named preset, optionally with fields overridden."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    preset: Literal["tiny", "small", "gpt2-small", "350m", "1b"] | None = "small"
    """Starting shape; null means every field below must be given."""
    layers: int | None = None
    """Transformer blocks (1-256)."""
    heads: int | None = None
    """Attention heads; must divide hidden_size."""
    kv_heads: int | None = None
    """Key/value heads (grouped-query attention); must divide heads."""
    hidden_size: int | None = None
    """Residual stream width (16-32768)."""
    intermediate_size: int | None = None
    """SwiGLU hidden width (16-131072)."""
    context_length: int | None = None
    """Tokens per training sequence (16-131072)."""
    rope_theta: float | None = None
    """RoPE base frequency."""
    tied_embeddings: bool | None = None
    """Share the input embedding and output projection weights."""

    def shape(self) -> ModelShape:
        """Apply the overrides to the preset; __post_init__ guarantees the result is complete."""
        base = asdict(PRESETS[self.preset]) if self.preset is not None else {}
        overrides = {k: v for k, v in asdict(self).items() if k != "preset" and v is not None}
        return ModelShape(**{**base, **overrides})

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError("preset", f"unknown preset; choose one of {sorted(PRESETS)}")
        if self.preset is None:
            for name, value in asdict(self).items():
                if value is None and name != "preset":
                    raise ConfigError(name, "required when preset is null")
        s = self.shape()
        check_range("layers", s.layers, 1, 256)
        check_range("hidden_size", s.hidden_size, 16, 32768)
        check_range("intermediate_size", s.intermediate_size, 16, 131072)
        check_range("context_length", s.context_length, 16, 131072)
        check_range("rope_theta", s.rope_theta, 1.0, 1e9)
        check_range("heads", s.heads, 1, s.hidden_size)
        if s.hidden_size % s.heads:
            raise ConfigError("heads", f"{s.heads} does not divide hidden_size {s.hidden_size}")
        if s.head_dim % 2:
            raise ConfigError("heads", f"head dim {s.head_dim} must be even for RoPE")
        check_range("kv_heads", s.kv_heads, 1, s.heads)
        if s.heads % s.kv_heads:
            raise ConfigError("kv_heads", f"{s.kv_heads} does not divide heads {s.heads}")


@dataclass(frozen=True)
class PretrainConfig:
    """Train a model from scratch on a token stream (nanoGPT's recipe: AdamW, warmup + cosine)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG
    COSMETIC: ClassVar[frozenset[str]] = frozenset(
        {"log_interval", "eval_interval", "eval_batches", "checkpoint_interval", "sample_prompts",
         "sample_tokens", "compile"}
    )  # fmt: skip
    """Fields that change what is reported, never the trajectory: a resume may differ in them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Model shape; vocabulary size comes from the tokenizer."""
    max_steps: int | None = 2000
    """Optimiser steps to run; null to derive them from max_tokens."""
    max_tokens: int | None = None
    """Token budget (rounded up to whole steps); used when max_steps is null."""
    global_batch_tokens: int = 16384
    """Tokens per optimiser step, across devices and accumulation."""
    micro_batch_size: int = 8
    """Sequences per forward pass per device; lower it if memory runs out."""
    lr: float = 1e-3
    """Peak learning rate, reached after warmup."""
    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = AUTO
    """Linear warmup from 0 to lr; -1 (auto): a tenth of the run, at most 100 steps."""
    weight_decay: float = 0.1
    """AdamW decay on matrices (never on norms, biases or embeddings)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    seed: int = 1337
    """Seeds initialisation, data order and sampling: same seed, same run."""
    precision: Precision = "auto"
    """auto = bf16 autocast on CUDA, fp32 on CPU."""
    compile: bool = False
    """torch.compile the model (CUDA; minutes of warm-up, then faster steps)."""
    log_interval: int = 10
    """Report train loss, lr, throughput every this many steps."""
    eval_interval: int = AUTO
    """Measure validation loss and write samples every this many steps (and at the end); -1
    (auto): an eighth of the run, at most 250."""
    eval_batches: int = 20
    """Micro-batches of validation data per evaluation."""
    checkpoint_interval: int = AUTO
    """Save a resumable checkpoint every this many steps (and on cancellation); -1 (auto): a
    quarter of the run, at most 500."""
    devices: int = 1
    """Data-parallel processes (GPUs) the run uses."""
    sample_prompts: tuple[str, ...] = ("Once upon a time",)
    """Prompts continued at each evaluation so users can watch the model learn."""
    sample_tokens: int = 40
    """Tokens generated per sample (0 disables sampling)."""
    validation_fraction: float = 0.01
    """Tail of the token stream held out when no validation dataset is given (0.001-0.5)."""

    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        assert self.max_tokens is not None  # __post_init__ guarantees one of the two
        return math.ceil(self.max_tokens / self.global_batch_tokens)

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig(
            lr=self.lr, weight_decay=self.weight_decay, betas=(self.beta1, self.beta2)
        )

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(
            lr=self.lr,
            total_steps=self.total_steps(),
            warmup_steps=self.warmup_steps,
            min_lr=self.min_lr,
            kind="cosine",
        )

    def grad_accum_steps(self) -> int:
        per_pass = self.micro_batch_size * self.model.shape().context_length * self.devices
        return self.global_batch_tokens // per_pass

    def __post_init__(self) -> None:
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ConfigError("max_steps", "give exactly one of max_steps and max_tokens")
        if self.max_steps is not None:
            check_range("max_steps", self.max_steps, 1, 10_000_000)
        check_range("global_batch_tokens", self.global_batch_tokens, 1, 1 << 26)
        if self.max_tokens is not None:
            check_range("max_tokens", self.max_tokens, 1, 10_000_000 * self.global_batch_tokens)
        self._resolve_auto()
        if self.precision not in get_args(Precision):
            raise ConfigError("precision", f"must be one of {get_args(Precision)}")
        check_range("micro_batch_size", self.micro_batch_size, 1, 4096)
        check_range("devices", self.devices, 1, 1024)
        per_pass = self.micro_batch_size * self.model.shape().context_length * self.devices
        if self.global_batch_tokens < per_pass or self.global_batch_tokens % per_pass:
            raise ConfigError(
                "global_batch_tokens",
                f"must be a multiple of micro_batch_size × context_length × devices = {per_pass}",
            )
        # Up to 1e6 so that divergence handling can be exercised deliberately.
        check_range("lr", self.lr, 1e-8, 1e6)
        check_range("min_lr", self.min_lr, 0.0, self.lr)
        check_range("warmup_steps", self.warmup_steps, 0, self.total_steps())
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("beta1", self.beta1, 0.0, 0.9999)
        check_range("beta2", self.beta2, 0.0, 0.99999)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        check_range("seed", self.seed, 0, 2**63 - 1)
        for name in ("log_interval", "eval_interval", "checkpoint_interval", "eval_batches"):
            check_range(name, getattr(self, name), 1, 10_000_000)
        check_range("sample_tokens", self.sample_tokens, 0, 4096)
        check_range("validation_fraction", self.validation_fraction, 0.001, 0.5)
        if len(self.sample_prompts) > 16 or any(len(p) > 1000 for p in self.sample_prompts):
            raise ConfigError("sample_prompts", "at most 16 prompts of at most 1000 characters")

    def _resolve_auto(self) -> None:
        """Defaults that follow the run's length; the chosen values are what the job records."""
        total = self.total_steps()
        chosen = {
            "warmup_steps": min(100, total // 10),
            "eval_interval": max(1, min(250, total // 8)),
            "checkpoint_interval": max(1, min(500, total // 4)),
        }
        for name, value in chosen.items():
            if getattr(self, name) == AUTO:
                object.__setattr__(self, name, value)  # frozen: resolved once, at construction


# Activation and logit bytes per token under each precision (estimate_memory_bytes says where
# they come from): (per layer per unit of hidden width, per vocabulary entry, fixed per process).
_BF16_BYTES = (34, 12, 0)
_FP32_BYTES = (80, 12, 1 << 20)


def estimate_memory_bytes(
    model_cfg: ModelConfig,
    train_cfg: PretrainConfig,
    *,
    vocab_size: int = 50304,
    accelerated: bool = True,
) -> int:
    """Peak memory of one training process, to reject shapes a device cannot hold.

    ``accelerated`` says where the run goes, since ``auto`` precision is bf16 autocast on a GPU
    and fp32 on a CPU. Both count fp32 weights + grads + two Adam moments (16 bytes/parameter),
    activations kept for backward per layer, token and unit of width, and the logits with their
    softmax and gradient (12 bytes per token and vocabulary entry):

    - 16-bit (bf16 autocast + compile, flash SDPA, which never stores attention scores): 34
      bytes per layer, token and unit of width (Korthikanti et al. 2022, no recomputation). On
      an H200 at vocabulary 32768 (``torch.cuda.max_memory_allocated``, ``bench_pretrain.py
      --cuda``): gpt2-small micro 32 × 1024 measured 24,382 MiB, estimate 23,760; 350m
      16 × 2048: 45,685 vs 44,128; 1b 16 × 2048: 78,824 vs 76,993 (all within 3.5%; the former
      heads·context score term made it 1.9-3.8× too high).
    - fp32 on a CPU: 80 bytes per layer, token and unit of width, plus 1 MiB, fitted to the
      peak resident memory a training step adds to a process (``bench_pretrain.py --memory``):
      within 10% (mostly 5%) for tiny and small at micro-batches 1-32 and vocabularies 2048
      and 8192. That is what the tensors need; glibc's default allocator may keep 10-45% more
      resident (freed memory it holds for reuse).
    """
    s = model_cfg.shape()
    attn = s.hidden_size * (s.hidden_size + 2 * s.kv_heads * s.head_dim) + s.hidden_size**2
    mlp = 3 * s.hidden_size * s.intermediate_size
    embed = vocab_size * s.hidden_size * (1 if s.tied_embeddings else 2)
    params = s.layers * (attn + mlp + 2 * s.hidden_size) + embed + s.hidden_size
    tokens = train_cfg.micro_batch_size * s.context_length
    fp32 = train_cfg.precision == "fp32" or (train_cfg.precision == "auto" and not accelerated)
    act, logit, fixed = _FP32_BYTES if fp32 else _BF16_BYTES
    activations = s.layers * tokens * act * s.hidden_size
    return 16 * params + activations + tokens * vocab_size * logit + fixed
