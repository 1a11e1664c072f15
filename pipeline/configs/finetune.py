"""Parameters of fine-tuning: method (full, LoRA, QLoRA, DPO), data handling and the schedule.

Stdlib only (the API imports this module). Names follow OpenAI's fine-tuning API where one exists
(``n_epochs``, ``batch_size``, ``learning_rate_multiplier``), so clients written against it map
one to one; ``"auto"`` values are resolved against the dataset size by :meth:`FinetuneConfig.
resolve` once the stage has counted the examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from pipeline.configs.base import PYDANTIC_CONFIG, ConfigError, check_range
from pipeline.configs.optim import OptimizerConfig, ScheduleConfig

Method = Literal["full", "lora", "qlora", "dpo"]
Scheduler = Literal["linear", "cosine", "constant"]
Strategy = Literal["ddp", "fsdp"]
TrainOnInputs = Literal["auto", "true", "false"]
FinetunePrecision = Literal["auto", "fp32", "bf16", "fp16"]
Auto = Literal["auto"]

# Peak learning rates that work for each method at batch sizes of 8-32 (LoRA's adapters start at
# zero and tolerate ~10x the rate of full fine-tuning; DPO moves a model that is already good).
BASE_LEARNING_RATES: dict[str, float] = {
    "full": 2e-5,
    "lora": 2e-4,
    "qlora": 2e-4,
    "dpo": 5e-7,
    "dpo+lora": 5e-6,
}
# OpenAI's auto epochs aim for this many example passes in total, within 1-25 epochs.
_MIN_TARGET_EXAMPLES = 100
_MAX_TARGET_EXAMPLES = 25_000
_DEFAULT_EPOCHS = 3


@dataclass(frozen=True)
class LoraSettings:
    """Low-rank adapters (peft): which layers get them and how large they are."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    rank: int = 16
    """Adapter rank r (1-1024)."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / rank) · B A."""
    dropout: float = 0.0
    """Dropout on the adapter input (0-0.9)."""
    target_modules: tuple[str, ...] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. ["q_proj", "v_proj"]), or every linear layer but the head."""
    modules_to_save: tuple[str, ...] = ()
    """Modules trained in full and saved with the adapter (e.g. ["lm_head"])."""

    def __post_init__(self) -> None:
        check_range("lora.rank", self.rank, 1, 1024)
        check_range("lora.alpha", self.alpha, 1, 16384)
        check_range("lora.dropout", self.dropout, 0.0, 0.9)
        if self.target_modules != "all-linear" and (
            not self.target_modules or any(not m for m in self.target_modules)
        ):
            raise ConfigError("lora.target_modules", "give module names or 'all-linear'")


@dataclass(frozen=True)
class DpoSettings:
    """Direct Preference Optimisation (Rafailov et al. 2023) against the frozen base."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    beta: float = 0.1
    """Strength of the pull towards the reference (base) model (0.001-10)."""
    use_lora: bool = True
    """Train LoRA adapters (the reference is the base with adapters off) or all weights."""

    def __post_init__(self) -> None:
        check_range("dpo.beta", self.beta, 1e-3, 10.0)


@dataclass(frozen=True)
class Hyperparameters:
    """``auto`` values resolved for a dataset of a given size: what the loop actually uses."""

    n_epochs: int
    batch_size: int
    learning_rate: float
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.n_epochs * self.steps_per_epoch


