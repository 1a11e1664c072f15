"""Model import: unpack an uploaded ``.tar``/``.tar.gz``/``.zip`` of a Hugging Face model folder
safely and prove it is a causal LM this service can load without running anyone's code.

The archive is hostile until proven otherwise. Members are checked by name and type before a
byte is written (no absolute paths, no ``..``, no links or device files), the bytes written are
counted as they stream (a declared size may lie), and everything lands in one fresh folder.
Weights must be safetensors: a pickle (``.bin``, ``.pt``, ``.pkl``...) can execute code when
loaded, so it is refused by name and by content and never opened. ``config.json`` must name an
architecture transformers has built in, with no ``auto_map``, and loading always passes
``trust_remote_code=False``. A ``quantization_config`` is kept, dropped or refused here, from the
weights themselves (``quantization.py``); the archive checks live in ``archives.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import pickletools
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.configs.finetune import ModelImportConfig
from pipeline.import_model import quantization
from pipeline.import_model.archives import extract_archive
from pipeline.types import PRODUCT, Hooks, PipelineError, RetryableError, RunPaths, StageCancelled

log = logging.getLogger(__name__)
PICKLE_SUFFIXES = frozenset(
    {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz"}
)
# .csv: gptqmodel writes its quant_log.csv beside a GPTQ model (data, never loaded).
ALLOWED_SUFFIXES = frozenset(
    {".json", ".safetensors", ".txt", ".model", ".jinja", ".md", ".tiktoken", ".gitattributes"}
    | {".csv"}
)
_PICKLE_SAMPLE = 1 << 20
# The most a config.json may declare, checked before transformers builds a module: even on the
# meta device 20,000 layers or a huge vocabulary cost minutes and memory. Generous for real LMs.
CONFIG_LIMITS = {
    "num_hidden_layers": 512,
    "hidden_size": 65_536,
    "intermediate_size": 524_288,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "head_dim": 4_096,
    "vocab_size": 2_097_152,
    "max_position_embeddings": 16_777_216,
    "num_local_experts": 1_024,
    "num_experts": 1_024,
}


@dataclass(frozen=True)
class ModelImportInputs:
    archive: Path


@dataclass(frozen=True)
class ModelImportResult:
    model_dir: Path = field(metadata=PRODUCT)
    architecture: str
    model_type: str
    parameters: int
    vocab_size: int
    has_chat_template: bool
    forward_checked: bool
    format: str
    """huggingface, or gptq for a GPTQ model (as gptqmodel writes it)."""
    quantization_dropped: str | None
    """The method of a stale ``quantization_config`` (full-precision weights) removed from the
    stored config.json; None when there was none to drop."""
    files: int
    bytes: int


def run_model_import(
    config: ModelImportConfig,
    inputs: ModelImportInputs,
    paths: RunPaths,
    hooks: Hooks = Hooks(),
) -> ModelImportResult:
    """Extract ``inputs.archive`` to ``paths.output_dir/model`` and validate it.

    Raises:
        PipelineError: ``model.unsafe_archive`` (path escape, link, device file, bomb, too many
            files), ``model.archive_too_many_entries``, ``model.archive_header_too_large``,
            ``model.archive_too_large`` (a declared size over the limit),
            ``model.storage_quota_exceeded``, ``model.bad_archive``
            (not a readable tar/zip), ``model.pickle_refused``, ``model.remote_code``,
            ``model.unexpected_file``, ``model.no_config``, ``model.config_<field>_too_large``,
            ``model.unsupported_architecture``,
            ``model.no_weights``, ``model.weights_mismatch``, ``model.unsupported_quantization``,
            ``model.tokenizer_invalid``, ``model.forward_failed``, ``model.check_failed`` (any
            other error while checking: the model must end ``failed``, never stay unchecked).
    """
    try:
        return _import(config, inputs, paths, hooks)
    except (PipelineError, StageCancelled, RetryableError):
        raise
    except Exception as exc:
        # The exception's text (often a server path) is for the worker's log, not the tenant.
        log.exception("model import failed unexpectedly")
        raise _fail(
            "model.check_failed",
            f"the model could not be checked ({type(exc).__name__}); the server log has details",
        ) from exc


def _import(
    config: ModelImportConfig, inputs: ModelImportInputs, paths: RunPaths, hooks: Hooks
) -> ModelImportResult:
    target = paths.output_dir / "model"
    staging = paths.work_dir / f"extract.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        files, size = extract_archive(inputs.archive, staging, config)
        root = _single_root(staging)
        check_files(root)
        hooks.on_event("extracted", {"files": files, "bytes": size})
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(root), str(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    info = validate_model_dir(target, config)
    return ModelImportResult(target, *info, files=files, bytes=size)


def _fail(code: str, message: str) -> PipelineError:
    return PipelineError(code, message)


def _single_root(folder: Path) -> Path:
    """Archives often hold one top folder (``my-model/config.json``): use it as the root."""
    entries = [p for p in folder.iterdir() if not p.name.startswith("__MACOSX")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def check_files(root: Path) -> None:
    """Refuse pickles (by suffix and by content), code, and anything not a model file."""
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root)
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise _fail(
                "model.pickle_refused",
                f"{rel} is a pickle-based weight file; upload safetensors only "
                "(convert with safetensors' convert script); it was not loaded",
            )
        if suffix == ".py":
            raise _fail("model.remote_code", f"{rel}: custom model code is not accepted")
        with path.open("rb") as f:
            head = f.read(_PICKLE_SAMPLE)
        if suffix != ".safetensors" and _looks_pickled(head):
            raise _fail("model.pickle_refused", f"{rel} holds pickled data; it was not loaded")
        if suffix not in ALLOWED_SUFFIXES and suffix != "":
            raise _fail("model.unexpected_file", f"{rel}: unexpected file type {suffix!r}")


def _looks_pickled(head: bytes) -> bool:
    """Protocols 2-5 start with PROTO (0x80) and the version; torch.save writes a zip; protocols
    0 and 1 have no marker, so the start of the file is disassembled (never run): a pickle is a
    run of valid opcodes that reaches STOP."""
    if (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5) or head.startswith(b"PK"):
        return True
    try:
        for opcode, _arg, _pos in pickletools.genops(head):
            if opcode.name == "STOP":
                return True
    except Exception:  # any malformed byte: not a pickle
        return False
    return False


def validate_model_dir(
    folder: Path, config: ModelImportConfig
) -> tuple[str, str, int, int, bool, bool, str, str | None]:
    """(architecture, model_type, parameters, vocab size, has chat template, forward run, format,
    dropped quantisation method)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import (  # type: ignore[attr-defined]
        CONFIG_MAPPING_NAMES,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from pipeline.parts.hf import load_tokenizer

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise _fail("model.no_config", "config.json is missing from the model folder")
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as exc:
        raise _fail("model.no_config", f"config.json is not valid JSON: {exc}") from exc
    if "auto_map" in raw:
        raise _fail("model.remote_code", "config.json has auto_map: custom code is not accepted")
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if (
        model_type not in CONFIG_MAPPING_NAMES
        or not architectures
        or architectures[0] not in causal
    ):
        raise _fail(
            "model.unsupported_architecture",
            f"{architectures or model_type!r} is not a causal LM architecture built into "
            "transformers",
        )
    check_config_limits(raw)
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file() and "auto_map" in json.loads(tok_config.read_text()):
        raise _fail("model.remote_code", "tokenizer_config.json has auto_map (custom code)")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise _fail("model.no_weights", "no .safetensors weights in the model folder")
    try:
        tokenizer = load_tokenizer(folder)
    except PipelineError as exc:
        raise _fail("model.tokenizer_invalid", exc.message) from exc
    hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            hf_config, trust_remote_code=False
        )
    params = sum(p.numel() for p in meta.parameters())
    tied = bool(getattr(hf_config, "tie_word_embeddings", False))
    expected = {k: tuple(v.shape) for k, v in meta.state_dict().items()}
    tensors = _read_tensors(weights)
    # Before anything loads the weights: a stale quantization_config would make transformers
    # try to (de)quantise full-precision tensors.
    quant = quantization.decide(folder, raw, tensors, expected, tied=tied)
    _check_weights(tensors, expected, tied=tied, packed=quant.quantised_prefixes)
    gptq = quant.format == "gptq"
    # A GPTQ model loads through gptqmodel's kernels; a worker without them skips the pass.
    forward = params <= config.forward_max_parameters and (
        not gptq or importlib.util.find_spec("gptqmodel") is not None
    )
    if forward:
        _forward_once(folder, tokenizer, gptq=gptq)
    vocab = int(meta.get_input_embeddings().weight.shape[0])
    return (
        architectures[0],
        str(model_type),
        params,
        vocab,
        bool(tokenizer.chat_template),
        forward,
        quant.format,
        quant.dropped,
    )


