"""The ``quantize`` stage: a Hugging Face Llama-family model in, GGUF files or a GPTQ folder out,
each checked against the full-precision model before it is handed back.

``run_quantize`` wires the parts; ``_gguf`` writes and checks every requested GGUF type;
``_gptq`` quantises with gptqmodel and measures it against round-to-nearest. Everything measured
lands in ``report.json`` next to the outputs and in the result.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel

from pipeline.configs.quantize import DEFAULT_MAX_PERPLEXITY_RATIO, QuantizeConfig
from pipeline.parts.device import cpu_threads
from pipeline.parts.hf import load_causal_lm, load_tokenizer
from pipeline.parts.runtimes.llamacpp import loaded, quantize_file
from pipeline.parts.runtimes.transformers import logits_fn
from pipeline.quantize import gptq as gptq_lib
from pipeline.quantize.gguf_export import (
    FLOAT_TYPES,
    ArchInfo,
    read_arch,
    write_gguf,
)
from pipeline.quantize.measure import (
    EvalText,
    Perplexity,
    compare_logits,
    eval_text,
    perplexity,
    perplexity_ratio,
)
from pipeline.quantize.vocab import GgufVocab, read_vocab
from pipeline.types import (
    PRODUCT,
    DatasetFile,
    Hooks,
    PipelineError,
    Progress,
    RunPaths,
    StageCancelled,
)

_EXACT_TYPES = ("f32", "f16")  # must match torch's logits, not only its perplexity


@dataclass(frozen=True)
class QuantizeInputs:
    model_dir: Path
    """A Hugging Face model folder (config.json, safetensors, tokenizer.json)."""
    heldout: DatasetFile | None = None
    """Text for perplexity and bits per byte; without it the shipped default text is scored."""
    calibration: DatasetFile | None = None
    """GPTQ calibration text (required for format gptq)."""


@dataclass(frozen=True)
class GgufReport:
    type: str
    path: Path = field(metadata=PRODUCT)
    size_bytes: int
    bits_per_weight: float
    compression_ratio: float
    """Full-precision safetensors bytes / this file's bytes."""
    load_seconds: float
    tokens_per_s: float | None
    """llama.cpp CPU greedy generation speed at ``GgufOptions.threads`` threads."""
    tokenizer_match: bool
    max_logit_delta: float
    top1_agreement: float
    perplexity: float
    perplexity_ratio: float
    perplexity_ratio_low: float
    perplexity_ratio_high: float
    """The ratio's 95% interval (paired block bootstrap over the scored tokens): the check
    passes when ``perplexity_ratio_low`` is within the type's limit."""
    bits_per_byte: float


@dataclass(frozen=True)
class GptqReport:
    output_dir: Path = field(metadata=PRODUCT)
    bits: int
    group_size: int
    size_bytes: int
    bits_per_weight: float
    compression_ratio: float
    load_seconds: float
    perplexity: float
    rtn_perplexity: float
    perplexity_increase: float
    rtn_perplexity_increase: float


@dataclass(frozen=True)
class QuantizeResult:
    format: str
    architecture: str
    params: int
    reference_perplexity: float
    reference_bits_per_byte: float
    eval_tokens: int
    eval_source: str
    """heldout (the job's dataset) or builtin (the shipped default_eval.txt)."""
    gguf: tuple[GgufReport, ...]
    gptq: GptqReport | None
    report_path: Path = field(metadata=PRODUCT)


@dataclass(frozen=True)
class _Source:
    info: ArchInfo
    model: PreTrainedModel
    params: int
    weight_bytes: int
    name: str
    tokenizer: Any
    reference: Perplexity
    text: EvalText


