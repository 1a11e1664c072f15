"""QLoRA on CUDA (bitsandbytes 4-bit NF4 base): skipped on machines without both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pipeline.configs.finetune import FinetuneConfig
from pipeline.finetune.stage import FinetuneInputs, run_finetune
from pipeline.types import DatasetFile
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import build_base, chat_rows, task_split, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(
        importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes"
    ),
]


def test_qlora_trains_and_merges_on_an_unquantised_base(tmp_path: Path) -> None:
    base = build_base("qwen2", tmp_path / "base")
    train, held_out = task_split()
    files = [
        DatasetFile(write_jsonl(tmp_path / n, chat_rows(rows)), "jsonl")
        for n, rows in (("t.jsonl", train[:32]), ("v.jsonl", held_out[:8]))
    ]
    result = run_finetune(
        FinetuneConfig(method="qlora", n_epochs=1, batch_size=8, learning_rate=1e-3),
        FinetuneInputs(base, files[0], files[1]),
        make_paths(tmp_path),
    )
    assert result.adapter_dir is not None
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert (result.model_dir / "model.safetensors").exists()
    assert result.metrics["full_valid_loss"] > 0