def check_config_limits(raw: dict[str, Any]) -> None:
    """Refuse a config.json that declares sizes past :data:`CONFIG_LIMITS` (or sizes that are
    not positive integers), naming the field in the code: ``model.config_<field>_too_large``."""
    nested = raw.get("text_config")
    for where, values in (("", raw), ("text_config.", nested if isinstance(nested, dict) else {})):
        for name, limit in CONFIG_LIMITS.items():
            value = values.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _fail(
                    f"model.config_{name}_invalid",
                    f"config.json {where}{name} is {value!r}: a whole number is expected",
                )
            if value > limit:
                raise _fail(
                    f"model.config_{name}_too_large",
                    f"config.json {where}{name} is {value}: at most {limit} is accepted",
                )


def _read_tensors(files: list[Path]) -> dict[str, quantization.Tensor]:
    """Every tensor's dtype and shape, from the safetensors headers only."""
    from safetensors import safe_open

    found: dict[str, quantization.Tensor] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    part = f.get_slice(key)
                    found[key] = quantization.Tensor(part.get_dtype(), tuple(part.get_shape()))
        except Exception as exc:  # safetensors raises its own error types
            raise _fail(
                "model.weights_mismatch", f"{path.name} is not valid safetensors: {exc}"
            ) from exc
    return found


