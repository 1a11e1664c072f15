"""Hugging Face models on a CUDA GPU through vLLM (``GRISTMILL_INFERENCE_ENGINE=vllm``).

vLLM is an optional extra (``gristmill[vllm]``), imported only here and only when the setting
asks for it: :func:`require_vllm` runs at startup, so a service told to use vLLM without vLLM
or without a CUDA device stops with a stable code instead of failing its first request.

vLLM's ``AsyncLLMEngine`` does the batching (paged attention, continuous batching): each
request is handed to it at once and joins the running batch between steps, so the service's
slots only bound admission. The engine's coroutines run on one event loop thread of this
module; a request's thread reads its outputs from a queue and turns vLLM's cumulative text and
token ids into :class:`~inference.engine.Delta` pieces. The prompt is tokenised here (the same
rules as the transformers engine) so the context check and ``max_tokens=None`` work as there.
LoRA adapters run on their base with ``LoRARequest`` (one copy of the base; ``max_loras`` of
them batched together). One base model is served at a time: vLLM reserves its share of GPU
memory up front, so another base replaces it once the current one is idle.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.engine import (
    ChatTemplate,
    Completion,
    Delta,
    GenerationRequest,
    GenerationStream,
    InferenceError,
    ModelInfo,
    ModelRef,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    collect,
)

log = logging.getLogger("gristmill.inference")


class EngineUnavailable(Exception):
    """The configured engine cannot run here; ``code`` is stable for scripts and operators."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code


class ModelBusy(InferenceError):
    status = 503
    code = "model_busy"


