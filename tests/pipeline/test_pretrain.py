"""Pretraining on CPU with the `tiny` preset: learning, resume, divergence, export, DDP."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.configs.base import ConfigError
from pipeline.configs.training import (
    ModelConfig,
    PretrainConfig,
    estimate_memory_bytes,
)
from pipeline.parts.tokens import BatchSpec, get_batch, tokenize_dataset
from pipeline.pretrain.stage import PretrainInputs, PretrainResult, run_pretrain
from pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)
from tests.pipeline.conftest import make_paths, tiny_config
from tests.timing import scaled
from workers.launch import run_distributed

REPO = Path(__file__).parents[2]


class Recorder:
    """Hooks that remember what the stage reported; optionally stop or crash at a step."""

    def __init__(self, stop_at: int | None = None, crash_at: int | None = None) -> None:
        self.losses: dict[int, float] = {}
        self.val: dict[int, float] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.polls = 0
        self.stop_at, self.crash_at = stop_at, crash_at

    def on_progress(self, p: Progress) -> None:
        self.losses[p.step] = p.metrics["train_loss"]
        if "val_loss" in p.metrics:
            self.val[p.step] = p.metrics["val_loss"]
        if p.step == self.crash_at:
            raise KeyboardInterrupt("simulated kill")  # not caught by the stage, like SIGKILL

    def on_event(self, message: str, data: dict[str, Any], level: str = "info") -> None:
        self.events.append((message, data))

    def should_stop(self) -> bool:
        self.polls += 1  # polled once per step, before that step's optimizer update
        return self.polls == self.stop_at

    def hooks(self) -> Hooks:
        return Hooks(self.on_progress, self.on_event, self.should_stop)


def _pretrain(
    config: PretrainConfig, paths: RunPaths, rec: Recorder, corpus: DatasetFile, tok: Path
) -> PretrainResult:
    return run_pretrain(config, PretrainInputs(corpus, None, tok), paths, rec.hooks())


@pytest.fixture(scope="module")
def baseline(
    tmp_path_factory: pytest.TempPathFactory,
    corpus_file: DatasetFile,
    tiny_tokenizer_dir: Path,
    shared_cache: Path,
) -> tuple[PretrainResult, Recorder]:
    """One uninterrupted 40-step run, shared by the tests that compare against it."""
    paths = make_paths(tmp_path_factory.mktemp("baseline"), shared_cache)
    rec = Recorder()
    return _pretrain(tiny_config(), paths, rec, corpus_file, tiny_tokenizer_dir), rec


def test_pretrain_loss_falls_and_beats_unigram_baseline(
    baseline: tuple[PretrainResult, Recorder],
) -> None:
    result, rec = baseline
    assert rec.losses[1] > 6.0 and rec.losses[40] < rec.losses[1] - 2.0
    assert rec.val[40] < rec.val[20]
    assert result.final_val_perplexity < 0.5 * result.unigram_val_perplexity
    assert result.steps == 40 and result.tokens_seen == 40 * 1024
    assert result.resumed_from_step is None and result.params > 100_000
    samples = [data for message, data in rec.events if message == "samples"]
    assert [s["step"] for s in samples] == [20, 40]
    assert {"prompt", "greedy", "top_k"} <= samples[-1]["samples"][0].keys()


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _assert_same_run(a: tuple[PretrainResult, Recorder], b_losses: dict[int, float], b_out: Path):
    assert b_losses == a[1].losses  # bit-identical floats, every step
    wa, wb = _weights(a[0].output_dir), _weights(b_out)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_stop_then_resume_matches_uninterrupted_run_bit_for_bit(
    tmp_path: Path,
    baseline: tuple[PretrainResult, Recorder],
    corpus_file: DatasetFile,
    tiny_tokenizer_dir: Path,
    shared_cache: Path,
) -> None:
    paths = make_paths(tmp_path, shared_cache)
    first = Recorder(stop_at=17)  # read one step late: stops after step 18
    with pytest.raises(StageCancelled):
        _pretrain(tiny_config(), paths, first, corpus_file, tiny_tokenizer_dir)
    assert (paths.work_dir / "checkpoints" / "step_00000018" / "state.json").exists()

    second = Recorder()
    result = _pretrain(tiny_config(), paths, second, corpus_file, tiny_tokenizer_dir)
    assert result.resumed_from_step == 18
    _assert_same_run(baseline, {**first.losses, **second.losses}, paths.output_dir)


def test_killed_run_resumes_from_last_periodic_checkpoint_identically(
    tmp_path: Path,
    baseline: tuple[PretrainResult, Recorder],
    corpus_file: DatasetFile,
    tiny_tokenizer_dir: Path,
    shared_cache: Path,
) -> None:
    paths = make_paths(tmp_path, shared_cache)
    first = Recorder(crash_at=25)  # checkpoints at 10 and 20; steps 21-25 are lost
    with pytest.raises(KeyboardInterrupt):
        _pretrain(tiny_config(), paths, first, corpus_file, tiny_tokenizer_dir)
    leftover = paths.work_dir / "checkpoints" / "step_00000030.tmp-deadbeef"
    leftover.mkdir()  # as if killed mid-save: must be ignored and cleaned

    second = Recorder()
    result = _pretrain(tiny_config(), paths, second, corpus_file, tiny_tokenizer_dir)
    assert result.resumed_from_step == 20 and not leftover.exists()
    assert min(second.losses) == 21
    _assert_same_run(baseline, {**first.losses, **second.losses}, paths.output_dir)


def test_nan_loss_fails_with_train_diverged_and_keeps_last_checkpoint(
    tmp_path: Path, corpus_file: DatasetFile, tiny_tokenizer_dir: Path, shared_cache: Path
) -> None:
    paths = make_paths(tmp_path, shared_cache)
    config = tiny_config(lr=1e6, min_lr=1e5, warmup_steps=0, checkpoint_interval=2)
    with pytest.raises(PipelineError) as info:
        _pretrain(config, paths, Recorder(), corpus_file, tiny_tokenizer_dir)
    assert info.value.code == "train.diverged"
    kept = list((paths.work_dir / "checkpoints").glob("step_*"))
    assert len(kept) == 1
    weights = load_file(str(kept[0] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_export_loads_and_generates_in_a_fresh_process(
    baseline: tuple[PretrainResult, Recorder],
) -> None:
    out = baseline[0].output_dir
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    script = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); "
        "t = AutoTokenizer.from_pretrained(sys.argv[1]); "
        "ids = t('Once upon a time', return_tensors='pt').input_ids; "
        "out = m.generate(ids, max_new_tokens=5, do_sample=False); "
        "print('EOS', m.generation_config.eos_token_id, 'NEW', out.shape[1] - ids.shape[1])"
    )
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(120),
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"EOS 1 NEW [1-5]\b", proc.stdout), proc.stdout


def test_token_cache_is_reused_and_batches_are_a_pure_function_of_step(
    corpus_file: DatasetFile, tiny_tokenizer_dir: Path, shared_cache: Path
) -> None:
    shard = tokenize_dataset(corpus_file, tiny_tokenizer_dir, shared_cache)
    again = tokenize_dataset(corpus_file, tiny_tokenizer_dir, shared_cache)
    assert again.reused and again.path == shard.path and shard.tokens.dtype == np.uint16
    one = BatchSpec(seed=7, micro_batch=4, accum=4, world=1, context=32)
    two = dataclasses.replace(one, accum=2, world=2)
    single = [get_batch(shard.tokens, one, step=3, micro=m, rank=0)[0] for m in range(4)]
    ranked = [
        get_batch(shard.tokens, two, step=3, micro=m, rank=r)[0] for r in (0, 1) for m in (0, 1)
    ]
    assert all(torch.equal(a, b) for a, b in zip(single, ranked, strict=True))
    x, y = get_batch(shard.tokens, one, step=3, micro=0, rank=0)
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 32)
    assert not torch.equal(x, get_batch(shard.tokens, one, step=4, micro=0, rank=0)[0])


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelConfig(preset="tiny", heads=5), "heads"),
        (lambda: ModelConfig(preset="tiny", kv_heads=3), "kv_heads"),
        (lambda: ModelConfig(preset=None, layers=2), "heads"),
        (lambda: tiny_config(global_batch_tokens=1000), "global_batch_tokens"),
        (lambda: tiny_config(devices=3), "global_batch_tokens"),
        (lambda: tiny_config(min_lr=1.0), "min_lr"),
        (lambda: tiny_config(max_steps=None), "max_steps"),
        (lambda: tiny_config(warmup_steps=100), "warmup_steps"),
        (lambda: tiny_config(validation_fraction=0.9), "validation_fraction"),
        (lambda: tiny_config(precision="fp8"), "precision"),
    ],
)
def test_config_errors_name_the_field(make: Callable[[], object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.field == field


def test_memory_estimate_scales_with_model_and_batch() -> None:
    cfg = PretrainConfig(
        model=ModelConfig(preset="gpt2-small"), micro_batch_size=8, global_batch_tokens=8 * 1024
    )
    gpt2 = estimate_memory_bytes(cfg.model, cfg, vocab_size=50304)
    assert 4e9 < gpt2 < 40e9  # 124M params: ~2 GB of states plus activations and logits
    bigger = dataclasses.replace(cfg, micro_batch_size=16, global_batch_tokens=16 * 1024)
    assert estimate_memory_bytes(cfg.model, bigger, vocab_size=50304) > gpt2
    one_b = PretrainConfig(
        model=ModelConfig(preset="1b"), micro_batch_size=1, global_batch_tokens=2048
    )
    assert estimate_memory_bytes(one_b.model, one_b, vocab_size=32000) > 16e9  # > 16 B/param


def test_no_unsafe_deserialisation_in_workers() -> None:
    """RELIABILITY 25: nothing under workers/ can unpickle an artefact or run hub code."""
    offenders = []
    for path in (REPO / "workers").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            unsafe_torch_load = "torch.load(" in line and "weights_only=True" not in line
            if unsafe_torch_load or "pickle.load" in line or "trust_remote_code=True" in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert offenders == []


@pytest.mark.slow
def test_ddp_two_processes_follow_the_single_process_loss_curve(
    tmp_path: Path,
    baseline: tuple[PretrainResult, Recorder],
    corpus_file: DatasetFile,
    tiny_tokenizer_dir: Path,
    shared_cache: Path,
) -> None:
    # Same global batch (1024 tokens): 1 process × 2 accumulation steps vs 2 processes × 1.
    config = tiny_config(devices=2, max_steps=20, eval_interval=20, checkpoint_interval=20)
    single = Recorder()
    _pretrain(
        dataclasses.replace(config, devices=1),
        make_paths(tmp_path / "one", shared_cache),
        single,
        corpus_file,
        tiny_tokenizer_dir,
    )
    inputs = PretrainInputs(corpus_file, None, tiny_tokenizer_dir)
    ddp = Recorder()
    result = run_distributed(
        "pipeline.pretrain.stage:run_pretrain",
        config,
        inputs,
        make_paths(tmp_path / "two", shared_cache),
        ddp.hooks(),
        nproc=2,
    )
    assert result["steps"] == 20 and ddp.losses.keys() == single.losses.keys()
    for step, loss in single.losses.items():
        assert ddp.losses[step] == pytest.approx(loss, rel=1e-4), step
    assert ddp.val[20] == pytest.approx(single.val[20], rel=1e-4)


@pytest.mark.slow
def test_ddp_with_fewer_eval_batches_than_ranks_finishes(
    tmp_path: Path, corpus_file: DatasetFile, tiny_tokenizer_dir: Path, shared_cache: Path
) -> None:
    """eval_batches: 1 on 2 ranks leaves one rank without a batch: evaluation must not go
    through the DDP wrapper's collective forward, or both ranks wait for ever."""
    config = tiny_config(
        devices=2, max_steps=6, warmup_steps=2, eval_interval=3, checkpoint_interval=6
    )
    config = dataclasses.replace(config, eval_batches=1)
    inputs = PretrainInputs(corpus_file, None, tiny_tokenizer_dir)
    recorder = Recorder()
    result = run_distributed(
        "pipeline.pretrain.stage:run_pretrain",
        config,
        inputs,
        make_paths(tmp_path, shared_cache),
        recorder.hooks(),
        nproc=2,
    )
    assert result["steps"] == 6 and set(recorder.val) == {3, 6}


def test_ranks_deaf_to_stop_are_ended_within_the_grace(tmp_path: Path) -> None:
    """Ranks that ignore STOP (hung in a collective) are ended: SIGTERM, then SIGKILL, of the
    whole process group, so a cancel always ends a multi-process job."""
    import subprocess
    import time

    from pipeline.types import Hooks
    from workers import launch

    # A process group that ignores SIGTERM, as a rank stuck in C code can.
    deaf = subprocess.Popen(
        ["python3", "-c", "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "time.sleep(120)"],
        start_new_session=True,
    )  # fmt: skip
    launch._TERM_GRACE_S, grace = 1.0, launch._TERM_GRACE_S
    try:
        started = time.monotonic()
        forced = launch._follow(deaf, tmp_path, Hooks(should_stop=lambda: True), stop_grace_s=1)
    finally:
        launch._TERM_GRACE_S = grace
    assert forced and deaf.poll() is not None
    assert (tmp_path / "STOP").exists() and time.monotonic() - started < 30
