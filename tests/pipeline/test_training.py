"""The shared training parts: schedules, the optimiser's groups, one step with any loss, the
one-step-late reader."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from pipeline.configs.base import ConfigError
from pipeline.configs.finetune import FinetuneConfig, Hyperparameters
from pipeline.configs.optim import OptimizerConfig, ScheduleConfig, ScheduleKind
from pipeline.configs.training import ModelConfig
from pipeline.parts.llama import build_model
from pipeline.parts.optimizer import build_optimizer
from pipeline.parts.readback import LateReads
from pipeline.parts.schedule import lr_at
from pipeline.parts.step import StepParts, optimizer_step

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("kind", "middle", "last"),
    [("cosine", 0.55, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10))), ("linear", 0.55, 0.19),
     ("constant", 1.0, 1.0)],
)  # fmt: skip
def test_schedules_warm_up_then_decay_to_min_lr(
    kind: ScheduleKind, middle: float, last: float
) -> None:
    s = ScheduleConfig(lr=1.0, total_steps=20, warmup_steps=10, min_lr=0.1, kind=kind)
    assert [lr_at(i, s) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(10, s) == 1.0
    assert lr_at(15, s) == pytest.approx(middle)
    assert lr_at(19, s) == pytest.approx(last)


@pytest.mark.parametrize("scheduler", ["linear", "cosine", "constant"])
def test_fine_tuning_warms_up_over_its_ratio_then_decays_to_zero(scheduler: str) -> None:
    """Fine-tuning's schedule is the same part: warmup over ``warmup_ratio`` of the resolved
    steps, then down to 0 (OpenAI's and Hugging Face's convention) or flat."""
    config = FinetuneConfig(warmup_ratio=0.1, scheduler=scheduler)  # type: ignore[arg-type]
    hp = Hyperparameters(n_epochs=2, batch_size=4, learning_rate=1e-3, steps_per_epoch=20)
    schedule = config.schedule(hp)
    assert (schedule.warmup_steps, schedule.total_steps, schedule.min_lr) == (4, 40, 0.0)
    assert [lr_at(i, schedule) for i in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    progress = (30 - 4) / (40 - 4)
    expected = {
        "linear": 1e-3 * (1 - progress),
        "cosine": 1e-3 * 0.5 * (1 + math.cos(math.pi * progress)),
        "constant": 1e-3,
    }[scheduler]
    assert lr_at(30, schedule) == pytest.approx(expected, rel=1e-12)


def test_fine_tuning_decays_the_embeddings_with_the_other_matrices() -> None:
    model = _tiny()
    config = FinetuneConfig(weight_decay=0.1)
    hp = Hyperparameters(n_epochs=1, batch_size=1, learning_rate=1e-4, steps_per_epoch=1)
    decay, no_decay = build_optimizer(model, config.optimizer(hp), CPU).param_groups
    embed = model.get_input_embeddings().weight
    assert any(p is embed for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert (decay["lr"], decay["betas"]) == (1e-4, (0.9, 0.999))


def test_late_reads_give_back_the_previous_step_and_the_held_one_on_demand() -> None:
    late: LateReads[int] = LateReads()
    assert late.launched(1) is None  # nothing launched before the first step
    assert late.launched(2) == 1  # step 1 is read once step 2 is on its way
    assert late.now() == 2 and late.now() is None  # read at once: nothing is held after
    assert late.launched(3) is None


def test_schedule_and_optimizer_configs_are_checked() -> None:
    with pytest.raises(ConfigError, match="min_lr"):
        ScheduleConfig(lr=1e-3, total_steps=10, min_lr=1e-2)
    with pytest.raises(ConfigError, match="warmup_steps"):
        ScheduleConfig(lr=1e-3, total_steps=10, warmup_steps=11)
    with pytest.raises(ConfigError, match="beta2"):
        OptimizerConfig(lr=1e-3, betas=(0.9, 1.5))


def _tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="tiny").shape(), 64, bos_id=0, eos_id=1, pad_id=2)


def test_optimizer_decays_matrices_only_and_skips_frozen_parameters() -> None:
    model = _tiny()
    next(p for n, p in model.named_parameters() if "q_proj" in n).requires_grad_(False)
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3, weight_decay=0.5), CPU)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.5 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    embed = model.get_input_embeddings().weight
    assert any(p is embed for p in no_decay["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainable)


def test_optimizer_step_accumulates_a_custom_loss_like_one_big_batch() -> None:
    """Two micro-batches of 2 give the gradients of one batch of 4 (the loss is a mean)."""
    x = torch.randint(3, 64, (4, 16))

    def masked_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=batch).logits[:, :-1]
        target = batch[:, 1:].masked_fill(torch.arange(15) < 5, -100)  # a fine-tune's prompt mask
        return nn.functional.cross_entropy(logits.reshape(-1, 64), target.reshape(-1))

    grads = []
    for accum in (1, 2):
        model = _tiny()
        opt = build_optimizer(model, OptimizerConfig(lr=0.0), CPU)
        parts = StepParts(model, opt, torch.amp.GradScaler("cpu", enabled=False), CPU,
                          torch.float32, grad_clip=0.0)  # fmt: skip
        chunks = x.chunk(accum)
        out = optimizer_step(parts, chunks.__getitem__, masked_loss, accum=accum, lr=0.0)
        grads.append(float(out.grad_norm))
        assert out.loss.shape == () and math.isfinite(float(out.loss))
    assert grads[0] == pytest.approx(grads[1], rel=1e-5)