def run_quantize(
    config: QuantizeConfig,
    inputs: QuantizeInputs,
    paths: RunPaths,
    hooks: Hooks = Hooks(),
) -> QuantizeResult:
    """Quantise ``inputs.model_dir`` and check every output against it; write the outputs and
    ``report.json`` to ``paths.output_dir``.

    Raises:
        PipelineError: ``quantize.unsupported_model`` / ``quantize.unsupported_tokenizer`` (not a
            Llama-family model or tokenizer llama.cpp reproduces), ``quantize.check_failed`` (an
            output failed its check; nothing is left in output_dir), ``quantize.no_calibration``,
            ``quantize.bad_group_size``, ``dataset.too_small``.
    """
    gguf = replace(config.gguf, threads=cpu_threads(config.gguf.threads))
    config = replace(config, gguf=gguf)
    # Refuse an unsupported model or tokenizer before loading anything heavy.
    info = read_arch(inputs.model_dir)
    vocab = read_vocab(inputs.model_dir, info.vocab_size) if config.format == "gguf" else None
    tokenizer = load_tokenizer(inputs.model_dir)
    model = load_causal_lm(inputs.model_dir, dtype=torch.float32)
    cast(torch.nn.Module, model).eval()  # transformers' typing of eval is missing
    window = min(config.eval_window, info.context_length)
    text = eval_text(tokenizer, inputs.heldout, max_tokens=config.eval_tokens, window=window)
    reference = perplexity(logits_fn(model), text)
    source = _Source(
        info=info,
        model=model,
        params=sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        weight_bytes=sum(f.stat().st_size for f in inputs.model_dir.glob("*.safetensors")),
        name=inputs.model_dir.name,
        tokenizer=tokenizer,
        reference=reference,
        text=text,
    )
    hooks.on_event(
        "full precision measured",
        {"perplexity": reference.perplexity, "bits_per_byte": reference.bits_per_byte},
    )
    try:
        if vocab is not None:
            reports: tuple[GgufReport, ...] = _gguf(config, vocab, paths, hooks, source)
            gptq_report = None
        else:
            reports, gptq_report = (), _gptq(config, inputs, paths, hooks, source)
    except (PipelineError, StageCancelled):
        _clear(paths.output_dir)  # a failed check leaves nothing to register
        raise
    result = QuantizeResult(
        format=config.format,
        architecture=info.hf_name,
        params=source.params,
        reference_perplexity=reference.perplexity,
        reference_bits_per_byte=reference.bits_per_byte,
        eval_tokens=reference.tokens,
        eval_source=text.source,
        gguf=reports,
        gptq=gptq_report,
        report_path=paths.output_dir / "report.json",
    )
    report = {"config": asdict(config), **asdict(result)}
    result.report_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return result


