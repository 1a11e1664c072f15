"""The memory pre-flight's estimate against peaks measured on real devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.configs.training import ModelConfig, PretrainConfig, estimate_memory_bytes

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


@pytest.mark.parametrize(
    ("preset", "micro", "measured_mib"),
    [("gpt2-small", 32, 24_382), ("350m", 16, 45_685), ("1b", 16, 78_824)],
)
def test_the_gpu_estimate_is_within_15_percent_of_the_h200_peaks(
    preset: str, micro: int, measured_mib: int
) -> None:
    """Peaks of bf16 + compile training at vocabulary 32768 (``bench_pretrain.py --cuda``)."""
    model = ModelConfig(preset=preset)  # type: ignore[arg-type]
    context = model.shape().context_length
    cfg = PretrainConfig(
        model=model, micro_batch_size=micro, global_batch_tokens=micro * context, precision="bf16"
    )
    estimate = estimate_memory_bytes(model, cfg, vocab_size=32768) / MIB
    assert estimate == pytest.approx(measured_mib, rel=0.15)


def test_the_cpu_estimate_is_within_15_percent_of_a_measured_peak(tmp_path: Path) -> None:
    """One fp32 training step measured in a fresh process, so its resident memory is clean."""
    child = [sys.executable, str(REPO / "benchmarks" / "bench_pretrain.py"), "--child=memory"]
    flags = ["--preset=tiny", "--micro-batch=16", "--cpu-vocab=4096", "--threads=1"]
    out = subprocess.run(
        [*child, *flags, f"--root={tmp_path}"], check=True, capture_output=True, text=True
    ).stdout
    cell = json.loads(out.strip().splitlines()[-1])
    assert cell["estimate"] == pytest.approx(cell["measured"], rel=0.15)


def test_auto_precision_is_estimated_as_fp32_on_a_cpu_queue() -> None:
    cfg = PretrainConfig(
        model=ModelConfig(preset="small"), micro_batch_size=8, global_batch_tokens=2048
    )
    fp32 = PretrainConfig(
        model=cfg.model, micro_batch_size=8, global_batch_tokens=2048, precision="fp32"
    )
    on_cpu = estimate_memory_bytes(cfg.model, cfg, vocab_size=4096, accelerated=False)
    assert on_cpu == estimate_memory_bytes(fp32.model, fp32, vocab_size=4096)
    assert on_cpu > estimate_memory_bytes(cfg.model, cfg, vocab_size=4096, accelerated=True)
