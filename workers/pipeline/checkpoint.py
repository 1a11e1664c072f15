"""Resumable training checkpoints and the Hugging Face export, written atomically, never pickled.

A checkpoint is a directory ``checkpoints/step_00000123/`` holding

- ``model.safetensors``: the weights (shared/tied tensors stored once);
- ``training.safetensors``: optimiser moments and the torch/CUDA RNG states;
- ``state.json``: everything else (step, config, data position, python/numpy RNG, optimiser
  hyper-parameters, grad-scaler state) plus the sha256 of both tensor files.

It is assembled in ``step_….tmp-<uuid>/`` and renamed into place in one ``os.replace``, so a
kill at any moment leaves either the previous checkpoint or the new one, never a partial
"latest"; leftovers ``*.tmp-*`` are removed at the next start. Loading goes through
``safetensors`` and ``json`` only: nothing a user can influence is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import PreTrainedModel

from workers.pipeline.types import PipelineError

_FORMAT = 1
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


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


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write a complete checkpoint for ``step`` and drop older ones; returns its directory."""
    return _write(
        root, step, lambda path: save_model(model, str(path)), optimizer.state_dict(), state
    )


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
    tensors = {name: t.detach().contiguous() for name, t in model_state.items()}
    return _write(root, step, lambda path: save_file(tensors, str(path)), optimizer_state, state)


def _write(
    root: Path,
    step: int,
    save_weights: Callable[[Path], None],
    optimizer_state: Mapping[str, Any],
    state: dict[str, Any],
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f"{final.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    save_weights(tmp / "model.safetensors")
    tensors, opt_json = _flatten_optimizer(optimizer_state)
    tensors.update(_torch_rng_tensors())
    save_file(tensors, str(tmp / "training.safetensors"))
    files = {name: _sha256(tmp / name) for name in ("model.safetensors", "training.safetensors")}
    full_state = {
        "format": _FORMAT,
        "step": step,
        "files": files,
        "optimizer": opt_json,
        "rng": {"python": random.getstate(), "numpy": _numpy_rng_state()},
        **state,
    }
    (tmp / "state.json").write_text(json.dumps(full_state, indent=1))
    for path in tmp.iterdir():
        _fsync(path)
    if final.exists():  # a rerun of the same step (e.g. stop right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    for old in root.glob("step_*"):
        if old != final and ".tmp-" not in old.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest checkpoint whose files match their recorded sha256, or None."""
    candidates = sorted((p for p in root.glob("step_*") if ".tmp-" not in p.name), reverse=True)
    for path in candidates:
        try:
            state = json.loads((path / "state.json").read_text())
            if state.get("format") != _FORMAT:
                continue
            if all(_sha256(path / name) == sha for name, sha in state["files"].items()):
                return Checkpoint(int(state["step"]), path, state)
        except (OSError, ValueError, KeyError):
            continue  # unreadable: fall back to an older one, if any survived
    return None


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
    saved: dict[str, Any], current: dict[str, Any], *, cosmetic: frozenset[str]
) -> None:
    """Refuse to resume under a different tokenizer or trajectory-changing config."""
    if saved.get("tokenizer_sha256") != current["tokenizer_sha256"]:
        raise PipelineError("train.checkpoint_mismatch", "the checkpoint used another tokenizer")
    before, now = saved["config"], current["config"]
    changed = sorted(k for k in now if k not in cosmetic and before.get(k) != now[k])
    if changed:
        raise PipelineError(
            "train.checkpoint_mismatch",
            f"cannot resume: {', '.join(changed)} differ from the checkpoint's config",
        )


def _flatten_optimizer(
    state_dict: Mapping[str, Any],
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and JSON-able values."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for key, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{key}.{name}"] = value.detach().cpu().contiguous()
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def export_hf(
    model: PreTrainedModel, *, tokenizer_dir: Path, output_dir: Path, special: dict[str, int]
) -> None:
    """Write a Hugging Face model directory: safetensors weights, config, generation config and
    the tokenizer files, loadable with ``from_pretrained`` offline and without custom code."""
    generation = model.generation_config
    generation.bos_token_id = special["bos"]
    generation.eos_token_id = special["eos"]
    generation.pad_token_id = special["pad"]
    # transformers 5 always writes safetensors (the safe_serialization flag is gone).
    model.save_pretrained(str(output_dir))
    for name in _TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copyfile(tokenizer_dir / name, output_dir / name)
