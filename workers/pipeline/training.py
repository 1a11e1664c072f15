"""Training parts shared by the training stages: schedule, optimiser, one optimiser step, eval.

Each part takes a small config (:mod:`workers.pipeline.configs.optim`) or plain arguments, never a
stage's config, so pretraining and fine-tuning use the same code: a fine-tune passes its own loss
function (masked, DPO) to :func:`optimizer_step`. ``pretrain._fit`` reads top to bottom like
nanoGPT's loop because the step itself lives here.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedModel

from workers.pipeline.configs.optim import OptimizerConfig, ScheduleConfig
from workers.pipeline.modeling import model_flops_utilisation

Batch = TypeVar("Batch")


def lr_at(step: int, schedule: ScheduleConfig) -> float:
    """Linear warmup to ``lr``, then cosine or linear decay to ``min_lr`` at the last step.

    A pure function of the step, so resuming needs no scheduler object: the step is the state.
    """
    total, warmup, lr = schedule.total_steps, schedule.warmup_steps, schedule.lr
    if step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup or schedule.kind == "constant":
        return lr
    progress = min((step - warmup) / (total - warmup), 1.0)
    if schedule.kind == "linear":
        coeff = 1.0 - progress
    else:
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 → 0
    return schedule.min_lr + coeff * (lr - schedule.min_lr)


def build_optimizer(
    model: PreTrainedModel, config: OptimizerConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW with decay on matmul weights only: norms, biases and embeddings are not decayed.

    Decaying a gain (RMSNorm weight) or a lookup table pulls them towards zero for no benefit.
    Tied embeddings are one parameter and are therefore not decayed either. Frozen parameters
    (a LoRA base) are left out.
    """
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, nn.Embedding)
    no_decay_ids = {id(embeddings.weight)}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():  # parameters() already yields tied weights once
        if not param.requires_grad:
            continue
        if param.dim() < 2 or id(param) in no_decay_ids:
            no_decay.append(param)
        else:
            decay.append(param)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel is one launch for all parameters instead of several per tensor.
    fused = config.fused if config.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def keep_freed_memory(limit: int = 256 << 20) -> None:
    """Have glibc keep freed blocks up to ``limit`` bytes for reuse; a no-op without glibc.

    By default a freed tensor above malloc's mmap threshold goes back to the kernel, and the
    next step's allocation of the same size faults it back in, zeroed. The threshold also
    grows with what the process freed earlier (tokenising, loading), so two processes running
    the same loop differ: on a CPU at the tiny preset that was 3-5 ms of system time in a
    ~30 ms step, and up to ±10% of throughput between processes. Fixed thresholds (which also
    end glibc's dynamic adjustment) keep the step's memory in the heap from one step to the
    next. Process-wide, which suits a worker that runs one job per process.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, limit)
    libc.mallopt(_M_TRIM_THRESHOLD, limit)


@dataclass(frozen=True)
class StepParts:
    """What one optimiser step touches."""

    model: nn.Module
    """What forward is called on: maybe compiled, maybe DDP-wrapped."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    """Loss scaling for fp16; disabled (a pass-through) otherwise."""
    device: torch.device
    dtype: torch.dtype
    """Autocast dtype; fp32 means no autocast."""
    grad_clip: float
    """Clip the global gradient norm to this; 0 disables clipping."""


@dataclass(frozen=True)
class StepOutput:
    """A finished step's figures, still on the device: reading them would wait for it."""

    loss: torch.Tensor
    """Mean loss over the step's micro-batches (this rank's)."""
    grad_norm: torch.Tensor
    """Global gradient norm before clipping."""


