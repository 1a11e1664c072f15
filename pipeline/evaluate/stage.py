"""``run_evaluate``: one model (Hugging Face or GGUF) against one or more evaluation datasets.

Order: read the evaluation documents → contamination against the training datasets (when given;
contaminated documents are reported and, if asked, left out) → perplexity per dataset → bias
probe → task items (:mod:`~pipeline.evaluate.tasks`) → samples. Products under ``output_dir``:
``report.json`` (every figure), and ``documents.jsonl`` (one line per scored document),
``bias_items.jsonl``, ``task_examples.jsonl`` and ``samples.jsonl`` when those ran.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from pipeline.configs.evaluate import EvaluateConfig
from pipeline.evaluate.bias import load_templates, parse_templates, probe
from pipeline.evaluate.contamination import find_overlap
from pipeline.evaluate.grader import Grader, GraderInputs
from pipeline.evaluate.perplexity import DocScore, Totals, encode_document
from pipeline.evaluate.tasks import run_task
from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.device import cpu_threads, inference_device
from pipeline.parts.runtimes import load_runtime
from pipeline.parts.runtimes.base import Runtime
from pipeline.types import (
    PRODUCT,
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

_DOCS_PER_STEP = 64


@dataclass(frozen=True)
class EvaluateInputs:
    model_dir: Path
    """The model: a Hugging Face folder (config, weights, tokenizer) or a folder holding one
    ``.gguf`` file (scored in llama.cpp with its embedded tokenizer); with ``adapter_dir``, the
    adapter's base."""
    datasets: tuple[DatasetFile, ...] = ()
    """Evaluation text: perplexity per dataset."""
    training: tuple[DatasetFile, ...] = ()
    """The model's training text (from its lineage), for the contamination check."""
    bias_templates: DatasetFile | None = None
    """A bias template file of the user's (JSONL, same format as the shipped set)."""
    task: DatasetFile | None = None
    """Task items (JSONL) scored as ``config.task`` says."""
    grader: GraderInputs | None = None
    """A score grader rating each generated answer of the task (a model or an endpoint)."""
    adapter_dir: Path | None = None
    """A peft adapter (a LoRA fine-tune or its checkpoint), merged onto ``model_dir``."""


@dataclass(frozen=True)
class EvaluateResult:
    model: dict[str, Any]
    perplexity: list[dict[str, Any]] = field(default_factory=list)
    contamination: list[dict[str, Any]] = field(default_factory=list)
    bias: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] | None = None
    task_examples_path: Path | None = field(default=None, metadata=PRODUCT)
    report_path: Path | None = field(default=None, metadata=PRODUCT)
    seconds: float = 0.0


def _documents(file: DatasetFile, limit: int | None) -> list[str]:
    texts: Iterator[str] = (t for t in iter_texts(file) if t.strip())
    return list(islice(texts, limit) if limit is not None else texts)


def _name(file: DatasetFile) -> str:
    return file.options.get("name", file.path.name)