def _clear(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


def _gguf(
    config: QuantizeConfig,
    vocab: GgufVocab,
    paths: RunPaths,
    hooks: Hooks,
    source: _Source,
) -> tuple[GgufReport, ...]:
    info, options = source.info, config.gguf
    state = source.model.state_dict()
    name = source.name
    f32_path = paths.work_dir / "model-f32.gguf"
    if any(t not in FLOAT_TYPES for t in options.types):  # llama.cpp quantises from f32
        write_gguf(state, info, vocab, f32_path, "f32", name=name)
    prompts = [source.tokenizer(p, add_special_tokens=False)["input_ids"] for p in config.prompts]
    reference = [logits_fn(source.model)(p) for p in prompts]
    reports = []
    for step, kind in enumerate(options.types, start=1):
        if hooks.should_stop():
            raise StageCancelled
        out = paths.output_dir / f"model-{kind}.gguf"
        if kind in FLOAT_TYPES:
            write_gguf(state, info, vocab, out, kind, name=name)
        else:
            quantize_file(f32_path, out, kind, threads=options.threads)
        report = _check_gguf(config, source, out, kind, prompts, reference)
        reports.append(report)
        hooks.on_progress(
            Progress(
                step,
                len(options.types),
                {
                    f"{kind}_perplexity_ratio": report.perplexity_ratio,
                    f"{kind}_bits_per_weight": report.bits_per_weight,
                },
            )
        )
    f32_path.unlink(missing_ok=True)
    return tuple(reports)


def _check_gguf(
    config: QuantizeConfig,
    source: _Source,
    path: Path,
    kind: str,
    prompts: list[list[int]],
    reference: list[Any],
) -> GgufReport:
    """Load ``path`` in llama.cpp and measure it; raise when it fails its check."""
    options = config.gguf
    n_ctx = max(config.eval_window, max(len(p) for p in prompts) + options.generation_tokens + 1)
    n_ctx = min(n_ctx, source.info.context_length)
    with loaded(path, n_ctx=n_ctx, threads=options.threads) as llm:
        tokenizer_match = all(
            llm.tokenize(text) == ids for text, ids in zip(config.prompts, prompts, strict=True)
        )
        agreement = compare_logits(reference, [llm.logits(p) for p in prompts])
        ppl = perplexity(llm.logits, source.text)
        # Short-context models generate fewer tokens rather than none.
        n_gen = min(options.generation_tokens, n_ctx - len(prompts[0]) - 1)
        speed = llm.generation_speed(prompts[0], n_gen) if n_gen >= 8 else None
        load_seconds = llm.load_seconds
    ratio = perplexity_ratio(source.reference, ppl, seed=config.seed)
    size = path.stat().st_size
    report = GgufReport(
        type=kind,
        path=path,
        size_bytes=size,
        bits_per_weight=_tensor_bits_per_weight(path),
        compression_ratio=source.weight_bytes / size,
        load_seconds=load_seconds,
        tokens_per_s=speed,
        tokenizer_match=tokenizer_match,
        max_logit_delta=agreement.max_abs_delta,
        top1_agreement=agreement.top1_agreement,
        perplexity=ppl.perplexity,
        perplexity_ratio=ratio.ratio,
        perplexity_ratio_low=ratio.low,
        perplexity_ratio_high=ratio.high,
        bits_per_byte=ppl.bits_per_byte,
    )
    problems = []
    if not tokenizer_match:
        problems.append("llama.cpp tokenizes the prompts differently from the HF tokenizer")
    if kind in _EXACT_TYPES and agreement.max_abs_delta > options.max_logit_delta:
        problems.append(
            f"logits differ by {agreement.max_abs_delta:.4g} > {options.max_logit_delta:g}"
        )
    if kind in _EXACT_TYPES and agreement.top1_agreement < 1.0:
        problems.append(f"top-1 agreement {agreement.top1_agreement:.1%} < 100%")
    limit = options.max_perplexity_ratio.get(kind, DEFAULT_MAX_PERPLEXITY_RATIO[kind])
    # The figure is a measurement on a finite text: fail only when even the interval's lower
    # end is over the limit, so a correct file is not refused for the text's noise while a
    # broken one (whose whole interval sits far above) still is. NaN fails too.
    if not ratio.low <= limit:
        problems.append(
            f"perplexity ratio {ratio.ratio:.4f} (95% interval {ratio.low:.4f}-{ratio.high:.4f})"
            f" > {limit:g}"
        )
    if problems:
        raise PipelineError(
            "quantize.check_failed", f"the {kind} GGUF failed its check: " + "; ".join(problems)
        )
    return report


def _tensor_bits_per_weight(path: Path) -> float:
    """Bits of tensor data per weight (metadata such as the vocabulary not counted)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    n_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    n_elements = sum(int(t.n_elements) for t in reader.tensors)
    return 8 * n_bytes / n_elements


def _gptq(
    config: QuantizeConfig,
    inputs: QuantizeInputs,
    paths: RunPaths,
    hooks: Hooks,
    source: _Source,
) -> GptqReport:
    options = config.gptq
    if inputs.calibration is None:
        raise PipelineError("quantize.no_calibration", "GPTQ needs a calibration dataset")
    gptq_lib.check_group_size(source.model, options)
    rtn = perplexity(logits_fn(gptq_lib.rtn_model(source.model, options)), source.text)
    hooks.on_event("round-to-nearest measured", {"perplexity": rtn.perplexity})
    windows = gptq_lib.calibration_windows(
        source.tokenizer, inputs.calibration, options, config.seed
    )
    gptq_lib.run_gptq(
        inputs.model_dir,
        options,
        windows,
        paths.output_dir,
        work_dir=paths.work_dir,
        threads=config.gguf.threads,
    )
    started = time.perf_counter()
    quantised = load_causal_lm(paths.output_dir, dtype=None, device_map="cpu")
    load_seconds = time.perf_counter() - started
    cast(torch.nn.Module, quantised).eval()
    got = perplexity(logits_fn(quantised), source.text)
    size = sum(f.stat().st_size for f in paths.output_dir.glob("*.safetensors"))
    base = source.reference.perplexity
    report = GptqReport(
        output_dir=paths.output_dir,
        bits=options.bits,
        group_size=options.group_size,
        size_bytes=size,
        bits_per_weight=8 * size / source.params,
        compression_ratio=source.weight_bytes / size,
        load_seconds=load_seconds,
        perplexity=got.perplexity,
        rtn_perplexity=rtn.perplexity,
        perplexity_increase=got.perplexity - base,
        rtn_perplexity_increase=rtn.perplexity - base,
    )
    hooks.on_progress(Progress(1, 1, {"gptq_perplexity": got.perplexity}))
    return report
