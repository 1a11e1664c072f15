"""The built-in engine: transformers + peft on PyTorch, concurrent generations batched per model.

The decoding loop is written out (:mod:`inference.batching`: prefill once, then one token per
forward with the KV cache, all of a model's running requests in one forward) rather than
delegated to ``model.generate``, because the service needs things ``generate`` only gives at the
end: per-token logprobs, a cancel check between tokens, stop strings cut from text that is
streamed as it is made, and requests joining and leaving the batch between tokens. Temperature
and top-p use transformers' own logits warpers, so sampling means what it means in ``generate``;
greedy output equals ``generate``'s, alone or batched (tested). LoRA adapters run on one shared
copy of their base, in its batch (:mod:`inference.adapters`).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
)

from inference.adapters import BASE, SharedBase
from inference.batching import Batcher
from inference.cache import ModelCache, ParentGone
from inference.engine import (
    ChatTemplate,
    Completion,
    Delta,
    GenerationRequest,
    GenerationStream,
    ModelInfo,
    ModelLoadError,
    ModelNotFound,
    ModelRef,
    PromptTooLong,
    SamplingParams,
    collect,
)

log = logging.getLogger("gristmill.inference")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    model: Any
    """The base ``PreTrainedModel``; its adapters live in ``shared``."""
    tokenizer: Any
    eos_ids: frozenset[int]
    context_length: int
    device: torch.device
    memory_bytes: int
    batcher: Batcher | None = None
    """The model's decode loop: concurrent generations (and its adapters') share its batch."""
    shared: SharedBase | None = None


@dataclass
class LoadedAdapter:
    """A LoRA adapter attached to a loaded base, under ``name`` in its ``PeftModel``."""

    name: str
    tokenizer: Any
    eos_ids: frozenset[int]
    memory_bytes: int


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _safetensors(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _estimate_bytes(ref: ModelRef) -> int:
    """The base's weights, or for an adapter its own weights only (the base is counted once)."""
    _check_folders(ref)
    folder = ref.adapter_path or ref.path
    return sum(f.stat().st_size for f in _safetensors(folder))


def _check_folders(ref: ModelRef) -> None:
    if not (ref.path / "config.json").is_file():
        raise ModelNotFound(f"no model {ref.id!r} (config.json missing)", param="model")
    if not _safetensors(ref.path):
        raise ModelLoadError(
            f"{ref.id!r} has no .safetensors weights; only safetensors are loaded", param="model"
        )
    if ref.adapter_path is not None:
        if not (ref.adapter_path / "adapter_config.json").is_file():
            raise ModelNotFound(
                f"{ref.id!r} has no peft adapter (adapter_config.json missing)",
                param="model",
            )
        if not _safetensors(ref.adapter_path):
            raise ModelLoadError(
                f"the adapter of {ref.id!r} has no .safetensors weights", param="model"
            )


def load_model(ref: ModelRef, device: torch.device) -> LoadedModel:
    """Load the base folder of ``ref``: safetensors only, never remote code (adapters are
    attached to it afterwards, see :func:`attach_adapter`)."""
    ref = ModelRef(ref.id, ref.path, None, ref.format)
    _check_folders(ref)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            ref.path,
            dtype="auto",
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
        )
        model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(ref), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        # The library's text names server paths: it goes to the log, the tenant gets the code.
        log.warning("cannot load %s from %s: %s", ref.id, ref.path, exc)
        raise ModelLoadError(f"cannot load {ref.id!r}", param="model") from exc
    base: PreTrainedModel = model
    eos_ids = _eos_ids(ref, base, tokenizer)
    config = base.config
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 0)
    if not context:
        raise ModelLoadError(f"{ref.id!r}: config gives no context length", param="model")
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    log.info("loaded %s on %s (%.1f MiB)", ref.id, device, size / 2**20)
    return LoadedModel(model, tokenizer, eos_ids, int(context), device, size)


def attach_adapter(ref: ModelRef, loaded: LoadedModel) -> LoadedAdapter:
    """Attach the adapter of ``ref`` to its loaded base, with the fine-tune's own tokenizer
    (for prompts) and end-of-turn ids; the base is not reloaded."""
    assert ref.adapter_path is not None and loaded.shared is not None
    _check_folders(ref)
    try:
        name, size = loaded.shared.attach(ref.adapter_path)
        tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir(ref), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # weights that do not fit too
        log.warning("cannot load the adapter of %s from %s: %s", ref.id, ref.adapter_path, exc)
        raise ModelLoadError(f"cannot load {ref.id!r}", param="model") from exc
    log.info("attached %s to its loaded base as %s (%.1f MiB)", ref.id, name, size / 2**20)
    return LoadedAdapter(name, tokenizer, _eos_ids(ref, loaded.model, tokenizer), size)


def _tokenizer_dir(ref: ModelRef) -> Path:
    """A fine-tune saves its tokenizer (with its chat template) beside the adapter/merged
    weights; prefer that over the base's."""
    if ref.adapter_path is not None and any(
        (ref.adapter_path / name).is_file() for name in _TOKENIZER_FILES
    ):
        return ref.adapter_path
    return ref.path


def read_chat_template(ref: ModelRef) -> ChatTemplate | None:
    """The tokenizer's chat template and special tokens, as ``apply_chat_template`` renders
    with them; only the tokenizer is read (cached per folder and modification time)."""
    _check_folders(ref)
    folder = _tokenizer_dir(ref)
    stamp = tuple(f.stat().st_mtime_ns for f in sorted(folder.glob("*")) if f.is_file())
    try:
        return _chat_template(folder, stamp)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot read the tokenizer of %s from %s: %s", ref.id, folder, exc)
        raise ModelLoadError(f"cannot load {ref.id!r}", param="model") from exc


