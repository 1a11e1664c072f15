"""Resumable training checkpoints: written atomically, verified by hash, never pickled.

A checkpoint is a directory ``checkpoints/step_00000123/`` holding

- ``model.safetensors``: the weights (shared/tied tensors stored once);
- ``training.safetensors``: optimiser moments and the torch/CUDA RNG states;
- ``state.json``: everything else (step, config, data position, python/numpy RNG, optimiser
  hyper-parameters, grad-scaler state) plus the sha256 of both tensor files.

It is assembled in ``step_….tmp-<uuid>/`` and renamed into place in one ``os.replace``, so a
kill at any moment leaves either the previous checkpoint or the new one, never a partial
"latest"; leftovers ``*.tmp-*`` are removed at the next start. Loading goes through
``safetensors`` and ``json`` only: nothing a user can influence is ever unpickled. A save
stalls training only for the copy to host memory (:class:`CheckpointWriter` writes beside it).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file

from pipeline.parts.files import fsync, sha256_file
from pipeline.parts.reports import ReportLog
from pipeline.types import Hooks, PipelineError

_FORMAT = 1


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    state: dict[str, Any]


def clean_tmp(root: Path) -> None:
    """Remove half-written checkpoints left by a process killed mid-save."""
    if root.exists():
        for leftover in root.glob("*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint's content in host memory: what training must wait for before going on."""

    step: int
    weights: dict[str, torch.Tensor]
    training: dict[str, torch.Tensor]
    state: dict[str, Any]
    copied: torch.cuda.Event | None = None
    """Set when GPU tensors are still being copied on a side stream: the writer waits for it."""