@dataclass(frozen=True)
class FinetuneConfig:
    """Adapt a pre-trained causal LM to labelled data: in full, with adapters, or by preference."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG
    COSMETIC: ClassVar[frozenset[str]] = frozenset(
        {"checkpoint_interval", "eval_interval", "log_interval", "eval_batches", "sample_count",
         "sample_tokens"}
    )  # fmt: skip
    """Fields that change what is reported, never the trajectory: a resume may differ in them."""

    method: Method = "lora"
    """full | lora | qlora (4-bit NF4 base, CUDA only) | dpo (preference pairs)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """Adapter settings for lora, qlora and dpo with use_lora."""
    dpo: DpoSettings = field(default_factory=DpoSettings)
    """Settings for method dpo."""
    n_epochs: int | Auto = "auto"
    """Passes over the training data (1-100); auto: 3, more for small sets, fewer for large."""
    batch_size: int | Auto = "auto"
    """Examples per optimiser step (1-4096); auto: about 0.2% of the examples, 1-64."""
    learning_rate: float | Auto = "auto"
    """Peak learning rate; auto: the method's base rate × learning_rate_multiplier."""
    learning_rate_multiplier: float = 1.0
    """Scales the method's base learning rate when learning_rate is auto (0.01-1000)."""
    warmup_ratio: float = 0.03
    """Share of the steps spent warming the learning rate up from 0 (0-0.5)."""
    scheduler: Scheduler = "linear"
    """Decay after warmup: linear to 0, cosine to 0, or constant."""
    weight_decay: float = 0.0
    """AdamW decay on matrices (never on norms, biases or embeddings)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    seed: int = 42
    """Seeds adapter initialisation, data order and sampling."""
    precision: FinetunePrecision = "auto"
    """auto = bf16 on CUDA where supported, fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, ~30% more compute."""
    max_seq_len: int = 2048
    """Longest training sequence in tokens; longer examples are truncated (16-131072)."""
    packing: bool = True
    """Pack several examples per row; attention never crosses example boundaries."""
    micro_batch_rows: int | Auto = "auto"
    """Rows per forward pass (gradients accumulate to batch_size examples); auto = all at once."""
    train_on_inputs: TrainOnInputs = "auto"
    """Loss on prompt/user tokens too; auto: only for plain text."""
    validation_fraction: float = 0.0
    """Share of the training examples held out when no validation file is given (0-0.5)."""
    checkpoint_interval: int | Literal["epoch"] = "epoch"
    """Save a resumable checkpoint every this many steps, or at each epoch's end."""
    eval_interval: int = 50
    """Measure valid_loss every this many steps (and at the end)."""
    log_interval: int = 1
    """Report train metrics every this many steps."""
    eval_batches: int = 8
    """Batches of validation examples per periodic evaluation (the final one uses all)."""
    sample_count: int = 3
    """Validation prompts answered at each evaluation, as events (0 disables)."""
    sample_tokens: int = 64
    """Tokens generated per sample."""
    devices: int = 1
    """Processes (GPUs) the run uses; each trains on its share of every batch (batch_size is
    the global batch, at least one example per device)."""
    strategy: Strategy = "ddp"
    """With devices > 1: ddp (a full replica per device) or fsdp (weights, gradients and
    optimiser state sharded across the devices, for models whose fine-tune does not fit one
    device; any method but qlora)."""

    def __post_init__(self) -> None:
        for name, allowed in (
            ("method", Method),
            ("scheduler", Scheduler),
            ("strategy", Strategy),
            ("train_on_inputs", TrainOnInputs),
            ("precision", FinetunePrecision),
        ):
            if getattr(self, name) not in get_args(allowed):
                raise ConfigError(name, f"must be one of {get_args(allowed)}")
        _check_auto("n_epochs", self.n_epochs, 1, 100)
        _check_auto("batch_size", self.batch_size, 1, 4096)
        _check_auto("micro_batch_rows", self.micro_batch_rows, 1, 4096)
        if self.learning_rate != "auto":
            check_range("learning_rate", self.learning_rate, 1e-9, 10.0)
        check_range("learning_rate_multiplier", self.learning_rate_multiplier, 0.01, 1000.0)
        check_range("warmup_ratio", self.warmup_ratio, 0.0, 0.5)
        check_range("weight_decay", self.weight_decay, 0.0, 10.0)
        check_range("grad_clip", self.grad_clip, 0.0, 1e6)
        check_range("seed", self.seed, 0, 2**63 - 1)
        check_range("max_seq_len", self.max_seq_len, 16, 131072)
        check_range("validation_fraction", self.validation_fraction, 0.0, 0.5)
        if self.checkpoint_interval != "epoch":
            check_range("checkpoint_interval", self.checkpoint_interval, 1, 10_000_000)
        for name in ("eval_interval", "log_interval", "eval_batches"):
            check_range(name, getattr(self, name), 1, 10_000_000)
        check_range("sample_count", self.sample_count, 0, 16)
        check_range("sample_tokens", self.sample_tokens, 1, 4096)
        check_range("devices", self.devices, 1, 1024)
        if self.method == "qlora" and self.strategy == "fsdp":
            raise ConfigError("strategy", "qlora runs with ddp only (4-bit weights do not shard)")
        if self.batch_size != "auto" and self.batch_size < self.devices:
            raise ConfigError(
                "batch_size", f"at least one example per device: {self.devices} or more"
            )
        if self.method == "qlora" and self.precision == "fp32":
            raise ConfigError("precision", "qlora computes in 16-bit; use auto, bf16 or fp16")

    @property
    def uses_lora(self) -> bool:
        return self.method in ("lora", "qlora") or (self.method == "dpo" and self.dpo.use_lora)

    def base_learning_rate(self) -> float:
        key = "dpo+lora" if self.method == "dpo" and self.dpo.use_lora else self.method
        return BASE_LEARNING_RATES[key]

    def optimizer(self, hp: Hyperparameters) -> OptimizerConfig:
        """AdamW at the resolved peak rate, decaying every trained matrix (embeddings too)."""
        return OptimizerConfig(
            lr=hp.learning_rate,
            weight_decay=self.weight_decay,
            betas=(0.9, 0.999),
            decay_embeddings=True,
        )

    def schedule(self, hp: Hyperparameters) -> ScheduleConfig:
        """Warmup over ``warmup_ratio`` of the resolved steps, then ``scheduler`` down to 0."""
        total = hp.total_steps
        return ScheduleConfig(
            lr=hp.learning_rate,
            total_steps=total,
            warmup_steps=round(self.warmup_ratio * total),
            kind=self.scheduler,
        )

    def resolve(self, n_examples: int) -> Hyperparameters:
        """Fill in the ``auto`` values for ``n_examples`` training examples (after the split).

        Epochs: 3, raised so tiny sets are seen at least ~100 times in total and lowered so huge
        ones are not seen more than ~25k times (OpenAI's documented behaviour). Batch size: about
        0.2% of the examples, 1-64, and at least one per device. Learning rate: the method's
        base × the multiplier.
        """
        if n_examples < 1:
            raise ConfigError("training_file", "no training examples")
        if self.n_epochs == "auto":
            epochs = _DEFAULT_EPOCHS
            if n_examples * epochs < _MIN_TARGET_EXAMPLES:
                epochs = min(25, math.ceil(_MIN_TARGET_EXAMPLES / n_examples))
            elif n_examples * epochs > _MAX_TARGET_EXAMPLES:
                epochs = max(1, _MAX_TARGET_EXAMPLES // n_examples)
        else:
            epochs = self.n_epochs
        if self.batch_size == "auto":
            batch = max(self.devices, min(64, round(n_examples * 0.002)))
        else:
            batch = min(self.batch_size, n_examples)
        if self.learning_rate == "auto":
            lr = self.base_learning_rate() * self.learning_rate_multiplier
        else:
            lr = self.learning_rate
        return Hyperparameters(epochs, batch, lr, math.ceil(n_examples / batch))


def check_runnable(config: FinetuneConfig, *, cuda_available: bool) -> None:
    """Refuse a job this deployment cannot run as asked, before it is queued.

    QLoRA needs bitsandbytes' 4-bit kernels, which need CUDA; running it in full precision
    instead would silently change the method and its memory, so it is refused.

    Raises:
        ConfigError: ``method`` is qlora and no CUDA device (or GPU queue) is available.
    """
    if config.method == "qlora" and not cuda_available:
        raise ConfigError(
            "method",
            "qlora needs a CUDA GPU (4-bit NF4 weights through bitsandbytes) and none is "
            "available here; use method 'lora' instead",
        )


def _check_auto(name: str, value: int | str, low: int, high: int) -> None:
    if value == "auto":
        return
    if isinstance(value, (str, bool)):
        raise ConfigError(name, "must be an integer or 'auto'")
    check_range(name, value, low, high)


@dataclass(frozen=True)
class ModelImportConfig:
    """Limits for validating an uploaded model archive."""

    __pydantic_config__: ClassVar[dict[str, Any]] = PYDANTIC_CONFIG

    max_extracted_bytes: int = 256 << 30
    """Refuse archives that unpack beyond this many bytes."""
    max_ratio: float = 100.0
    """Refuse archives that inflate more than this (weights barely compress)."""
    max_files: int = 10_000
    """Refuse archives with more files."""
    max_entries: int = 20_000
    """Refuse archives with more entries of any kind (directories and links count too): a
    reader keeps every entry it has seen, so an archive of empty folders is bounded here."""
    quota_bytes: int | None = None
    """The tenant's storage left for the unpacked model: unpacking beyond it is refused as
    ``model.storage_quota_exceeded`` while the files are written (None: no quota)."""
    max_header_bytes: int = 1 << 20
    """Refuse a tar member whose extended (pax or GNU long-name) header declares more: tarfile
    reads such a header into memory whole, before any member it describes."""
    forward_max_parameters: int = 2_000_000_000
    """Run one forward pass on CPU when the model has at most this many parameters."""

    def __post_init__(self) -> None:
        check_range("max_extracted_bytes", self.max_extracted_bytes, 1, 1 << 50)
        check_range("max_ratio", self.max_ratio, 1.0, 1e6)
        check_range("max_files", self.max_files, 1, 1_000_000)
        check_range("max_entries", self.max_entries, 1, 1_000_000)
        check_range("max_header_bytes", self.max_header_bytes, 512, 1 << 30)
        if self.quota_bytes is not None:
            check_range("quota_bytes", self.quota_bytes, 0, 1 << 60)
        check_range("forward_max_parameters", self.forward_max_parameters, 0, 1 << 50)
