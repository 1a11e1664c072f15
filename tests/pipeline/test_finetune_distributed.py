"""Fine-tuning on two CPU processes (torchrun, gloo): DDP follows one process with the same global
batch, FSDP2 follows DDP, an FSDP checkpoint resumes, and the outputs load with plain transformers.

The data leave uneven shares on purpose: 49 examples in batches of 5 give ranks 3 and 2 examples
(so 2 and 1 micro-batches of 2 rows) and a last batch of one example that leaves rank 1 without
any; the 6 validation examples make a batch of 5 and one of 1. Under FSDP every forward is a
collective, so any mismatch in the number of forwards would hang rather than differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.configs.base import ConfigError
from pipeline.configs.finetune import DpoSettings, FinetuneConfig, LoraSettings
from pipeline.finetune.stage import FinetuneInputs, run_finetune
from pipeline.types import DatasetFile, Hooks, PipelineError, Progress, StageCancelled
from tests.pipeline.conftest import make_paths
from tests.pipeline.finetune_helpers import build_base, chat_rows, task, task_split, write_jsonl
from workers.launch import run_distributed

STAGE = "pipeline.finetune.stage:run_finetune"


def fsdp2_on_cpu() -> bool:
    """FSDP2 (``fully_shard``) over gloo: in torch's CPU builds since 2.6 (2.13 is pinned)."""
    import torch.distributed as dist

    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


needs_fsdp2 = pytest.mark.skipif(
    not fsdp2_on_cpu(), reason="this torch build has no FSDP2 (fully_shard) or no gloo backend"
)


class Recorder:
    def __init__(self, *, stop: bool = False) -> None:
        self.progress: dict[int, dict[str, float]] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.stop = stop

    def on_progress(self, p: Progress) -> None:
        self.progress.setdefault(p.step, {}).update(p.metrics)

    def on_event(self, message: str, data: dict[str, Any], level: str = "info") -> None:
        self.events.append((message, data))

    def hooks(self) -> Hooks:
        return Hooks(self.on_progress, self.on_event, lambda: self.stop)

    def count(self, message: str) -> int:
        return sum(m == message for m, _ in self.events)


