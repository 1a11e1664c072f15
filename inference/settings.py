"""Settings of the inference process, read from ``GRISTMILL_INFERENCE_*`` environment variables.

Kept apart from ``app.settings`` so this process needs nothing from the API package; the CLI
builds one and passes it to :func:`inference.server.create_app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GRISTMILL_INFERENCE_", extra="ignore", frozen=True
    )

    memory_budget_bytes: int = Field(8 * 1024**3, gt=0)
    """Loaded models (weights + adapters) together stay under this; least recently used go first."""
    engine: Literal["auto", "vllm"] = "auto"
    """``GRISTMILL_INFERENCE_ENGINE``: ``auto`` runs Hugging Face models in transformers and
    GGUF files in llama.cpp; ``vllm`` runs Hugging Face models in vLLM on a CUDA GPU (the
    ``vllm`` extra; the service refuses to start without it or without CUDA), GGUF still in
    llama.cpp."""
    vllm_gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    """Share of the GPU vLLM reserves for weights and its paged KV cache."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    concurrency: int = Field(8, ge=1)
    """Generations running at once, over all models. On a transformers model the running ones
    share one batch (``max_batch``), so this is what lets concurrent requests batch; a llama.cpp
    model runs ``gguf_parallel`` at once."""
    max_batch: int = Field(8, ge=1)
    """``GRISTMILL_INFERENCE_MAX_BATCH``: rows (choices: a request counts ``n``) one
    transformers model decodes together; requests beyond it wait for a finished one to leave the
    batch. Larger batches raise throughput and each step's latency together."""
    queue_size: int = Field(8, ge=0)
    """Requests that may wait for a slot; one more is answered 429 with ``Retry-After``."""
    request_timeout_seconds: float = Field(300.0, gt=0)
    """Waiting plus generating; past it the generation is stopped and the request fails (504)."""
    tenant_limit: int | None = Field(None, ge=1)
    """Requests one tenant (``X-Gristmill-Tenant``, sent by the API) may have running and waiting
    at once; past it that tenant alone gets 429, so one tenant's burst leaves room for others.
    None: half of ``concurrency + queue_size`` (at least 1)."""
    retry_after_seconds: int = Field(1, ge=1)
    """What a 429 tells the client to wait."""
    max_n: int = Field(8, ge=1)
    """Largest ``n`` (choices per request; a batch in transformers and vLLM, one after the
    other in llama.cpp)."""
    model_root: Path | None = None
    """The store's folder: the API names models by keys under it, never by path. Unset,
    ``gristmill inference`` reads the store the API uses (``GRISTMILL_STORAGE_*``): its folder,
    or its bucket through this machine's cache (:mod:`inference.folders`); with neither, every
    model is refused."""
    token: str | None = Field(None, min_length=16, repr=False)
    """``GRISTMILL_INFERENCE_TOKEN``: the secret the API presents (``Authorization: Bearer``);
    the service answers nothing but ``/health`` without it. Unset, the service only binds a
    loopback address."""
    gguf_threads: int | None = Field(None, ge=1)
    """CPU threads each llama.cpp context uses; None: its default (half the cores)."""
    gguf_parallel: int = Field(2, ge=1)
    """``GRISTMILL_INFERENCE_GGUF_PARALLEL``: llama.cpp contexts per GGUF model, each with its
    own KV cache over the same memory-mapped weights, so that many requests on one GGUF model
    generate at once (the budget counts the weights once and each context's KV cache); more
    wait for a free context and show as waiting."""
    template_timeout_seconds: float = Field(2.0, gt=0)
    """Wall clock one chat template render may take (in a child process, before the request
    takes a slot); past it the child is killed and the request answers 422 ``template.timeout``."""
    template_max_chars: int = Field(1_000_000, ge=1)
    """Longest rendered chat prompt; past it 422 ``template.too_large``."""
    template_memory_bytes: int = Field(256 * 2**20, ge=16 * 2**20)
    """Address space a render child may add while rendering (``RLIMIT_AS``); past it 422
    ``template.too_large``."""
    template_workers: int = Field(2, ge=1)
    """Render children: renders at once (each waits for a free one)."""
