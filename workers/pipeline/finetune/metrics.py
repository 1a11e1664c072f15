"""What a fine-tune reports besides its training loss: validation metrics and sample answers.

Validation splits each batch over the ranks as training does and adds the sums up, so its
figures do not depend on the number of devices. Every rank runs the same forwards, because under
FSDP each forward is a collective; otherwise they run on the module below DDP, with no
collective at all.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from workers.pipeline.finetune.data import Example, Pair, collate
from workers.pipeline.finetune.distributed import shard, sum_across
from workers.pipeline.finetune.losses import dpo_stats, forward_logits, sequence_logps, token_stats
from workers.pipeline.finetune.model import unwrap
from workers.pipeline.finetune.run import Run
from workers.pipeline.finetune.steps import dpo_metrics, dpo_sums, pair_batch, reference_logps
from workers.pipeline.training import autocast
from workers.pipeline.types import Progress


@torch.no_grad()
def evaluate(run: Run, *, batches: int | None, prefix: str = "valid") -> dict[str, float]:
    """Loss and token accuracy (or DPO's rewards) on the first ``batches`` validation batches."""
    model, size = unwrap(run.model), run.hp.batch_size
    was_training = model.training
    model.eval()
    chunks = [run.valid[i : i + size] for i in range(0, len(run.valid), size)]
    chunks = chunks[:batches] if batches is not None else chunks
    dpo = run.config.method == "dpo"
    sums = [0.0] * (5 if dpo else 3)
    for chunk in chunks:
        mine, weight = shard(chunk, run.dist), 1.0
        if not mine:  # a short batch: forward a stand-in that does not count
            mine, weight = chunk[:1], 0.0
        part = _pair_sums(run, model, mine) if dpo else _token_sums(run, model, mine)
        sums = [total + weight * value for total, value in zip(sums, part, strict=True)]
    model.train(was_training)
    sums = sum_across(sums, run.dist, run.device)
    if dpo:
        return dpo_metrics(sums, prefix)
    loss, correct, count = sums
    return {f"{prefix}_loss": loss / count, f"{prefix}_mean_token_accuracy": correct / count}


def _token_sums(run: Run, model: nn.Module, examples: list[Example]) -> list[float]:
    cfg = run.config
    batch = collate(examples, packing=cfg.packing, capacity=cfg.max_seq_len, pad_id=run.pad_id)
    with autocast(run.device, run.dtype):
        logits = forward_logits(model, batch, run.device)
    stats = token_stats(logits, batch.labels)
    return [float(stats.loss_sum), float(stats.correct), float(stats.count)]


def _pair_sums(run: Run, model: nn.Module, pairs: list[Pair]) -> list[float]:
    batch = pair_batch(run, pairs)
    reference = reference_logps(run, batch)
    with autocast(run.device, run.dtype):
        policy = sequence_logps(forward_logits(model, batch, run.device), batch.labels)
    return dpo_sums(dpo_stats(policy, reference, run.config.dpo.beta))


def final_metrics(run: Run) -> dict[str, float]:
    final = {k: v for k, v in run.metrics.items() if k.startswith("train_")}
    if run.valid:
        final.update(evaluate(run, batches=None, prefix="full_valid"))
        run.hooks.on_progress(Progress(run.hp.total_steps, run.hp.total_steps, final))
        post_samples(run, run.hp.total_steps)
    return final


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    device: torch.device,
) -> str:
    """Greedy answer to ``prompt`` (already templated), up to an end-of-turn token."""
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    if bos is not None and probe and probe[0] == bos and (ids.numel() == 0 or ids[0, 0] != bos):
        ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
    was_training = model.training
    model.eval()
    out = cast(Any, model).generate(
        input_ids=ids.to(device),
        attention_mask=torch.ones_like(ids).to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    model.train(was_training)
    text = tokenizer.decode(out[0, ids.size(1) :], skip_special_tokens=True)
    return str(text)


def post_samples(run: Run, step: int) -> None:
    """Greedy answers to the first validation prompts, as an event. Under FSDP every rank
    generates (greedy, from the same weights: the same forwards); otherwise rank 0 alone."""
    if not (run.dist.is_main or run.sharded):
        return
    cfg = run.config
    items = [x.chosen if isinstance(x, Pair) else x for x in run.valid]
    prompts = [e for e in items if e.prompt][: cfg.sample_count]
    if not prompts:
        return
    samples = [
        {
            "prompt": e.prompt,
            "expected": e.target,
            "output": generate(
                unwrap(run.model),
                run.tokenizer,
                e.prompt,
                max_new_tokens=cfg.sample_tokens,
                eos_ids=run.eos_ids,
                device=run.device,
            ),
        }
        for e in prompts
    ]
    run.hooks.on_event("samples", {"step": step, "samples": samples})