def config(**overrides: Any) -> FinetuneConfig:
    base = FinetuneConfig(
        method="full",
        n_epochs=1,
        batch_size=5,
        micro_batch_rows=2,
        packing=False,
        learning_rate=2e-3,
        warmup_ratio=0.1,
        max_seq_len=128,
        eval_interval=5,
        checkpoint_interval=5,
        sample_count=1,
        sample_tokens=8,
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # qwen2: tied embeddings, which FSDP must gather once and export as one tensor.
    return build_base("qwen2", tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> FinetuneInputs:
    root = tmp_path_factory.mktemp("chat")
    train, held_out = task_split()
    return FinetuneInputs(
        Path("unused"),
        DatasetFile(write_jsonl(root / "t.jsonl", chat_rows(train[:49], system=True)), "jsonl"),
        DatasetFile(write_jsonl(root / "v.jsonl", chat_rows(held_out[:6])), "jsonl"),
    )


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> FinetuneInputs:
    root = tmp_path_factory.mktemp("pairs")
    train, held_out = task_split()

    def rows(items: list[tuple[str, str]]) -> list[dict[str, str]]:
        out = []
        for n, c in items:
            prompt, answer = task(n, c)
            out.append({"prompt": prompt + "\n", "chosen": answer, "rejected": f"{c} , {n}"})
        return out

    return FinetuneInputs(
        Path("unused"),
        DatasetFile(write_jsonl(root / "t.jsonl", rows(train[:49])), "jsonl"),
        DatasetFile(write_jsonl(root / "v.jsonl", rows(held_out[:6])), "jsonl"),
    )


def one_process(cfg: FinetuneConfig, inputs: FinetuneInputs, root: Path) -> tuple[Any, Recorder]:
    rec = Recorder()
    result = run_finetune(cfg, inputs, make_paths(root), rec.hooks())
    return result, rec


def two_processes(
    cfg: FinetuneConfig, inputs: FinetuneInputs, root: Path, rec: Recorder | None = None
) -> tuple[dict[str, Any], Recorder]:
    rec = rec or Recorder()
    cfg = dataclasses.replace(cfg, devices=2)
    result = run_distributed(STAGE, cfg, inputs, make_paths(root), rec.hooks(), nproc=2)
    return result, rec


@pytest.fixture(scope="module")
def full_runs(
    tmp_path_factory: pytest.TempPathFactory, base: Path, chat: FinetuneInputs
) -> dict[str, tuple[Any, Recorder]]:
    """The same full fine-tune on one process, on two with DDP and on two with FSDP."""
    root = tmp_path_factory.mktemp("full")
    inputs = dataclasses.replace(chat, base_model_dir=base)
    return {
        "one": one_process(config(), inputs, root / "one"),
        "ddp": two_processes(config(strategy="ddp"), inputs, root / "ddp"),
        "fsdp": two_processes(config(strategy="fsdp"), inputs, root / "fsdp"),
    }


def assert_same_curve(a: Recorder, b: Recorder, *, rel: float) -> None:
    assert a.progress.keys() == b.progress.keys()
    for step, metrics in a.progress.items():
        assert b.progress[step].keys() == metrics.keys(), step
        for name in ("train_loss", "grad_norm", "valid_loss", "full_valid_loss"):
            if name in metrics:
                assert b.progress[step][name] == pytest.approx(metrics[name], rel=rel), (step, name)


def logits(model_dir: Path) -> torch.Tensor:
    """The exported model's logits on a prompt, loaded with plain transformers, every weight
    found in the files."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model, info = AutoModelForCausalLM.from_pretrained(str(model_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = tok("<|im_start|>user\nFormat: anna in paris<|im_end|>\n", return_tensors="pt")
    with torch.no_grad():
        out: torch.Tensor = model.eval()(input_ids=ids["input_ids"]).logits
    return out


@pytest.mark.slow
def test_ddp_on_two_processes_follows_one_process_with_the_same_global_batch(
    full_runs: dict[str, tuple[Any, Recorder]],
) -> None:
    (one, one_rec), (ddp, ddp_rec) = full_runs["one"], full_runs["ddp"]
    assert ddp["steps"] == one.steps == 10
    assert_same_curve(one_rec, ddp_rec, rel=1e-4)
    assert ddp["metrics"]["full_valid_loss"] == pytest.approx(
        one.metrics["full_valid_loss"], rel=1e-4
    )
    # Token counts are summed over the ranks, and rank 0 alone reports and checkpoints.
    assert ddp["trained_tokens"] == one.trained_tokens
    for message in ("checkpoint", "samples", "data"):
        assert ddp_rec.count(message) == one_rec.count(message) > 0, message
    torch.testing.assert_close(
        logits(Path(ddp["model_dir"])), logits(one.model_dir), rtol=1e-3, atol=1e-3
    )


@pytest.mark.slow
@needs_fsdp2
def test_fsdp_follows_ddp_and_writes_full_checkpoints_and_a_plain_model(
    full_runs: dict[str, tuple[Any, Recorder]], base: Path
) -> None:
    (ddp, ddp_rec), (fsdp, fsdp_rec) = full_runs["ddp"], full_runs["fsdp"]
    assert_same_curve(ddp_rec, fsdp_rec, rel=1e-4)
    assert fsdp["trained_tokens"] == ddp["trained_tokens"]
    assert fsdp_rec.count("checkpoint") == ddp_rec.count("checkpoint") == 2
    # The checkpoint (the last one: older ones are removed) holds whole tensors, not a shard.
    path = Path([d for m, d in fsdp_rec.events if m == "checkpoint"][-1]["path"])
    saved = load_file(str(path / "model.safetensors"))
    reference = load_file(str(base / "model.safetensors"))
    for name, tensor in reference.items():
        assert saved[name].shape == tensor.shape, name
    torch.testing.assert_close(
        logits(Path(fsdp["model_dir"])), logits(Path(ddp["model_dir"])), rtol=1e-3, atol=1e-3
    )


@pytest.mark.slow
@needs_fsdp2
def test_fsdp_run_stopped_and_resumed_matches_the_uninterrupted_one(
    tmp_path: Path, base: Path, chat: FinetuneInputs, full_runs: dict[str, tuple[Any, Recorder]]
) -> None:
    """STOP is written before the ranks have started: they stop after step 1 and save it."""
    inputs = dataclasses.replace(chat, base_model_dir=base)
    cfg = config(strategy="fsdp")
    with pytest.raises(StageCancelled):
        two_processes(cfg, inputs, tmp_path, Recorder(stop=True))
    again, rec = two_processes(cfg, inputs, tmp_path)
    assert again["resumed_from_step"] == 1 and min(rec.progress) == 2
    straight = full_runs["fsdp"][1]
    for step in range(2, 11):
        assert rec.progress[step]["train_loss"] == pytest.approx(
            straight.progress[step]["train_loss"], rel=1e-5
        ), step


@pytest.mark.slow
@needs_fsdp2
@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("lora", {"learning_rate": 1e-2, "lora": LoraSettings(rank=4)}),
        ("dpo", {"learning_rate": 1e-3, "dpo": DpoSettings(use_lora=False)}),
    ],
)
def test_lora_and_dpo_under_fsdp_follow_one_process(
    tmp_path: Path,
    base: Path,
    chat: FinetuneInputs,
    pairs: FinetuneInputs,
    method: str,
    extra: dict[str, Any],
) -> None:
    """LoRA: adapters sharded with their frozen base, exported as a peft folder and merged. DPO
    with full weights: the frozen reference is sharded too."""
    inputs = dataclasses.replace(pairs if method == "dpo" else chat, base_model_dir=base)
    cfg = config(method=method, **extra)
    one, one_rec = one_process(cfg, inputs, tmp_path / "one")
    fsdp, fsdp_rec = two_processes(dataclasses.replace(cfg, strategy="fsdp"), inputs, tmp_path)
    assert_same_curve(one_rec, fsdp_rec, rel=1e-4)
    assert fsdp["metrics"] == pytest.approx(one.metrics, rel=1e-4, abs=1e-6)
    assert (fsdp["adapter_dir"] is not None) == (method == "lora")
    torch.testing.assert_close(
        logits(Path(fsdp["model_dir"])), logits(one.model_dir), rtol=1e-3, atol=1e-3
    )


def test_combinations_that_cannot_run_are_refused_as_config_errors() -> None:
    with pytest.raises(ConfigError, match="qlora runs with ddp only") as qlora:
        FinetuneConfig(method="qlora", devices=2, strategy="fsdp")
    with pytest.raises(ConfigError, match="at least one example per device") as small:
        FinetuneConfig(devices=4, batch_size=2)
    assert (qlora.value.field, small.value.field) == ("strategy", "batch_size")
    FinetuneConfig(method="qlora", devices=2, strategy="ddp")
    FinetuneConfig(method="dpo", devices=2, strategy="fsdp", dpo=DpoSettings(use_lora=False))
    # auto: about 0.2% of the examples (1 here), but never fewer than the devices
    assert FinetuneConfig(devices=4).resolve(100).batch_size == 4
    assert FinetuneConfig(devices=1).resolve(100).batch_size == 1


def test_a_run_refuses_a_world_other_than_its_devices(tmp_path: Path, base: Path) -> None:
    with pytest.raises(PipelineError) as err:
        run_finetune(config(devices=2), FinetuneInputs(base, *_no_files()), make_paths(tmp_path))
    assert err.value.code == "train.devices_mismatch"


def _no_files() -> tuple[DatasetFile, None]:
    return DatasetFile(Path("never-read.jsonl"), "jsonl"), None
