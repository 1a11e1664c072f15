"""Device and dtype choice, seeding, and data-parallel process groups.

``init_distributed`` is the one place that reads torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT); stages only ask ``torch.distributed`` who they are, so the same
stage function runs in a test process and under torchrun.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from workers.pipeline.configs.training import Precision
from workers.pipeline.types import PipelineError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)


def init_distributed(timeout: timedelta = PROCESS_GROUP_TIMEOUT) -> DistInfo:
    """Join the torchrun process group if launched by torchrun; otherwise a world of one.

    NCCL on CUDA, gloo on CPU. Each rank pins its own GPU before the group forms, so NCCL
    does not put every rank's context on GPU 0. A collective that waits longer than ``timeout``
    (a rank died or went its own way) fails the ranks instead of hanging them for ever.
    """
    if "WORLD_SIZE" not in os.environ or dist.is_initialized():
        return current_dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl", device_id=torch.device("cuda", local_rank), timeout=timeout
        )
    else:
        dist.init_process_group(backend="gloo", timeout=timeout)
    return current_dist()


def current_dist() -> DistInfo:
    if not dist.is_initialized():
        return DistInfo()
    local_rank = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    if info.world_size > 1:
        dist.barrier()


def peak_memory_mb(device: torch.device) -> float:
    """Peak tensor memory on a GPU; peak resident memory of the process on the CPU.

    On Linux the CPU figure is ``VmHWM`` from ``/proc/self/status`` (~0.2 ms), not
    ``getrusage``, which takes 15-30 ms right after the allocator has been busy, as it is
    after every training step: at the ``tiny`` preset that alone cost ~2.5% of throughput.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Readback:
    """Values from the device, copied to host memory without making the host wait for them.

    ``tensor.tolist()`` on a CUDA tensor waits for everything queued before the read, i.e. the
    whole step just launched, so a loop that reads step n's loss after launching step n+1 still
    drains the GPU's queue every step. Here the copy is queued right behind the values, into
    pinned memory, and an event marks it: reading waits for that event alone. On a CPU the
    values are already where the host can read them.
    """

    def __init__(self, values: torch.Tensor) -> None:
        values = values.detach().reshape(-1)
        self._event: torch.cuda.Event | None = None
        if values.is_cuda:
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._event.record()
            values = host
        self._host = values

    def tolist(self) -> list[float]:
        if self._event is not None:
            self._event.synchronize()
        return [float(v) for v in self._host.tolist()]


def choose_device(info: DistInfo) -> torch.device:
    return (
        torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


def resolve_dtype(precision: Precision, device: torch.device) -> torch.dtype:
    """The autocast dtype; fp32 means no autocast. ``auto`` prefers bf16 where it is fast.

    Raises:
        PipelineError: ``train.precision_unsupported`` for 16-bit precision on a device without it.
    """
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("train.precision_unsupported", "fp16 needs a CUDA device")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PipelineError("train.precision_unsupported", "this GPU has no bf16; use fp16")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
