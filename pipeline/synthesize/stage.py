"""The ``synthesize`` stage: a teacher model writes a training dataset, checked for the three
risks of synthetic data before it is kept.

Recipe: read the prompts (or seed instructions) → build the check indexes (evaluation n-grams,
the source's character spans) → load the teacher and generate in the configured mode
(:mod:`pipeline.synthesize.modes`; pairs ranked by :mod:`pipeline.synthesize.ranking`) → run
every record through the checks (:mod:`pipeline.synthesize.checks`: regurgitation, PII,
contamination, bias figures) → write ``synthetic.jsonl`` and ``report.json`` (to ``*.tmp``,
renamed only when the run succeeds).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.evaluate.bias import load_templates
from pipeline.parts.datasets.formats import iter_texts
from pipeline.parts.device import cpu_threads, inference_device
from pipeline.parts.endpoints import Endpoint
from pipeline.parts.runtimes import load_runtime
from pipeline.synthesize.checks import EvalGrams, RiskChecks, SpanIndex, TermCounts, group_terms
from pipeline.synthesize.modes import (
    Prompt,
    Synthetic,
    Teacher,
    distill,
    read_prompts,
    sample_answers,
    self_instruct,
)
from pipeline.synthesize.ranking import preference_pairs
from pipeline.synthesize.remote import RemoteTeacher
from pipeline.types import PRODUCT, DatasetFile, Hooks, PipelineError, RunPaths


@dataclass(frozen=True)
class SynthesizeInputs:
    teacher_dir: Path | None
    """The teacher: a Hugging Face folder or a folder holding one GGUF (None: ``endpoint``)."""
    prompts: DatasetFile
    """Prompts to answer (``distill``, ``preferences``) or seed instructions (``self_instruct``)."""
    judge_dir: Path | None = None
    """``preferences`` with ``judge`` ranking: the judge model (None: the teacher judges)."""
    eval: tuple[DatasetFile, ...] = ()
    """Evaluation datasets no synthetic record may overlap (contamination check)."""
    source: DatasetFile | None = None
    """Text the generations must not copy long spans of (the regurgitation check)."""
    teacher_id: str = ""
    """How provenance names the teacher (the registry's model id)."""
    endpoint: Endpoint | None = None
    """The teacher as an external endpoint (its key is never written anywhere)."""
    teacher_adapter: Path | None = None
    """A peft adapter put on ``teacher_dir`` (then the adapter's base)."""
    judge_adapter: Path | None = None
    """A peft adapter put on ``judge_dir`` (then the adapter's base)."""
    secret: str = ""
    """The name of the tenant secret ``endpoint`` came from: provenance names the teacher by it
    and the endpoint's model."""
    judge_id: str | None = None
    prompts_id: str = ""
    """How provenance names the prompt dataset."""


@dataclass(frozen=True)
class SynthesizeResult:
    dataset_path: Path = field(metadata=PRODUCT)
    report_path: Path = field(metadata=PRODUCT)
    mode: str
    record_type: str
    """``chat`` or ``preference``."""
    prompts: int
    generations: int
    tokens: int
    records_out: int
    skipped: dict[str, int] = field(default_factory=dict)
    """Records never made: long prompts, empty answers, similar or unfit instructions, tied
    pairs."""
    removed: dict[str, int] = field(default_factory=dict)
    """Records made and then removed by the checks: contaminated, regurgitated."""
    checks: dict[str, Any] = field(default_factory=dict)
    """The three checks' figures (also in the report kept with the dataset)."""


def run_synthesize(
    config: SynthesizeConfig, inputs: SynthesizeInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> SynthesizeResult:
    """Generate, check and write the synthetic dataset.

    Raises:
        PipelineError: ``dataset.empty`` (no prompts), ``synthesize.no_reference`` (reference
            ranking without answers), ``synthesize.nothing_left`` (every record was skipped or
            removed), ``evaluate.no_cuda`` / ``evaluate.model_format`` (the teacher),
            ``synthesize.endpoint_refused`` / ``_unreachable`` / ``_failed`` (an endpoint teacher).
        StageCancelled: ``hooks.should_stop`` answered True between generations.
    """
    skipped: Counter[str] = Counter()
    prompts = read_prompts(inputs.prompts, config.max_prompts, skipped)
    checks = _checks(config, inputs, hooks)
    for p in prompts:
        checks.bias_prompts.add(p.text)
    device = inference_device(config.device)
    threads = cpu_threads(config.threads)
    torch.set_num_threads(threads)
    base = {
        "mode": config.mode,
        "teacher": _teacher(inputs),
        "source": {"dataset": inputs.prompts_id},
        "sampling": {"temperature": config.temperature, "top_p": config.top_p,
                     "max_new_tokens": config.max_new_tokens,
                     "prompt_template": config.prompt_template,
                     "chat_template": config.chat_template},
    }  # fmt: skip
    teacher = _teacher_of(config, inputs, hooks, device, _total(config, prompts))
    try:
        made = list(_generate(config, inputs, teacher, prompts, base, skipped, hooks, device))
    finally:
        teacher.close()
    out = paths.output_dir
    out.mkdir(parents=True, exist_ok=True)
    dataset, report_path = out / "synthetic.jsonl", out / "report.json"
    removed: Counter[str] = Counter()
    tmp = _tmp(dataset)
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in made:
                texts, generated = record.texts()
                verdict = checks.apply(texts, generated)
                if verdict.removed is not None:
                    removed[verdict.removed] += 1
                    continue
                f.write(json.dumps(record.to_json(verdict.texts), ensure_ascii=False) + "\n")
        records_out = len(made) - removed.total()
        if records_out == 0:
            raise PipelineError(
                "synthesize.nothing_left", "every synthetic record was skipped or removed"
            )
        figures = checks.report()
        hooks.on_event(
            "synthetic dataset checked",
            {"records_out": records_out, "removed": dict(removed),
             "pii_scrubbed": figures["privacy"]["pii_scrubbed"]},
        )  # fmt: skip
        result = SynthesizeResult(
            dataset_path=dataset, report_path=report_path, mode=config.mode,
            record_type="preference" if config.mode == "preferences" else "chat",
            prompts=len(prompts), generations=teacher.generations, tokens=teacher.tokens,
            records_out=records_out, skipped=dict(skipped), removed=dict(removed), checks=figures,
        )  # fmt: skip
        report = {"teacher": _teacher(inputs), "judge": inputs.judge_id,
                  "prompts_dataset": inputs.prompts_id, "config_seed": config.seed,
                  **{k: v for k, v in vars(result).items() if not isinstance(v, Path)}}  # fmt: skip
        _tmp(report_path).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        os.replace(tmp, dataset)
        os.replace(_tmp(report_path), report_path)
    finally:
        tmp.unlink(missing_ok=True)
        _tmp(report_path).unlink(missing_ok=True)
    return result


def _teacher(inputs: SynthesizeInputs) -> str | dict[str, str]:
    if inputs.endpoint is None:
        return inputs.teacher_id
    return {"secret": inputs.secret, "endpoint_model": inputs.endpoint.model}


def _teacher_of(
    config: SynthesizeConfig,
    inputs: SynthesizeInputs,
    hooks: Hooks,
    device: torch.device,
    total: int,
) -> Teacher:
    if inputs.endpoint is not None:
        remote = RemoteTeacher(inputs.endpoint, config)
        return Teacher(None, config, hooks, total=total, remote=remote)
    if inputs.teacher_dir is None:
        raise PipelineError("synthesize.no_teacher", "give a teacher model or an endpoint")
    runtime = load_runtime(
        inputs.teacher_dir, device=device, threads=cpu_threads(config.threads),
        adapter=inputs.teacher_adapter,
    )  # fmt: skip
    return Teacher(runtime, config, hooks, total=total)


def _checks(config: SynthesizeConfig, inputs: SynthesizeInputs, hooks: Hooks) -> RiskChecks:
    cfg = config.checks
    grams = None
    if inputs.eval:
        texts = (t for file in inputs.eval for t in iter_texts(file))
        grams = EvalGrams.build(texts, cfg.contamination_ngram)
    spans = None
    if inputs.source is not None:
        spans = SpanIndex.build(
            iter_texts(inputs.source), cfg.regurgitation_chars, hooks.should_stop
        )
        if spans.truncated:
            message = f"regurgitation checked against the source's first {spans.chars:,} characters"
            hooks.on_event(message, {"source_chars_indexed": spans.chars}, "warn")
    bias_set, items = load_templates()
    terms = group_terms(items)
    return RiskChecks(cfg, grams, spans, TermCounts(terms), TermCounts(terms), bias_set)


def _total(config: SynthesizeConfig, prompts: list[Prompt]) -> int:
    if config.mode == "distill":
        return len(prompts)
    if config.mode == "preferences":
        return len(prompts) * config.samples
    return config.attempts + config.num_instructions


def _generate(
    config: SynthesizeConfig,
    inputs: SynthesizeInputs,
    teacher: Teacher,
    prompts: list[Prompt],
    base: dict[str, Any],
    skipped: Counter[str],
    hooks: Hooks,
    device: torch.device,
) -> Iterator[Synthetic]:
    if config.mode == "distill":
        yield from distill(teacher, prompts, base, skipped)
        return
    if config.mode == "self_instruct":
        yield from self_instruct(teacher, prompts, base, skipped)
        return
    asked = {p.text: teacher.question(p.text) for p in prompts}  # before the teacher is closed
    ask = asked.__getitem__
    samples = sample_answers(teacher, prompts)
    if config.ranking != "judge":
        yield from preference_pairs(config, prompts, samples, None, ask, base, skipped, hooks)
        return
    if inputs.judge_dir is None:  # the teacher judges its own answers
        if teacher.runtime is None:
            raise PipelineError(
                "synthesize.no_judge", "an endpoint teacher cannot judge: name a judge model"
            )
        base = {**base, "judge": _teacher(inputs)}
        yield from preference_pairs(
            config, prompts, samples, teacher.runtime, ask, base, skipped, hooks
        )
        return
    teacher.close()  # one model in memory at a time
    judge = load_runtime(
        inputs.judge_dir, device=device, threads=cpu_threads(config.threads),
        adapter=inputs.judge_adapter,
    )  # fmt: skip
    try:
        base = {**base, "judge": inputs.judge_id}
        yield from preference_pairs(config, prompts, samples, judge, ask, base, skipped, hooks)
    finally:
        judge.close()


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")
