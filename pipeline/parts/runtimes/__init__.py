"""Runtimes: a model loaded for generation and scoring, in torch or in llama.cpp (see
:mod:`~pipeline.parts.runtimes.base`). :func:`load_runtime` picks the one a model folder needs."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.parts.runtimes.base import Runtime
from pipeline.parts.runtimes.llamacpp import LlamaCppRuntime
from pipeline.parts.runtimes.transformers import TransformersRuntime
from pipeline.types import PipelineError


def load_runtime(
    folder: Path,
    *,
    device: torch.device,
    max_length: int | None = None,
    batch_size: int = 1,
    threads: int = 1,
    adapter: Path | None = None,
) -> Runtime:
    """A Hugging Face folder in torch on ``device``, or a folder (or file) holding exactly one
    ``.gguf`` in llama.cpp with ``threads`` threads. ``max_length`` is the scoring window (None:
    the model's context, at most 2048); ``batch_size`` windows are scored at once in torch.
    ``adapter``: a peft adapter folder for the Hugging Face model in ``folder`` (its base).

    Raises:
        PipelineError: ``evaluate.model_format`` when the folder holds neither.
    """
    if folder.is_file() and folder.suffix == ".gguf":
        return LlamaCppRuntime.load(folder, max_length=max_length, threads=threads)
    if not (folder / "config.json").exists():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return LlamaCppRuntime.load(ggufs[0], max_length=max_length, threads=threads)
        raise PipelineError(
            "evaluate.model_format",
            "the model folder holds neither a Hugging Face model nor exactly one .gguf file",
        )
    return TransformersRuntime.load(
        folder, device=device, max_length=max_length, batch_size=batch_size, adapter=adapter
    )
