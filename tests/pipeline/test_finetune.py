"""Fine-tuning on CPU with tiny bases: a task learnt with full weights and with LoRA, DPO
preferences, merged = adapter logits, resume after a stop, outputs that load offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.configs.finetune import DpoSettings, FinetuneConfig, LoraSettings
from pipeline.finetune.stage import FinetuneInputs, FinetuneResult, run_finetune
from pipeline.parts.chat import render
from pipeline.parts.runtimes.transformers import answer as generate
from pipeline.types import DatasetFile, Hooks, Progress, StageCancelled
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import (
    build_base,
    chat_rows,
    task,
    task_split,
    write_jsonl,
)


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.progress: dict[int, dict[str, float]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.stop_at = stop_at
        self.step = 0

    def on_progress(self, p: Progress) -> None:
        self.progress.setdefault(p.step, {}).update(p.metrics)
        self.step = p.step

    def on_event(self, message: str, data: dict[str, Any], level: str = "info") -> None:
        self.events.append((message, data))

    def should_stop(self) -> bool:
        return self.stop_at is not None and self.step >= self.stop_at

    def hooks(self) -> Hooks:
        return Hooks(self.on_progress, self.on_event, self.should_stop)


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {family: build_base(family, root / family) for family in ("llama", "qwen2")}


@pytest.fixture(scope="module")
def task_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetFile, DatasetFile]:
    root = tmp_path_factory.mktemp("data")
    train, held_out = task_split()
    root.mkdir(parents=True, exist_ok=True)
    return (
        DatasetFile(write_jsonl(root / "train.jsonl", chat_rows(train)), "jsonl"),
        DatasetFile(write_jsonl(root / "valid.jsonl", chat_rows(held_out)), "jsonl"),
    )


def exact_match(model_dir: Path, pairs: list[tuple[str, str]]) -> float:
    """Share of held-out prompts answered exactly, greedy, by the saved model (plain
    transformers, offline: the output folder is all it needs)."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = eos if isinstance(eos, list) else [eos]
    hits = 0
    for name, city in pairs:
        prompt, answer = task(name, city)
        messages = [{"role": "user", "content": prompt}]
        # A template-less base (the llama one) is asked with the bare prompt.
        text = render(tok, messages, add_generation_prompt=True) if tok.chat_template else prompt
        out = generate(
            model, tok, text, max_new_tokens=24, eos_ids=eos_ids, device=torch.device("cpu")
        )
        hits += out.strip() == answer
    return hits / len(pairs)


def finetune(
    base: Path,
    files: tuple[DatasetFile, DatasetFile],
    root: Path,
    hooks: Hooks = Hooks(),
    **kw: Any,
) -> FinetuneResult:
    defaults: dict[str, Any] = {
        "n_epochs": 10,
        "batch_size": 8,
        "max_seq_len": 128,
        "eval_interval": 20,
        "sample_count": 1,
        "sample_tokens": 16,
        "warmup_ratio": 0.05,
    }
    config = FinetuneConfig(**{**defaults, **kw})
    inputs = FinetuneInputs(base, files[0], files[1])
    return run_finetune(config, inputs, make_paths(root), hooks)