def optimizer_step(
    parts: StepParts,
    batch: Callable[[int], Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    accum: int,
    lr: float,
) -> StepOutput:
    """One optimiser step over ``accum`` micro-batches: ``batch(micro)`` → ``loss_fn(model, b)``.

    Under DDP only the last micro-batch all-reduces gradients (nanoGPT's
    ``require_backward_grad_sync`` trick). Nothing here reads a value back to the host, so the
    GPU queue never drains inside a step.
    """
    model, optimizer, scaler = parts.model, parts.optimizer, parts.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros((), device=parts.device)
    for micro in range(accum):
        b = batch(micro)
        if isinstance(model, DistributedDataParallel):
            model.require_backward_grad_sync = micro == accum - 1
        with autocast(parts.device, parts.dtype):
            loss = loss_fn(model, b) / accum  # scaled: the grads sum over micro-batches
        loss_sum += loss.detach()
        torch.autograd.backward(scaler.scale(loss))  # Tensor.backward is untyped
    scaler.unscale_(optimizer)  # clip the true gradients, not the fp16-scaled ones
    max_norm = parts.grad_clip if parts.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepOutput(loss_sum, grad_norm)


@dataclass
class Throughput:
    """Time spent since the last progress report, turned into tokens/s, data share and MFU."""

    flops_per_token: float
    peak_flops: float | None
    """The device's peak FLOP/s; None leaves MFU out (CPU, unknown GPUs)."""
    step_s: float = 0.0
    data_s: float = 0.0
    steps: int = 0

    def report(self, tokens_per_step: int, devices: int) -> dict[str, float]:
        """Figures over the steps since the last report; starts a new interval."""
        tokens_per_s = tokens_per_step * self.steps / max(self.step_s, 1e-9)
        metrics = {"tokens_per_s": tokens_per_s, "data_share": self.data_s / max(self.step_s, 1e-9)}
        mfu = model_flops_utilisation(tokens_per_s, self.flops_per_token, self.peak_flops, devices)
        if mfu is not None:
            metrics["mfu"] = mfu
        self.step_s = self.data_s = 0.0
        self.steps = 0
        return metrics


def wrap_model(
    model: nn.Module, *, compile: bool, world_size: int, device: torch.device
) -> nn.Module:
    """What forward is called on: ``model`` compiled and/or DDP-wrapped (it keeps the weights)."""
    if compile:
        model = cast(nn.Module, torch.compile(model))
    if world_size > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def lm_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x and y are (B, T), y being x shifted by one."""
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    # Upcast: cross-entropy over a large vocabulary in bf16 loses the small probabilities.
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def lm_batch_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`lm_loss` in the ``loss_fn(model, batch)`` form :func:`optimizer_step` takes."""
    return lm_loss(model, *batch)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """(sum of batch losses, number of batches) as a tensor on ``device``.

    Sums, not a mean, so ranks holding different numbers of batches can all-reduce them.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=device)
    for x, y in batches:
        with autocast(device, dtype):
            total[0] += lm_loss(model, x.to(device), y.to(device)).float()
        total[1] += 1
    model.train(was_training)
    return total


@torch.no_grad()
def sample_continuations(
    model: Any,  # a PreTrainedModel (unwrapped from DDP/compile): it has .generate
    prompts: Iterable[list[int]],
    *,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
    eos_id: int,
) -> list[dict[str, list[int]]]:
    """A greedy and a top-k (k=40, T=0.8) continuation per prompt, as token ids.

    Runs inside ``fork_rng`` with its own seed, so sampling never shifts the training RNG and a
    resumed run stays bit-identical to an uninterrupted one.
    """
    was_training = model.training
    model.eval()
    out = []
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for ids in prompts:
            # A leading EOS marks a document start, which is what the model saw in training.
            prompt = torch.tensor([[eos_id, *ids]], device=device)
            common = {"max_new_tokens": max_new_tokens, "pad_token_id": eos_id}
            greedy = model.generate(prompt, do_sample=False, **common)
            sampled = model.generate(prompt, do_sample=True, top_k=40, temperature=0.8, **common)
            out.append(
                {
                    "greedy": greedy[0, prompt.size(1) :].tolist(),
                    "top_k": sampled[0, prompt.size(1) :].tolist(),
                }
            )
    model.train(was_training)
    return out


def sample_texts(
    model: Any,
    tokenizer: Tokenizer,
    prompts: Iterable[str],
    *,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
    eos_id: int,
) -> list[dict[str, str]]:
    """:func:`sample_continuations` of text prompts, decoded: what a "samples" event shows."""
    prompts = list(prompts)
    ids = [tokenizer.encode(p, add_special_tokens=False).ids for p in prompts]
    outs = sample_continuations(
        model, ids, max_new_tokens=max_new_tokens, seed=seed, device=device, eos_id=eos_id
    )
    return [
        {"prompt": prompt, **{k: tokenizer.decode(v) for k, v in out.items()}}
        for prompt, out in zip(prompts, outs, strict=True)
    ]
