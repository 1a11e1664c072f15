"""The ``compare`` stage: every model's answer to every prompt, for blind side-by-side rating.

Answers are a runtime's seeded samples (:mod:`pipeline.parts.runtimes`: torch for a Hugging Face
folder, llama.cpp for a GGUF), as the evaluate stage's are: the seed is set right before each
answer, so an answer is the same whichever other prompts or models are in the comparison. Models
are loaded one at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from pipeline.configs.compare import MAX_PROMPT_CHARS, MAX_PROMPTS, CompareConfig
from pipeline.configs.evaluate import SampleOptions
from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.device import cpu_threads, inference_device
from pipeline.parts.runtimes import load_runtime
from pipeline.types import (
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

_CHUNK = 256  # SampleOptions' limit on prompts per call


@dataclass(frozen=True)
class CompareInputs:
    model_dirs: tuple[Path, ...]
    """One folder per model, in the comparison's order."""
    prompts: DatasetFile | None = None
    """Prompts as a dataset's texts (the first 500), when the config carries none."""


@dataclass(frozen=True)
class CompareResult:
    prompts: list[str] = field(default_factory=list)
    answers: list[list[str]] = field(default_factory=list)
    """``answers[m][p]``: model ``m``'s answer to prompt ``p``."""
    tokens: int = 0


def read_prompts(config: CompareConfig, file: DatasetFile | None) -> list[str]:
    if config.prompts:
        return list(config.prompts)
    if file is None:
        raise PipelineError("compare.no_prompts", "give prompts or a prompts dataset")
    texts = [t[:MAX_PROMPT_CHARS] for t in islice(_nonblank(iter_texts(file)), MAX_PROMPTS)]
    if not texts:
        raise PipelineError("dataset.empty", "the prompts dataset has no text")
    return texts


def _nonblank(texts: Any) -> Any:
    return (t for t in texts if t.strip())


def run_compare(
    config: CompareConfig, inputs: CompareInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> CompareResult:
    """Generate; writes ``answers.jsonl`` (one line per model and prompt) to the output folder.

    Raises:
        PipelineError: ``compare.no_prompts`` / ``dataset.empty`` when there is nothing to ask,
            ``evaluate.no_cuda`` when CUDA was asked for and is absent.
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    prompts = read_prompts(config, inputs.prompts)
    device = inference_device(config.device)
    threads = cpu_threads(config.threads)
    torch.set_num_threads(threads)
    answers: list[list[str]] = []
    tokens = 0
    total = len(inputs.model_dirs) * len(prompts)
    for folder in inputs.model_dirs:
        runtime = load_runtime(folder, device=device, threads=threads)
        try:
            texts: list[str] = []
            for start in range(0, len(prompts), _CHUNK):
                if hooks.should_stop():
                    raise StageCancelled()
                options = SampleOptions(
                    prompts=tuple(prompts[start : start + _CHUNK]),
                    seeds=(config.seed,),
                    max_new_tokens=config.max_tokens,
                    temperature=config.temperature,
                )
                for sample in runtime.samples(options, hooks.should_stop):
                    texts.append(sample["completion"])
                    tokens += int(sample["tokens"])
                done = len(answers) * len(prompts) + len(texts)
                hooks.on_progress(Progress(step=done, total=total, metrics={"tokens": tokens}))
            answers.append(texts)
        finally:
            runtime.close()
    out = paths.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with (out / "answers.jsonl").open("w", encoding="utf-8") as f:
        for m, texts in enumerate(answers):
            for p, text in enumerate(texts):
                f.write(json.dumps({"model": m, "prompt": p, "text": text}) + "\n")
    return CompareResult(prompts=prompts, answers=answers, tokens=tokens)
