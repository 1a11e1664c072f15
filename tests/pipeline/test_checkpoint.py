"""Checkpoints written beside training: what is saved is the state at the save, not at the write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.configs.training import ModelConfig
from pipeline.parts import checkpoint as ckpt
from pipeline.parts.llama import build_model
from pipeline.parts.reports import ReportLog
from pipeline.types import Hooks, Progress


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(preset="tiny").shape(), 64, bos_id=0, eos_id=1, pad_id=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids=torch.arange(16).view(2, 8)).logits.square().mean()
    loss.backward()
    optimizer.step()
    return model, optimizer


def test_a_background_save_holds_the_weights_of_its_step(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    writer = ckpt.CheckpointWriter(tmp_path / "checkpoints")
    assert writer.save(step=3, model=model, optimizer=optimizer, state={"note": "x"}) is None
    with torch.no_grad():  # training goes on while the write is in flight
        for p in model.parameters():
            p.add_(1.0)
    step, path = writer.wait() or (0, tmp_path)
    writer.close()
    assert (step, path.name) == (3, "step_00000003")

    fresh, fresh_opt = _model_and_optimizer()
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and latest.state["note"] == "x"
    ckpt.restore_checkpoint(latest, model=fresh, optimizer=fresh_opt)
    for name, value in fresh.state_dict().items():  # tied embeddings come back tied
        assert torch.equal(value, saved[name]), name


def test_a_new_save_reports_the_previous_one_and_keeps_only_the_latest(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    writer = ckpt.CheckpointWriter(tmp_path)
    writer.save(step=1, model=model, optimizer=optimizer, state={})
    assert writer.save(step=2, model=model, optimizer=optimizer, state={}) == (
        1,
        tmp_path / "step_00000001",
    )
    assert writer.wait() == (2, tmp_path / "step_00000002")
    assert writer.poll() is None and writer.wait() is None
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000002"]


def test_a_failed_write_fails_the_run(tmp_path: Path) -> None:
    model, optimizer = _model_and_optimizer()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    writer = ckpt.CheckpointWriter(blocked)
    writer.save(step=1, model=model, optimizer=optimizer, state={})
    with pytest.raises(OSError):
        writer.wait()
    writer.close()


def test_a_restored_checkpoint_carries_the_figures_reported_before_it(tmp_path: Path) -> None:
    """A worker killed right after a checkpoint may not have written the figures of the steps
    before it: the restored checkpoint's event carries them for the job layer to write again,
    while the stage's own progress reports stay those of the steps it runs."""
    log = ReportLog()
    for step in (5, 10, 15):
        log.record(Progress(step, 20, {"train_loss": 1.0 / step}))
    model, optimizer = _model_and_optimizer()
    ckpt.save_checkpoint(
        tmp_path, step=15, model=model, optimizer=optimizer, state={**log.state(), "x": 1}
    )
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None

    events: list[tuple[str, dict[str, Any]]] = []
    progress: list[Progress] = []
    hooks = Hooks(
        on_progress=progress.append,
        on_event=lambda m, d=None, **_: events.append((m, dict(d or {}))),
    )
    ckpt.announce_restored(hooks, latest)
    (data,) = [d for m, d in events if m == "checkpoint"]
    assert data["restored"] and data["step"] == 15
    assert data["reports"] == [[step, {"train_loss": 1.0 / step}] for step in (5, 10, 15)]
    assert progress == []
    resumed = ReportLog(latest.state)  # the next checkpoint still carries them
    resumed.record(Progress(20, 20, {"train_loss": 0.05}))
    assert [step for step, _ in resumed.state()["reports"]] == [5, 10, 15, 20]
