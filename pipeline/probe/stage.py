"""The ``probe`` stage: name the device and measure matrix-multiply throughput.

It exercises the whole job path (events, metrics, cancellation, failure) with nothing but torch,
so operators can check a new worker and fault tests have a job of a chosen length.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch

from pipeline.configs.probe import ProbeConfig
from pipeline.types import Hooks, PipelineError, Progress, RunPaths, StageCancelled


@dataclass(frozen=True)
class ProbeInputs:
    """The probe reads nothing: it measures the device it runs on."""


@dataclass(frozen=True)
class ProbeResult:
    device: str
    device_name: str
    torch_version: str
    measurements: int
    mean_gflops: float
    best_gflops: float


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def run_probe(
    config: ProbeConfig, inputs: ProbeInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> ProbeResult:
    """Multiply random matrices for ``duration_s`` seconds, reporting GFLOP/s about once a second.

    Raises:
        PipelineError: ``probe.no_cuda`` when CUDA was asked for and is absent, or the code given
            in ``fail_with`` (failure drills).
        StageCancelled: ``hooks.should_stop`` answered True.
    """
    if config.device == "cuda" and not torch.cuda.is_available():
        raise PipelineError("probe.no_cuda", "CUDA was requested but this worker has no GPU.")
    device = torch.device(config.device)
    name = _device_name(device)
    hooks.on_event(
        f"probe on {device.type}: {name}",
        {
            "torch_version": torch.__version__,
            "device": device.type,
            "device_name": name,
            "cpu": platform.processor() or platform.machine(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "threads": torch.get_num_threads(),
        },
    )
    n = config.matmul_size
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    flops_per_matmul = 2 * n**3
    started = time.monotonic()
    rates: list[float] = []
    while True:
        if hooks.should_stop():
            raise StageCancelled
        window_start, matmuls = time.monotonic(), 0
        while time.monotonic() - window_start < min(1.0, config.duration_s) or matmuls == 0:
            a @ b
            matmuls += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        rate = flops_per_matmul * matmuls / (time.monotonic() - window_start) / 1e9
        rates.append(rate)
        hooks.on_progress(
            Progress(
                step=len(rates), total=max(1, round(config.duration_s)), metrics={"gflops": rate}
            )
        )
        if config.fail_with:
            raise PipelineError(config.fail_with, f"probe failed on request ({config.fail_with}).")
        if time.monotonic() - started >= config.duration_s:
            break
    return ProbeResult(
        device=device.type,
        device_name=name,
        torch_version=torch.__version__,
        measurements=len(rates),
        mean_gflops=sum(rates) / len(rates),
        best_gflops=max(rates),
    )
