"""Training on several devices: how the model is spread, which examples each rank trains on,
and the collectives that keep the ranks in step.

Pretraining wraps its model with :func:`wrap_model` (compile, DDP). Fine-tuning picks a strategy
(:func:`wrap`):

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

from pipeline.parts import checkpoint as ckpt
from pipeline.parts.device import DistInfo, barrier

T = TypeVar("T")

# Gathered to rank 0's CPU memory: no device ever holds the whole model at once.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
# Rank 0 reads the files and sends each tensor to the others, which keep their shard of it.
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module that owns the weights (below DDP/compile wrappers)."""
    inner = getattr(model, "module", model)
    return cast(nn.Module, getattr(inner, "_orig_mod", inner))


def wrap(
    model: nn.Module,
    reference: nn.Module | None,
    *,
    strategy: str,
    info: DistInfo,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[nn.Module, nn.Module | None]:
    """The model (and DPO's reference) as ``strategy`` (ddp | fsdp) spreads them over
    ``info.world_size`` ranks.

    Under FSDP, build the models on the CPU: ``fully_shard`` moves only each rank's shard to
    ``device``, so a model too large for one device never has to fit on one. 16-bit precision
    all-gathers weights in ``dtype`` and reduces gradients in fp32 (the master weights stay
    fp32 where they were). DPO's frozen reference is sharded the same way; under DDP it is a
    plain replica (it has no gradients to reduce).
    """
    if info.world_size == 1:
        return model, reference
    if strategy == "ddp":
        ddp = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # The only buffers (rotary frequencies) are equal on every rank; broadcasting them
            # would make every forward a collective, evaluation and sampling included.
            broadcast_buffers=False,
        )
        return ddp, reference
    mesh = init_device_mesh(device.type, (info.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32
    )
    for module in (model, reference):
        if module is not None:
            _fully_shard(module, mesh, policy)
    return model, reference


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


def share(items: Sequence[T], info: DistInfo) -> tuple[list[T], float]:
    """This rank's share of a batch and its weight: 1, or 0 with the batch's first item as a
    stand-in when the share is empty (a short last batch), because the other ranks'
    collectives wait for this rank's forward."""
    mine = shard(items, info)
    return (mine, 1.0) if mine else (list(items[:1]), 0.0)


def chunk_sums(
    items: Sequence[T],
    fn: Callable[[list[T]], list[float]],
    *,
    width: int,
    size: int,
    limit: int | None,
    info: DistInfo,
    device: torch.device,
) -> list[float]:
    """Sums of ``fn`` (``width`` figures) over the first ``limit`` chunks of ``size`` items (all
    when None), each chunk split over the ranks as a training batch is, added over the ranks:
    the figures do not depend on the number of devices."""
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    chunks = chunks[:limit] if limit is not None else chunks
    sums = [0.0] * width
    for chunk in chunks:
        mine, weight = share(chunk, info)
        part = fn(mine)
        sums = [total + weight * value for total, value in zip(sums, part, strict=True)]
    return sum_across(sums, info, device)


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


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    info: DistInfo,
    sharded: bool,
) -> Path | None:
    """Rank 0 writes the checkpoint (the path; None on the others). Called on every rank: under
    FSDP (``sharded``) the full state is gathered first; otherwise rank 0's replica is the whole
    state."""
    path = None
    if sharded:
        weights = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=_GATHER))
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=_GATHER)
        if info.is_main:
            path = ckpt.save_checkpoint_state(
                root, step=step, model_state=weights, optimizer_state=optimizer_state, state=state
            )
    elif info.is_main:
        path = ckpt.save_checkpoint(
            root, step=step, model=unwrap(model), optimizer=optimizer, state=state
        )
    barrier(info)  # on disk before any rank moves on (or leaves, after a stop)
    return path


def restore_checkpoint(
    checkpoint: ckpt.Checkpoint,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: DistInfo,
    sharded: bool,
) -> None:
    """Weights, optimiser state and RNG states back on every rank."""
    if not sharded:
        ckpt.restore_checkpoint(checkpoint, model=unwrap(model), optimizer=optimizer)
        return
    weights: dict[str, Any] = {}
    optimizer_state: dict[str, Any] = {}
    if info.is_main:  # the others receive their shards from rank 0
        weights, optimizer_state = ckpt.load_checkpoint_state(checkpoint)
    set_model_state_dict(model, weights, options=_SCATTER)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=_SCATTER)
    ckpt.restore_rng(checkpoint)


def plain_model(
    model: nn.Module, *, info: DistInfo, sharded: bool, build: Callable[[], nn.Module]
) -> nn.Module | None:
    """The trained model as one ordinary module on rank 0 (None on the others), for export.

    Under FSDP (called on every rank) the full state dict is gathered to rank 0's CPU and loaded
    into ``build()``, a fresh unsharded copy; otherwise it is rank 0's replica itself.
    """
    if not sharded:
        return unwrap(model) if info.is_main else None
    weights = get_model_state_dict(model, options=_GATHER)
    if not info.is_main:
        return None
    plain = build()
    plain.load_state_dict(weights, strict=True)
    return plain