@functools.lru_cache(maxsize=64)
def _chat_template(folder: Path, stamp: tuple[int, ...]) -> ChatTemplate | None:
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tokenizer.chat_template:
        return None
    try:
        source = tokenizer.get_chat_template()
    except ValueError:  # several named templates and no "default": none to pick for chat
        return None
    return ChatTemplate(str(source), dict(tokenizer.special_tokens_map))


def _eos_ids(ref: ModelRef, base: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids: generation_config.json's ``eos_token_id`` (int or list), plus the
    tokenizer's eos. A fine-tune's generation_config beside the adapter wins over the base's."""
    config: Any = base.generation_config
    for folder in (ref.adapter_path, ref.path):
        if folder is not None and (folder / "generation_config.json").is_file():
            config = GenerationConfig.from_pretrained(folder)
            break
    ids: set[int] = set()
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


class TransformersEngine:
    """The :class:`~inference.engine.Engine` on transformers/peft, CPU or one GPU."""

    def __init__(
        self,
        *,
        memory_budget_bytes: int,
        device: str = "auto",
        cache: ModelCache | None = None,
        max_batch: int = 8,
    ) -> None:
        """``cache``: one shared with the service's other engines, so they share the budget.
        ``max_batch``: rows (choices) one model decodes together; more wait for a place."""
        self.device = pick_device(device)
        self.cache = cache if cache is not None else ModelCache(memory_budget_bytes)
        self.max_batch = max_batch

    def _loaded(self, ref: ModelRef) -> LoadedModel:
        """The loaded base of ``ref`` (itself when it has no adapter): one copy per base."""
        base = ModelRef(ref.id, ref.path, None, ref.format)
        return self.cache.get_or_load(
            base.key,
            estimate=lambda: _estimate_bytes(base),
            load=lambda: self._load(base),
            name=ref.id,
        )

    def _adapter(self, ref: ModelRef) -> tuple[LoadedModel, LoadedAdapter | None]:
        """The loaded base of ``ref`` and its adapter attached to it (``None`` without one)."""
        while True:
            loaded = self._loaded(ref)
            if ref.adapter_path is None:
                return loaded, None
            try:
                return loaded, self._attached(ref, loaded)
            except ParentGone:  # another load evicted (or replaced) the base just now
                continue

    def _attached(self, ref: ModelRef, loaded: LoadedModel) -> LoadedAdapter:
        shared = loaded.shared
        assert shared is not None
        attached: list[LoadedAdapter] = []

        def load() -> tuple[LoadedAdapter, int]:
            attached.append(attach_adapter(ref, loaded))
            return attached[0], attached[0].memory_bytes

        adapter: LoadedAdapter = self.cache.get_or_load(
            ref.key,
            estimate=lambda: _estimate_bytes(ref),
            load=load,
            name=ref.id,
            parent=(ModelRef(ref.id, ref.path, None, ref.format).key, loaded),
            release=lambda: shared.retire(attached[0].name),
        )
        return adapter

    def _load(self, ref: ModelRef) -> tuple[LoadedModel, int]:
        loaded = load_model(ref, self.device)
        loaded.shared = SharedBase(loaded.model, loaded.device)
        loaded.batcher = Batcher(
            loaded.shared,
            loaded.tokenizer,
            loaded.eos_ids,
            device=loaded.device,
            max_rows=self.max_batch,
        )
        return loaded, loaded.memory_bytes

    def load(self, model: ModelRef) -> ModelInfo:
        loaded, adapter = self._adapter(model)
        size = loaded.memory_bytes + (adapter.memory_bytes if adapter else 0)
        return ModelInfo(model.id, loaded.context_length, size, str(loaded.device))

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        return read_chat_template(model)

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        loaded, adapter = self._adapter(model)
        prompt_ids = encode_prompt(adapter.tokenizer if adapter else loaded.tokenizer, request)
        if len(prompt_ids) >= loaded.context_length:
            raise PromptTooLong(
                f"this model's maximum context length is {loaded.context_length} tokens; "
                f"the prompt has {len(prompt_ids)}",
                param="messages" if request.messages is not None else "prompt",
            )
        deltas = _generate(loaded, adapter, prompt_ids, request.params, cancel)
        return GenerationStream(model=model.id, prompt_tokens=len(prompt_ids), deltas=deltas)

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion:
        return collect(self.stream(model, request, cancel), request.params.n)


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """A completion's prompt with the tokenizer's special tokens; a chat's rendered template
    with none added (the template writes them), as ``apply_chat_template`` tokenises it."""
    if request.messages is None:
        return list(tokenizer(request.prompt or "")["input_ids"])
    if request.chat_prompt is None:
        raise ValueError("chat messages reach the engine rendered (inference.templates)")
    return list(tokenizer(request.chat_prompt, add_special_tokens=False)["input_ids"])


def _generate(
    loaded: LoadedModel,
    adapter: LoadedAdapter | None,
    prompt_ids: list[int],
    params: SamplingParams,
    cancel: threading.Event,
) -> Iterator[Delta]:
    """Decode ``params.n`` choices in the base's running batch, on the adapter's rows if any;
    deltas as text becomes final."""
    room = loaded.context_length - len(prompt_ids)
    max_new = room if params.max_tokens is None else min(params.max_tokens, room)
    assert loaded.batcher is not None and loaded.shared is not None
    if adapter is None:
        return loaded.batcher.submit(
            prompt_ids, params, max_new, cancel, (BASE, loaded.eos_ids, loaded.tokenizer)
        )
    lora = (adapter.name, adapter.eos_ids, adapter.tokenizer)
    deltas = loaded.batcher.submit(prompt_ids, params, max_new, cancel, lora)
    return loaded.shared.using(adapter.name, deltas)
