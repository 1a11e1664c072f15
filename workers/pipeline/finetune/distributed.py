"""Fine-tuning on several devices: how the model is spread, which examples each rank trains on,
and the collectives that keep the ranks in step.

``ddp`` keeps a full replica per rank (torch DDP) and all-reduces the gradients. ``fsdp`` shards
weights, gradients and optimiser state across the ranks with FSDP2 (``fully_shard``): each
decoder layer is a unit of its own and the causal LM the root, so a layer's full weights exist
only while it runs. Under FSDP every forward is a collective, so all ranks run the same number of
forwards: a rank with nothing left to do forwards a stand-in that counts with weight 0.
Checkpoints and the exported model come from the full state dicts gathered to rank 0
(``torch.distributed.checkpoint.state_dict``), in the files a one-device run writes. In a world of
one, every function here is the identity or does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from workers.pipeline import checkpoint as ckpt
from workers.pipeline.configs.finetune import FinetuneConfig
from workers.pipeline.device import DistInfo, barrier
from workers.pipeline.finetune.model import Models, unwrap
from workers.pipeline.finetune.run import Run

T = TypeVar("T")

# Gathered to rank 0's CPU memory: no device ever holds the whole model at once.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Rank 0 reads the files and sends each tensor to the others, which keep their shard of it.
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def wrap(
    models: Models,
    config: FinetuneConfig,
    info: DistInfo,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> Models:
    """The models as the strategy spreads them over ``info.world_size`` ranks.

    Under FSDP, build ``models`` on the CPU: ``fully_shard`` moves only each rank's shard to
    ``device``, so a model too large for one device never has to fit on one. 16-bit precision
    all-gathers weights in ``dtype`` and reduces gradients in fp32 (the master weights stay
    fp32 where they were). DPO's frozen reference is sharded the same way; under DDP it is a
    plain replica (it has no gradients to reduce).
    """
    if info.world_size == 1:
        return models
    if config.strategy == "ddp":
        model = DistributedDataParallel(
            models.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The only buffers (rotary frequencies) are equal on every rank; broadcasting them
            # would make every forward a collective, evaluation and sampling included.
            broadcast_buffers=False,
        )
        return Models(model, models.reference)
    mesh = init_device_mesh(device.type, (info.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32
    )
    for module in (models.model, models.reference):
        if module is not None:
            _fully_shard(module, mesh, policy)
    return models


def _fully_shard(model: nn.Module, mesh: DeviceMesh, policy: MixedPrecisionPolicy) -> None:
    """Each decoder layer (the model's ``_no_split_modules``) a unit, then the causal LM: below
    peft's wrappers, because ``generate`` calls the causal LM directly."""
    get_base = getattr(model, "get_base_model", None)
    lm = cast(nn.Module, get_base()) if callable(get_base) else model
    units = set(getattr(lm, "_no_split_modules", None) or ())
    for module in lm.modules():
        if type(module).__name__ in units:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(lm, mesh=mesh, mp_policy=policy)


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of a batch: every ``world_size``-th item from position ``rank`` on.
    A pure function of the batch, so the shares are disjoint, cover it, and resume exactly."""
    return list(items[info.rank :: info.world_size])


def sum_across(values: Sequence[float], info: DistInfo, device: torch.device) -> list[float]:
    """Element-wise sums over the ranks (float64: token counts stay exact)."""
    if info.world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return [float(v) for v in tensor.tolist()]


def max_across(value: int, info: DistInfo, device: torch.device) -> int:
    if info.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def stop_requested(wants: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's answer on every rank (the others' hooks never ask), so all stop on one step."""
    return sum_across([float(wants and info.is_main)], info, device)[0] > 0


def sync_gradients(model: nn.Module, enabled: bool) -> None:
    """Whether the next backward reduces gradients across the ranks: with accumulation over
    micro-batches only the last one does, and the others add to the local gradients."""
    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = enabled
        return
    root = next((m for m in model.modules() if isinstance(m, FSDPModule)), None)
    if root is not None:
        root.set_requires_gradient_sync(enabled)


def reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sums over the ranks in place, with no host read (NCCL queues the reduction on the GPU)."""
    if info.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """``clip_grad_norm_``'s result; under FSDP it is a DTensor to be assembled."""
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def save_checkpoint(run: Run, step: int, state: dict[str, Any]) -> Path | None:
    """Rank 0 writes the checkpoint (the path; None on the others). Called on every rank: under
    FSDP the full state is gathered first; under DDP rank 0's replica is the whole state."""
    main = run.dist.is_main
    path = None
    if run.sharded:
        weights = cast(dict[str, torch.Tensor], get_model_state_dict(run.model, options=_GATHER))
        optimizer = get_optimizer_state_dict(run.model, run.optimizer, options=_GATHER)
        if main:
            path = ckpt.save_checkpoint_state(
                run.checkpoint_dir,
                step=step,
                model_state=weights,
                optimizer_state=optimizer,
                state=state,
            )
    elif main:
        path = ckpt.save_checkpoint(
            run.checkpoint_dir,
            step=step,
            model=unwrap(run.model),
            optimizer=run.optimizer,
            state=state,
        )
    barrier(run.dist)  # on disk before any rank moves on (or leaves, after a stop)
    return path


def restore_checkpoint(run: Run, checkpoint: ckpt.Checkpoint) -> None:
    """Weights, optimiser state and RNG states back on every rank."""
    if not run.sharded:
        ckpt.restore_checkpoint(checkpoint, model=unwrap(run.model), optimizer=run.optimizer)
        return
    weights: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    if run.dist.is_main:  # the others receive their shards from rank 0
        weights, optimizer = ckpt.load_checkpoint_state(checkpoint)
    set_model_state_dict(run.model, weights, options=_SCATTER)
    set_optimizer_state_dict(run.model, run.optimizer, optimizer, options=_SCATTER)
    ckpt.restore_rng(checkpoint)


def plain_model(run: Run, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The trained model as one ordinary module on rank 0 (None on the others), for export.

    Under FSDP (called on every rank) the full state dict is gathered to rank 0's CPU and loaded
    into ``build()``, a fresh unsharded copy; otherwise it is rank 0's replica itself.
    """
    if not run.sharded:
        return unwrap(run.model) if run.dist.is_main else None
    weights = get_model_state_dict(run.model, options=_GATHER)
    if not run.dist.is_main:
        return None
    model = build()
    model.load_state_dict(weights, strict=True)
    return model