def _check_weights(
    found: dict[str, quantization.Tensor],
    expected: dict[str, tuple[int, ...]],
    *,
    tied: bool,
    packed: frozenset[str],
) -> None:
    """Every parameter is present with the right shape; a ``packed`` (GPTQ) module's weight is
    its ``qweight``, checked by :mod:`quantization` instead."""
    expected = {k: v for k, v in expected.items() if k.removesuffix(".weight") not in packed}
    missing = [k for k in expected if k not in found and not (tied and "lm_head" in k)]
    wrong = [k for k in expected if k in found and found[k].shape != expected[k]]
    if missing or wrong:
        raise _fail(
            "model.weights_mismatch",
            f"weights do not match config.json: missing {missing[:5]}, wrong shape {wrong[:5]}",
        )


def _forward_once(folder: Path, tokenizer: Any, *, gptq: bool) -> None:
    import torch

    from pipeline.parts.hf import load_causal_lm

    try:
        if gptq:  # packed weights keep their saved dtypes
            model: Any = load_causal_lm(folder, dtype=None, device_map="cpu")
        else:
            model = load_causal_lm(folder, dtype=torch.float32)
        model.eval()
        ids = tokenizer("Hello, world.", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
    except Exception as exc:  # any failure here means the model is unusable
        raise _fail("model.forward_failed", f"a forward pass failed: {exc}") from exc
    if not bool(torch.isfinite(logits).all()):
        raise _fail("model.forward_failed", "the forward pass produced NaN or inf")
