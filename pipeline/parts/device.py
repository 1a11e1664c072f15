"""Device and dtype choice, seeding, memory, and data-parallel process groups.

``init_distributed`` is the one place that reads torchrun's environment (RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR/PORT); stages only ask ``torch.distributed`` who they are, so the same
stage function runs in a test process and under torchrun.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import resource
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.configs.base import Precision
from pipeline.types import PipelineError


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


def choose_device(info: DistInfo) -> torch.device:
    return (
        torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    )


def cpu_threads(requested: int) -> int:
    """The threads a stage uses: as asked, but never more than this machine's cores (the API
    refuses more than the queue's workers offer; this guards a worker smaller than declared)."""
    return max(1, min(requested, os.cpu_count() or 1))


def inference_device(requested: str) -> torch.device:
    """The device an evaluation or comparison runs on: ``auto`` takes CUDA when there is one.

    Raises:
        PipelineError: ``evaluate.no_cuda`` when ``cuda`` was asked for and none is present.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise PipelineError("evaluate.no_cuda", "device cuda was asked for but none is present")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision for the forward pass; a no-op in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all CUDA devices too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