class HostBuffers:
    """Host copies of device tensors, made without stalling the training loop.

    On a GPU the copies go into pinned buffers (kept for the next save) on a side stream; the
    training stream only waits for that stream on the GPU, so the next step queues at once and
    nothing touches the weights before they are copied. A plain ``.cpu()`` of a 1 GB model's
    state into fresh pageable memory stalled the loop for over a second on an H200.
    """

    def __init__(self) -> None:
        self._pinned: dict[str, torch.Tensor] = {}
        self._stream: torch.cuda.Stream | None = None

    def copy(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if tensor.device.type != "cuda":
            return tensor.to("cpu", copy=True).contiguous()
        buffer = self._pinned.get(name)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._pinned[name] = buffer
        buffer.copy_(tensor, non_blocking=True)
        return buffer

    def stream(self, device: torch.device) -> torch.cuda.Stream | None:
        if device.type != "cuda":
            return None
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        return self._stream


def snapshot(
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    buffers: HostBuffers | None = None,
) -> Snapshot:
    """Copy weights, optimiser moments and every RNG state to host memory, as of now.

    Tensors that share storage (tied embeddings) are stored once, under the first name, as
    ``safetensors.torch.save_model`` does; ``load_model`` restores the aliases.
    """
    buffers = buffers if buffers is not None else HostBuffers()
    device = next(model.parameters()).device
    side = buffers.stream(device)
    weights: dict[str, torch.Tensor] = {}
    copied = None
    if side is not None:
        main = torch.cuda.current_stream(device)
        side.wait_stream(main)  # the copies see the finished step
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        for name, tensor in model.state_dict().items():
            storage = tensor.untyped_storage().data_ptr()
            key = (storage, tensor.storage_offset(), tuple(tensor.shape))
            if key not in seen:
                seen.add(key)
                weights[name] = buffers.copy(f"model.{name}", tensor)
        training, opt_json = _flatten_optimizer(optimizer.state_dict(), buffers)
    if side is not None:
        copied = side.record_event()
        main.wait_stream(side)  # nothing updates the weights before they are copied
    training.update(_torch_rng_tensors())
    return Snapshot(step, weights, training, _full_state(step, opt_json, state), copied)


def _full_state(step: int, opt_json: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "step": step,
        "optimizer": opt_json,
        "rng": {"python": random.getstate(), "numpy": _numpy_rng_state()},
        **state,
    }


def write_snapshot(root: Path, snap: Snapshot) -> Path:
    """Write a snapshot as the checkpoint for its step and drop older ones; returns its folder."""
    if snap.copied is not None:
        snap.copied.synchronize()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{snap.step:08d}"
    tmp = root / f"{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    save_file(snap.weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    save_file(snap.training, str(tmp / "training.safetensors"))
    names = ("model.safetensors", "training.safetensors")
    files = {name: sha256_file(tmp / name) for name in names}
    (tmp / "state.json").write_text(json.dumps({**snap.state, "files": files}, indent=1))
    for path in tmp.iterdir():
        fsync(path)
    if final.exists():  # a rerun of the same step (e.g. stop right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync(root)
    for old in root.glob("step_*"):
        if old != final and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write a complete checkpoint for ``step`` and drop older ones; returns its directory."""
    snap = snapshot(step=step, model=model, optimizer=optimizer, state=state)
    return write_snapshot(root, snap)


def save_checkpoint_state(
    root: Path,
    *,
    step: int,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    state: dict[str, Any],
) -> Path:
    """:func:`save_checkpoint` from state dicts already gathered (FSDP's full state dicts, on
    rank 0), whose optimiser state is keyed by parameter name instead of position."""
    buffers = HostBuffers()
    weights = {name: buffers.copy(name, t) for name, t in model_state.items()}
    training, opt_json = _flatten_optimizer(optimizer_state, buffers)
    training.update(_torch_rng_tensors())
    return write_snapshot(
        root, Snapshot(step, weights, training, _full_state(step, opt_json, state))
    )


class CheckpointWriter:
    """Saves checkpoints on a background thread, so training stalls only for the host copy.

    Hashing, writing and fsyncing a large model's checkpoint takes seconds to minutes; training
    goes on meanwhile. At most one write is in flight: a new save first waits for the last one.
    ``poll`` and ``wait`` return each finished checkpoint once (to be reported from the training
    thread) and re-raise a failed write, so a full disk still fails the run.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[Path] | None = None
        self._pending_step = 0
        self._buffers = HostBuffers()  # reused: the last write is done before the next copy

    def save(
        self,
        *,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
    ) -> tuple[int, Path] | None:
        """Snapshot now and write in the background; returns the previous save if it just ended."""
        finished = self.wait()
        snap = snapshot(
            step=step, model=model, optimizer=optimizer, state=state, buffers=self._buffers
        )
        self._pending, self._pending_step = self._pool.submit(write_snapshot, self.root, snap), step
        return finished

    def poll(self) -> tuple[int, Path] | None:
        """The save that has finished since the last call, if any; never blocks."""
        if self._pending is None or not self._pending.done():
            return None
        return self.wait()

    def wait(self) -> tuple[int, Path] | None:
        """Block until the write in flight is on disk; returns (step, folder) or None."""
        if self._pending is None:
            return None
        pending, self._pending = self._pending, None
        return self._pending_step, pending.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint whose files match their recorded sha256, or None."""
    candidates = sorted((p for p in root.glob("step_*") if ".tmp-" not in p.name), reverse=True)
    for path in candidates:
        try:
            state = json.loads((path / "state.json").read_text())
            if state.get("format") != _FORMAT:
                continue
            if all(sha256_file(path / name) == sha for name, sha in state["files"].items()):
                return Checkpoint(int(state["step"]), path, state)
        except (OSError, ValueError, KeyError):
            continue  # unreadable: fall back to an older one, if any survived
    return None


def announce_restored(hooks: Hooks, checkpoint: Checkpoint, **extra: Any) -> None:
    """The "resumed" event, and the checkpoint's own event again: events are written in
    batches, so an attempt killed right after saving it may never have recorded it, and the
    job's checkpoint list would lack the step it resumed from. For the same reason the event
    carries the progress reports the checkpoint recorded (``reports``, :class:`ReportLog`), for
    the job layer to write again; the stage's own ``on_progress`` reports only steps it runs."""
    hooks.on_event("resumed", {"step": checkpoint.step})
    event = {"step": checkpoint.step, "path": str(checkpoint.path), **extra, "restored": True}
    reports = ReportLog(checkpoint.state).state()["reports"]
    hooks.on_event("checkpoint", {**event, "reports": reports} if reports else event)


def restore_checkpoint(
    checkpoint: Checkpoint, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Load weights, optimiser and every RNG state back into the live objects."""
    device = next(model.parameters()).device
    load_model(model, str(checkpoint.path / "model.safetensors"), strict=True, device=str(device))
    tensors = load_file(str(checkpoint.path / "training.safetensors"))
    optimizer.load_state_dict(_optimizer_state(checkpoint.state, tensors))
    restore_rng(checkpoint)


def load_checkpoint_state(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the optimiser state as state dicts, on the CPU (what FSDP's
    ``set_model_state_dict`` / ``set_optimizer_state_dict`` take); RNG states are untouched."""
    tensors = load_file(str(checkpoint.path / "training.safetensors"))
    weights = load_file(str(checkpoint.path / "model.safetensors"))
    return weights, _optimizer_state(checkpoint.state, tensors)


def restore_rng(checkpoint: Checkpoint) -> None:
    """Python, numpy, torch and CUDA RNG states as they were when the checkpoint was saved."""
    rng = checkpoint.state["rng"]
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = rng["numpy"]
    numpy_state["state"]["key"] = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    # Only the RNG tensors: the optimiser moments in the same file may be gigabytes.
    with safe_open(str(checkpoint.path / "training.safetensors"), framework="pt") as f:
        torch.set_rng_state(f.get_tensor("rng.torch"))
        names = list(f.keys())  # a safetensors handle is not iterable
        cuda = sorted((k for k in names if k.startswith("rng.cuda.")), key=_rank_order)
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([f.get_tensor(k) for k in cuda])


def _rank_order(key: str) -> int:
    return int(key.rsplit(".", 1)[1])


def _optimizer_state(
    state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> dict[str, Any]:
    """The optimiser state dict back from its tensors and JSON parts (keys: positions or names)."""
    opt = state["optimizer"]
    opt_state: dict[int | str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            param, name = key.removeprefix("optimizer.").rsplit(".", 1)
            opt_state.setdefault(_param_key(param), {})[name] = value
    for key, value in opt["scalars"].items():
        param, name = key.rsplit(".", 1)
        opt_state.setdefault(_param_key(param), {})[name] = value
    return {"state": opt_state, "param_groups": opt["param_groups"]}


def _param_key(key: str) -> int | str:
    """A parameter's position (``optimizer.state_dict()``) or its name (FSDP's full state)."""
    return int(key) if key.isdigit() else key


def check_resumable(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    cosmetic: frozenset[str],
    same: Mapping[str, str],
) -> None:
    """Refuse to resume a run whose trajectory would differ from the checkpoint's.

    ``current["config"]`` must match the saved config in every field but the ``cosmetic`` ones
    (they change what is reported, never the trajectory), and each key of ``same`` (e.g. the
    tokenizer's hash, the number of training examples) must match; its value names it.

    Raises:
        PipelineError: ``train.checkpoint_mismatch``, naming what changed.
    """
    before, now = saved.get("config", {}), current["config"]
    changed = sorted(k for k in now if k not in cosmetic and before.get(k) != now[k])
    changed += [name for key, name in same.items() if saved.get(key) != current[key]]
    if changed:
        raise PipelineError(
            "train.checkpoint_mismatch",
            f"cannot resume: {', '.join(changed)} changed since the checkpoint was saved",
        )


def _flatten_optimizer(
    state_dict: Mapping[str, Any], buffers: HostBuffers
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and JSON-able values."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for key, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensor_key = f"optimizer.{key}.{name}"
                tensors[tensor_key] = buffers.copy(tensor_key, value)
            else:
                scalars[f"{key}.{name}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _torch_rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def _numpy_rng_state() -> dict[str, Any]:
    state = np.random.get_state(legacy=False)
    assert isinstance(state, dict)
    state["state"] = {**state["state"], "key": state["state"]["key"].tolist()}
    return state