def run_evaluate(
    config: EvaluateConfig, inputs: EvaluateInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> EvaluateResult:
    """Measure the model; see the module docstring for what is written where.

    Raises:
        PipelineError: ``evaluate.tokenizer_roundtrip`` when the tokenizer changes the text,
            ``evaluate.nothing_to_do`` when no dataset, probe or prompt was given,
            ``dataset.empty`` for an evaluation dataset without text, ``bias.templates`` for a
            malformed template file.
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    started = time.perf_counter()
    want_ppl = config.perplexity.enabled and bool(inputs.datasets)
    if not (want_ppl or config.bias.enabled or config.samples.prompts or inputs.task):
        raise PipelineError(
            "evaluate.nothing_to_do",
            "give a dataset or a task dataset, enable the bias probe or pass prompts",
        )
    threads = cpu_threads(config.threads)
    torch.set_num_threads(threads)
    runtime = load_runtime(
        inputs.model_dir,
        device=inference_device(config.device),
        max_length=config.perplexity.max_length,
        batch_size=config.perplexity.batch_size,
        threads=threads,
        adapter=inputs.adapter_dir,
    )
    try:
        return _evaluate(config, inputs, paths, hooks, runtime, started)
    finally:
        runtime.close()


def _evaluate(
    config: EvaluateConfig,
    inputs: EvaluateInputs,
    paths: RunPaths,
    hooks: Hooks,
    runtime: Runtime,
    started: float,
) -> EvaluateResult:
    want_ppl = config.perplexity.enabled and bool(inputs.datasets)
    out = paths.output_dir
    out.mkdir(parents=True, exist_ok=True)
    model_info = {**runtime.info, "prefix_token": runtime.prefix}
    max_length = runtime.scorer.max_length
    ppl: list[dict[str, Any]] = []
    contamination: list[dict[str, Any]] = []
    if want_ppl:
        with (out / "documents.jsonl").open("w", encoding="utf-8") as docs_out:
            for index, file in enumerate(inputs.datasets):
                texts = _documents(file, config.perplexity.max_documents)
                if not texts:
                    raise PipelineError("dataset.empty", f"{_name(file)} has no text to score")
                skip: frozenset[int] = frozenset()
                if inputs.training:
                    opts = config.contamination
                    overlap = find_overlap(
                        texts,
                        (t for f in inputs.training for t in iter_texts(f)),
                        opts.ngram,
                        hooks.should_stop,
                    )
                    contamination.append(
                        {
                            "dataset": _name(file),
                            **overlap.report(len(texts), opts.ngram, opts.exclude),
                        }
                    )
                    skip = overlap.contaminated if opts.exclude else frozenset()
                    if opts.exclude and len(skip) == len(texts):
                        raise PipelineError(
                            "evaluate.all_contaminated",
                            f"every document of {_name(file)} overlaps the training text",
                        )
                scores = _score_dataset(runtime, texts, skip, config, hooks, index)
                for doc, score in scores:
                    line = {"dataset": _name(file), "document": doc, **score.__dict__}
                    docs_out.write(json.dumps(line) + "\n")
                totals = Totals.of([s for _, s in scores])
                ppl.append(
                    {
                        "dataset": _name(file),
                        "windowing": config.perplexity.windowing,
                        "max_length": max_length,
                        # The stride used: never more than the window (then it is disjoint-like).
                        "stride": min(config.perplexity.stride, max_length)
                        if config.perplexity.windowing == "strided"
                        else None,
                        "excluded_documents": len(skip),
                        **totals.figures(),
                    }
                )
                hooks.on_event(
                    f"{_name(file)}: {ppl[-1]['bits_per_byte']:.4f} bits/byte",
                    {"dataset": _name(file), "bits_per_byte": ppl[-1]["bits_per_byte"]},
                )

    bias = None
    if config.bias.enabled:
        bias = _bias(runtime, config, inputs.bias_templates, out, hooks)
    if hooks.should_stop():
        raise StageCancelled()

    task, task_path = None, None
    if inputs.task is not None:
        task_path = out / "task_examples.jsonl"
        grader = None
        if inputs.grader is not None:
            device = inference_device(config.device)
            grader = Grader(inputs.grader, config.task, device=device, threads=config.threads)
        try:
            grade = grader.grade if grader is not None else None
            task = run_task(runtime, inputs.task, config.task, task_path, hooks, grade)
        finally:
            if grader is not None:
                grader.close()

    samples: list[dict[str, Any]] = []
    if config.samples.prompts:
        count = len(config.samples.prompts) * len(config.samples.seeds)
        hooks.on_event(f"sampling {count} generations", {"samples": count})
        samples = runtime.samples(config.samples, hooks.should_stop)
        with (out / "samples.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)

    seconds = time.perf_counter() - started
    report = {
        "model": model_info,
        "config": {"windowing": config.perplexity.windowing, "max_length": max_length},
        "perplexity": ppl,
        "contamination": contamination,
        "bias": bias,
        "samples": samples,
        "task": task,
        "seconds": seconds,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return EvaluateResult(
        model=model_info,
        perplexity=ppl,
        contamination=contamination,
        bias=bias,
        samples=samples,
        task=task,
        task_examples_path=task_path,
        report_path=out / "report.json",
        seconds=seconds,
    )


def _score_dataset(
    runtime: Runtime,
    texts: Sequence[str],
    skip: frozenset[int],
    config: EvaluateConfig,
    hooks: Hooks,
    index: int,
) -> list[tuple[int, DocScore]]:
    kept = [i for i in range(len(texts)) if i not in skip]
    scored: list[tuple[int, DocScore]] = []
    for step, b in enumerate(range(0, len(kept), _DOCS_PER_STEP)):
        if hooks.should_stop():
            raise StageCancelled()
        chunk = kept[b : b + _DOCS_PER_STEP]
        ids = [encode_document(runtime.encode, runtime.decode, texts[i]) for i in chunk]
        seqs = [[runtime.prefix, *doc] for doc in ids]
        nll = runtime.scorer.nll(seqs, config.perplexity.windowing, config.perplexity.stride)
        for i, doc, value in zip(chunk, ids, nll, strict=True):
            text = texts[i]
            scored.append(
                (i, DocScore(len(doc), len(text.encode("utf-8")), len(text.split()), value))
            )
        hooks.on_progress(
            Progress(step=step + 1, metrics={"dataset": float(index), "documents": len(scored)})
        )
    return scored


def _bias(
    runtime: Runtime,
    config: EvaluateConfig,
    templates: DatasetFile | None,
    out: Path,
    hooks: Hooks,
) -> dict[str, Any]:
    if templates is None:
        name, items = load_templates()
    else:
        with templates.path.open(encoding="utf-8") as f:
            name, items = _name(templates), parse_templates(f, _name(templates))

    def logprob(queries: Sequence[tuple[str, str]]) -> list[float]:
        seqs, scored = [], []
        for context, continuation in queries:
            # lm-eval's split: encode the whole, so the continuation's tokens are those the
            # model would really produce after this context.
            whole = runtime.encode(context + continuation)
            head = runtime.encode(context)
            if len(whole) <= len(head) or whole[: len(head)] != head:
                whole = head + runtime.encode(continuation)
            seqs.append([runtime.prefix, *whole])
            scored.append(len(whole) - len(head))
        return [-x for x in runtime.scorer.continuation_nll(seqs, scored)]

    def progress(done: int, total: int) -> None:
        # Items done of all items: the job's progress gets a total, so it shows an ETA.
        hooks.on_progress(Progress(step=done, total=total, metrics={"bias_items": float(done)}))
        if done < total and hooks.should_stop():
            raise StageCancelled()

    categories, per_item = probe(
        items,
        logprob,
        bootstrap_samples=config.bias.bootstrap_samples,
        permutations=config.bias.permutations,
        seed=config.bias.seed,
        on_progress=progress,
    )
    with (out / "bias_items.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(x) + "\n" for x in per_item)
    return {"templates": name, "items": len(items), "categories": categories}