@pytest.mark.slow  # ~150 steps per model: tens of seconds on an idle core
@pytest.mark.parametrize(
    ("family", "method", "lr"), [("qwen2", "full", 1e-2), ("llama", "lora", 1e-2)]
)
def test_finetune_learns_a_held_out_format_task(
    bases: dict[str, Path],
    task_files: tuple[DatasetFile, DatasetFile],
    tmp_path: Path,
    family: str,
    method: str,
    lr: float,
) -> None:
    _, held_out = task_split()
    assert exact_match(bases[family], held_out[:8]) == 0.0  # the untrained base cannot
    rec = Recorder()
    result = finetune(
        bases[family],
        task_files,
        tmp_path,
        rec.hooks(),
        method=method,
        learning_rate=lr,
        lora=LoraSettings(rank=16, alpha=32),
    )
    score = exact_match(result.model_dir, held_out)
    assert score >= 0.9, (score, result.metrics)
    final = result.metrics
    assert final["full_valid_mean_token_accuracy"] > 0.9
    assert {"train_loss", "train_mean_token_accuracy", "full_valid_loss"} <= final.keys()
    assert any("valid_loss" in m for m in rec.progress.values())
    assert any(msg == "samples" for msg, _ in rec.events)
    card = (result.model_dir / "README.md").read_text()
    assert method in card and "full_valid_loss" in card
    generation = json.loads((result.model_dir / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(result.model_dir))
    assert tok.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert tok.chat_template is not None
    assert not list(result.model_dir.glob("*.bin"))
    if method == "lora":
        assert result.adapter_dir is not None
        assert (result.adapter_dir / "adapter_model.safetensors").exists()
        assert result.chat_template == "chatml"  # the llama base had none


def small_files(root: Path, n_train: int = 48) -> tuple[DatasetFile, DatasetFile]:
    train, held_out = task_split()
    root.mkdir(parents=True, exist_ok=True)
    return (
        DatasetFile(
            write_jsonl(root / "train.jsonl", chat_rows(train[:n_train], system=True)), "jsonl"
        ),
        DatasetFile(write_jsonl(root / "valid.jsonl", chat_rows(held_out[:8])), "jsonl"),
    )


def test_merged_model_logits_equal_adapter_logits(bases: dict[str, Path], tmp_path: Path) -> None:
    """On the llama base the template added tokens, so embeddings are trained and saved too."""
    from peft import PeftModel

    result = finetune(
        bases["llama"],
        small_files(tmp_path),
        tmp_path,
        method="lora",
        n_epochs=1,
        batch_size=8,
        learning_rate=1e-2,
    )
    assert result.adapter_dir is not None
    tok = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    base = AutoModelForCausalLM.from_pretrained(str(bases["llama"]))
    base.resize_token_embeddings(len(tok))
    adapted = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(str(result.model_dir)).eval()
    ids = tok("<|im_start|>user\nFormat: anna in paris<|im_end|>\n", return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        a, m = adapted(input_ids=ids).logits, merged(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(str(bases["llama"]))
        plain.resize_token_embeddings(len(tok))
        b = plain(input_ids=ids).logits
    assert (a - m).abs().max() < 1e-4
    assert (a - b).abs().max() > 1e-3  # the adapter did change the model


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    files = small_files(tmp_path / "data")
    kw: dict[str, Any] = {
        "method": "lora",
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate": 5e-3,
        "checkpoint_interval": 4,
        "lora": LoraSettings(rank=4, dropout=0.1),
    }
    straight = Recorder()
    full = finetune(bases["qwen2"], files, tmp_path / "a", straight.hooks(), **kw)
    stopper = Recorder(stop_at=5)
    with pytest.raises(StageCancelled):
        finetune(bases["qwen2"], files, tmp_path / "b", stopper.hooks(), **kw)
    # Step 5 is reported once step 6 is launched (metrics are read a step late), so the stop
    # asked for on seeing it lands after step 6, which is checkpointed and reported.
    assert max(stopper.progress) == 6
    resumed = Recorder()
    again = finetune(bases["qwen2"], files, tmp_path / "b", resumed.hooks(), **kw)
    assert again.resumed_from_step == 6 and min(resumed.progress) == 7
    assert ("checkpoint", 6) in [(m, d.get("step")) for m, d in resumed.events]  # re-recorded
    for step in range(7, full.steps + 1):
        assert resumed.progress[step]["train_loss"] == pytest.approx(
            straight.progress[step]["train_loss"], rel=1e-5
        )
    assert again.metrics["full_valid_loss"] == pytest.approx(
        full.metrics["full_valid_loss"], rel=1e-5
    )


@pytest.mark.slow
def test_dpo_prefers_the_chosen_format_on_held_out_pairs(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    train, held_out = task_split()

    def pairs(items: list[tuple[str, str]]) -> list[dict[str, str]]:
        rows = []
        for n, c in items:
            prompt, answer = task(n, c)
            rows.append({"prompt": prompt + "\n", "chosen": answer, "rejected": f"{c} , {n}"})
        return rows

    files = (
        DatasetFile(write_jsonl(tmp_path / "p.jsonl", pairs(train[:64])), "jsonl"),
        DatasetFile(write_jsonl(tmp_path / "v.jsonl", pairs(held_out)), "jsonl"),
    )
    for use_lora in (True, False):
        rec = Recorder()
        result = finetune(
            bases["qwen2"],
            files,
            tmp_path / f"run{use_lora}",
            rec.hooks(),
            method="dpo",
            n_epochs=2,
            batch_size=8,
            learning_rate=5e-3 if use_lora else 1e-3,
            dpo=DpoSettings(beta=0.1, use_lora=use_lora),
        )
        m = result.metrics
        assert m["full_valid_preference_accuracy"] >= 0.9, m
        assert m["full_valid_reward_margin"] > 0
        assert m["full_valid_chosen_reward"] > m["full_valid_rejected_reward"]
        assert (result.adapter_dir is not None) == use_lora
        assert (result.model_dir / "model.safetensors").exists()