def require_vllm() -> None:
    """Fail fast, before the service listens, where vLLM cannot serve."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise EngineUnavailable(
            "engine.vllm_missing",
            "GRISTMILL_INFERENCE_ENGINE=vllm needs the vllm extra (pip install "
            "'gristmill[vllm]') on a CUDA machine; or set it to auto",
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise EngineUnavailable(
            "engine.no_cuda",
            "GRISTMILL_INFERENCE_ENGINE=vllm needs a CUDA device and none is visible; "
            "set it to auto to serve on the CPU",
        )


@dataclass
class _Served:
    base: Path
    engine: Any
    """A ``vllm.AsyncLLMEngine``."""
    tokenizers: dict[Path, Any]
    context_length: int
    active: int = 0


_DONE = object()


class VllmEngine:
    """The :class:`~inference.engine.Engine` on vLLM, for ``huggingface`` models (and peft
    adapters on them) on one CUDA GPU."""

    def __init__(
        self, *, gpu_memory_utilization: float = 0.85, max_loras: int = 4, max_lora_rank: int = 64
    ) -> None:
        require_vllm()
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._lock = threading.Lock()
        self._served: _Served | None = None
        self._lora_ids: dict[Path, int] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="vllm", daemon=True).start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _start(self, ref: ModelRef) -> _Served:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        with self._lock:
            served = self._served
            if served is not None and served.base == ref.path:
                return served
            if served is not None:
                if served.active:
                    raise ModelBusy(
                        f"vLLM serves another base model now; retry {ref.id!r} when it is idle",
                        param="model",
                    )
                getattr(served.engine, "shutdown", lambda: None)()
                self._served = None
            args = AsyncEngineArgs(
                model=str(ref.path),
                gpu_memory_utilization=self.gpu_memory_utilization,
                enable_lora=True,
                max_loras=self.max_loras,
                max_lora_rank=self.max_lora_rank,
            )

            async def start() -> Any:  # on the engine's loop, where its output handler runs
                return AsyncLLMEngine.from_engine_args(args)

            engine = self._run(start())
            config = getattr(engine, "model_config", None)  # v1; older engines: a coroutine
            if config is None:
                config = self._run(engine.get_model_config())
            self._served = _Served(ref.path, engine, {}, int(config.max_model_len))
            log.info("loaded %s in vLLM", ref.id)
            return self._served

    def _tokenizer(self, served: _Served, ref: ModelRef) -> Any:
        from transformers import AutoTokenizer

        from inference.transformers_engine import _tokenizer_dir

        folder = _tokenizer_dir(ref)
        with self._lock:
            if folder not in served.tokenizers:
                served.tokenizers[folder] = AutoTokenizer.from_pretrained(folder)
            return served.tokenizers[folder]

    def _lora(self, ref: ModelRef) -> Any:
        if ref.adapter_path is None:
            return None
        from vllm.lora.request import LoRARequest

        with self._lock:
            if ref.adapter_path not in self._lora_ids:
                self._lora_ids[ref.adapter_path] = next(self._ids)
            lora_id = self._lora_ids[ref.adapter_path]
        return LoRARequest(ref.id, lora_id, str(ref.adapter_path))

    def load(self, model: ModelRef) -> ModelInfo:
        served = self._start(model)
        return ModelInfo(model.id, served.context_length, 0, "cuda")

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        from inference.transformers_engine import read_chat_template

        return read_chat_template(model)

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        from inference.transformers_engine import encode_prompt

        served = self._start(model)
        prompt_ids = encode_prompt(self._tokenizer(served, model), request)
        if len(prompt_ids) >= served.context_length:
            raise PromptTooLong(
                f"this model's maximum context length is {served.context_length} tokens; "
                f"the prompt has {len(prompt_ids)}",
                param="messages" if request.messages is not None else "prompt",
            )
        room = served.context_length - len(prompt_ids)
        params = sampling_params(request.params, room)
        deltas = self._deltas(served, model, prompt_ids, params, request.params, cancel)
        return GenerationStream(model=model.id, prompt_tokens=len(prompt_ids), deltas=deltas)

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion:
        return collect(self.stream(model, request, cancel), request.params.n)

    def _deltas(
        self,
        served: _Served,
        model: ModelRef,
        prompt_ids: list[int],
        params: Any,
        ours: SamplingParams,
        cancel: threading.Event,
    ) -> Iterator[Delta]:
        outputs: queue.Queue[Any] = queue.Queue()
        request_id = uuid.uuid4().hex
        lora = self._lora(model)

        async def pump() -> None:
            try:
                prompt = {"prompt_token_ids": prompt_ids}
                async for out in served.engine.generate(
                    prompt, params, request_id, lora_request=lora
                ):
                    outputs.put(out)
            except Exception as exc:  # handed to the request's thread, which raises it
                outputs.put(exc)
            finally:
                outputs.put(_DONE)

        with self._lock:
            served.active += 1
        # Cancelling the pump cancels vLLM's generate(), which aborts the request in the engine.
        pumping = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            seen_text = [0] * ours.n
            seen_tokens = [0] * ours.n
            while not cancel.is_set():
                try:
                    item = outputs.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                for choice in item.outputs:
                    delta = to_delta(choice, seen_text, seen_tokens, ours.logprobs)
                    if delta is not None:
                        yield delta
        finally:
            pumping.cancel()
            with self._lock:
                served.active -= 1


def sampling_params(params: SamplingParams, room: int) -> Any:
    """Ours mapped one to one onto vLLM's (``max_tokens=None``: the rest of the context)."""
    from vllm import SamplingParams as VllmParams

    return VllmParams(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p,
        stop=list(params.stop) or None,
        seed=None if params.seed is None else params.seed % 2**63,
        max_tokens=room if params.max_tokens is None else min(params.max_tokens, room),
        logprobs=params.logprobs,
    )


def to_delta(
    choice: Any, seen_text: list[int], seen_tokens: list[int], top: int | None
) -> Delta | None:
    """What is new in one of vLLM's cumulative ``CompletionOutput``s since the last one."""
    index = int(choice.index)
    text = choice.text[seen_text[index] :]
    ids = list(choice.token_ids)
    new = ids[seen_tokens[index] :]
    logprobs: tuple[TokenLogprob, ...] = ()
    if top is not None and choice.logprobs:
        steps = choice.logprobs[seen_tokens[index] :]
        logprobs = tuple(
            _logprob(token, step, top) for token, step in zip(new, steps, strict=False)
        )
    seen_text[index], seen_tokens[index] = len(choice.text), len(ids)
    finish = choice.finish_reason if choice.finish_reason in ("stop", "length") else None
    if choice.finish_reason == "abort":
        return None
    if not text and not new and finish is None:
        return None
    return Delta(index, text, len(new), logprobs, finish)


def _logprob(token: int, step: dict[int, Any], top: int) -> TokenLogprob:
    """vLLM's step holds the ``top`` most likely tokens and the chosen one (ranked, 1 = best)."""
    chosen = step[token]
    ranked = sorted(step.values(), key=lambda entry: entry.rank)
    alternatives = tuple(
        TopLogprob(str(entry.decoded_token or ""), float(entry.logprob))
        for entry in ranked
        if entry.rank <= top
    )
    return TokenLogprob(str(chosen.decoded_token or ""), float(chosen.logprob), alternatives)
