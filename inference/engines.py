"""The service's engine: each model goes to the engine for its format, all under one budget.

``huggingface`` models (and adapters on them) run in transformers (or vLLM on a GPU, when
``GRISTMILL_INFERENCE_ENGINE=vllm``), ``gguf`` models in llama.cpp.
Both engines draw on one :class:`~inference.cache.ModelCache`, so a GGUF loaded after a Hugging
Face model may evict it and the reverse, exactly as two models of one engine do.
"""

from __future__ import annotations

import threading

from inference.cache import ModelCache
from inference.engine import (
    ChatTemplate,
    Completion,
    Engine,
    GenerationRequest,
    GenerationStream,
    ModelInfo,
    ModelRef,
)
from inference.settings import InferenceSettings


class FormatEngine:
    """An :class:`~inference.engine.Engine` that hands each call to ``engines[model.format]``."""

    def __init__(self, engines: dict[str, Engine], cache: ModelCache) -> None:
        self.engines = engines
        self.cache = cache
        """What ``/health`` reports: every engine's models together."""

    def _for(self, model: ModelRef) -> Engine:
        return self.engines[model.format]

    def load(self, model: ModelRef) -> ModelInfo:
        return self._for(model).load(model)

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        return self._for(model).chat_template(model)

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        return self._for(model).stream(model, request, cancel)

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion:
        return self._for(model).generate(model, request, cancel)

    def queued(self) -> int:
        """Requests that hold a service slot but wait inside an engine (a llama.cpp context)."""
        return sum(getattr(engine, "queued", lambda: 0)() for engine in self.engines.values())


def default_engine(settings: InferenceSettings) -> FormatEngine:
    """transformers (or vLLM, by the ``engine`` setting) for Hugging Face folders, llama.cpp for
    GGUF files. Raises :class:`~inference.vllm_engine.EngineUnavailable` when vLLM is asked for
    and cannot run here."""
    from inference.llamacpp_engine import LlamaCppEngine

    cache = ModelCache(settings.memory_budget_bytes)
    gguf = LlamaCppEngine(
        cache=cache, threads=settings.gguf_threads, parallel=settings.gguf_parallel
    )
    if settings.engine == "vllm":
        from inference.vllm_engine import VllmEngine

        gpu = VllmEngine(gpu_memory_utilization=settings.vllm_gpu_memory_utilization)
        return FormatEngine({"huggingface": gpu, "gguf": gguf}, cache)
    from inference.transformers_engine import TransformersEngine

    hf = TransformersEngine(
        memory_budget_bytes=settings.memory_budget_bytes,
        device=settings.device,
        cache=cache,
        max_batch=settings.max_batch,
    )
    return FormatEngine({"huggingface": hf, "gguf": gguf}, cache)
