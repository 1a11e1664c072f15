"""GGUF models on the CPU through llama.cpp (``llama_cpp.Llama``), behind the same Engine seam.

llama.cpp runs the model and samples; the service keeps what it owns for every engine: the
prompt (the file's ``tokenizer.chat_template``, rendered in the service's sandbox,
:mod:`inference.templates`, as Hugging Face models' are), the context check, incremental
text with stop strings (:mod:`inference.text`), logprobs from the logits llama.cpp left for the
sampled step, and a cancel check between tokens.

Concurrency: a model holds ``parallel`` llama.cpp contexts (``GRISTMILL_INFERENCE_GGUF_PARALLEL``),
each a ``Llama`` over the same memory-mapped file, so the weights are in memory once and each
context adds its own KV cache (what the budget counts). A request takes a free context for its
whole generation and requests beyond ``parallel`` wait for one in arrival order
(:mod:`inference.gguf_pool`; ``queued``, shown as waiting in ``/health``), checking their
cancel while they wait. Contexts generate in parallel threads
(llama.cpp releases the GIL while it computes). This is llama.cpp's server's ``--parallel``
without its shared batch: sequences batched in one ``llama_decode`` go through other matmul
kernels than one alone, and on q4_k_m a greedy answer then changed (tried: 1 of 4 prompts over
24 tokens; f16 kept all 4), so separate contexts keep "the same answer alone or together".
``n`` choices run one after the other on the request's context, choice ``i`` sampled with
``seed + i``; each context keeps the longest common prefix of its KV cache between calls, so a
chat that resends its history re-reads only the new turn.

Sampling differs from the transformers engine in one documented way: llama.cpp applies top-p
before temperature (its sampler chain), transformers after. Greedy decoding (temperature 0) is
the same argmax in both, so an f32 GGUF answers what the Hugging Face model answers (tested).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inference.cache import ModelCache
from inference.engine import (
    ChatTemplate,
    Completion,
    Delta,
    GenerationRequest,
    GenerationStream,
    ModelInfo,
    ModelLoadError,
    ModelRef,
    PromptTooLong,
    SamplingParams,
    TokenLogprob,
    TopLogprob,
    collect,
)
from inference.gguf_files import estimate_bytes, gguf_file, read_chat_template, read_shape
from inference.gguf_pool import ContextPool
from inference.text import ChoiceState, Detokenizer

__all__ = ["LlamaCppEngine", "estimate_bytes", "load_model", "read_chat_template"]

log = logging.getLogger("gristmill.inference")


@dataclass
class LlamaCppModel:
    contexts: list[Any]
    """``llama_cpp.Llama`` instances over one mapped file, each with the whole trained context
    as its ``n_ctx``; one generation at a time on each."""
    context_length: int
    memory_bytes: int
    pool: ContextPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ContextPool(self.contexts)

    @property
    def llm(self) -> Any:
        """For tokenising and detokenising, which read the shared vocabulary only."""
        return self.contexts[0]


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(
            "GGUF models need llama-cpp-python on the inference service (gristmill[gguf])",
            param="model",
        ) from exc
    return llama_cpp


@functools.cache
def cpu_has_amx() -> bool:
    try:
        return " amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def plain_cpu_weights(lib: Any) -> Iterator[None]:
    """Load with llama.cpp's extra weight buffers off (``use_extra_bufts``), as the quantize
    check does (pipeline/parts/runtimes/llamacpp.py; this service may not import the
    pipeline): on AMX CPUs quantised weights otherwise go to AMX buffers whose matrix multiply
    crashes the process (SIGSEGV in ``ggml_backend_amx_mul_mat``, llama-cpp-python 0.3.36).
    It also keeps weights in the file's mapping, shared by a model's contexts.
    llama-cpp-python has no argument for it, so its defaults are wrapped while a model loads."""
    low = lib.llama_cpp
    defaults = low.llama_model_default_params

    def without_extra_buffers() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        low.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            low.llama_model_default_params = defaults


def load_model(ref: ModelRef, *, threads: int | None = None, parallel: int = 1) -> LlamaCppModel:
    """Load the folder's GGUF ``parallel`` times (mapped, so its pages are shared) with its whole
    trained context; llama.cpp's logging silenced."""
    lib = _llama_cpp()
    path = gguf_file(ref)
    shape = read_shape(path)
    # Extra buffers also repack K-quants into a private copy per Llama, so several contexts
    # would hold the weights several times (q4_k_m, 2 contexts: +119 MiB PSS on a 78 MiB file);
    # plain buffers keep them in the one shared mapping, at the same tokens/s (measured).
    shared = parallel > 1 or cpu_has_amx()
    plain = plain_cpu_weights(lib) if shared else contextlib.nullcontext()
    try:
        with plain:
            contexts = [
                lib.Llama(
                    model_path=str(path),
                    n_ctx=shape.context_length,
                    n_threads=threads,
                    n_threads_batch=threads,
                    use_mmap=True,
                    verbose=False,
                )
                for _ in range(parallel)
            ]
    except ValueError as exc:  # llama-cpp-python's answer to "failed to load model"
        log.warning("llama.cpp cannot load %s from %s: %s", ref.id, path, exc)
        raise ModelLoadError(f"llama.cpp cannot load {ref.id!r}", param="model") from exc
    size = estimate_bytes(ref, parallel)
    log.info(
        "loaded %s in llama.cpp, %d contexts (%.1f MiB with their KV caches)",
        ref.id,
        parallel,
        size / 2**20,
    )
    return LlamaCppModel(contexts, shape.context_length, size)


class _Pieces:
    """``decode`` as :class:`~inference.text.Detokenizer` calls it, on llama.cpp's vocabulary."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        raw: bytes = self.llm.detokenize(ids, special=not skip_special_tokens)
        return raw.decode("utf-8", errors="replace")


class LlamaCppEngine:
    """The :class:`~inference.engine.Engine` on llama.cpp, for ``gguf`` models on the CPU."""

    def __init__(self, *, cache: ModelCache, threads: int | None = None, parallel: int = 1) -> None:
        self.cache = cache
        self.threads = threads
        self.parallel = parallel
        self._pools: weakref.WeakSet[ContextPool] = weakref.WeakSet()
        """The loaded models' pools (an evicted model's goes with it)."""

    def queued(self) -> int:
        """Requests waiting for a free context of their model."""
        return sum(pool.waiting for pool in list(self._pools))

    def _loaded(self, ref: ModelRef) -> LlamaCppModel:
        def load() -> tuple[LlamaCppModel, int]:
            model = load_model(ref, threads=self.threads, parallel=self.parallel)
            return model, model.memory_bytes

        return self.cache.get_or_load(
            ref.key, estimate=lambda: estimate_bytes(ref, self.parallel), load=load, name=ref.id
        )

    def _acquire(self, loaded: LlamaCppModel, cancel: threading.Event) -> Any | None:
        """A context of the model (in arrival order), or None once ``cancel`` is set while
        waiting for one."""
        self._pools.add(loaded.pool)
        return loaded.pool.acquire(cancel)

    def _generate(
        self,
        loaded: LlamaCppModel,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: threading.Event,
    ) -> Iterator[Delta]:
        room = loaded.context_length - len(prompt_ids)
        max_new = room if params.max_tokens is None else min(params.max_tokens, room)
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**31)
        llm = self._acquire(loaded, cancel)
        if llm is None:
            return
        try:
            for index in range(params.n):
                if cancel.is_set():
                    return
                yield from _choice(llm, prompt_ids, params, index, seed + index, max_new, cancel)
        finally:
            loaded.pool.release(llm)

    def load(self, model: ModelRef) -> ModelInfo:
        loaded = self._loaded(model)
        return ModelInfo(model.id, loaded.context_length, loaded.memory_bytes, "cpu")

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        return read_chat_template(model)

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        loaded = self._loaded(model)
        prompt_ids = encode_prompt(loaded, request)
        if len(prompt_ids) >= loaded.context_length:
            raise PromptTooLong(
                f"this model's maximum context length is {loaded.context_length} tokens; "
                f"the prompt has {len(prompt_ids)}",
                param="messages" if request.messages is not None else "prompt",
            )
        deltas = self._generate(loaded, prompt_ids, request.params, cancel)
        return GenerationStream(model=model.id, prompt_tokens=len(prompt_ids), deltas=deltas)

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion:
        return collect(self.stream(model, request, cancel), request.params.n)


def encode_prompt(loaded: LlamaCppModel, request: GenerationRequest) -> list[int]:
    """A completion's prompt as the vocabulary says (BOS if the file asks for one); a chat's
    rendered template with special tokens parsed and nothing added (the template adds BOS)."""
    llm = loaded.llm
    if request.messages is None:
        return list(llm.tokenize((request.prompt or "").encode(), add_bos=True, special=False))
    if request.chat_prompt is None:
        raise ValueError("chat messages reach the engine rendered (inference.templates)")
    return list(llm.tokenize(request.chat_prompt.encode(), add_bos=False, special=True))


def _choice(
    llm: Any,
    prompt_ids: list[int],
    params: SamplingParams,
    index: int,
    seed: int,
    max_new: int,
    cancel: threading.Event,
) -> Iterator[Delta]:
    lib = _llama_cpp()
    vocab = lib.llama_model_get_vocab(llm.model)
    state = ChoiceState(Detokenizer(_Pieces(llm)), params.stop)
    llm.set_seed(seed % 2**32)  # llama.cpp's sampler seed is 32 bits; the API allows 64
    # top_k 0 and min_p 0 switch llama.cpp's extra filters off: temperature and top-p only, as
    # OpenAI's parameters mean. Temperature 0 is llama.cpp's greedy sampler.
    tokens = llm.generate(
        prompt_ids,
        temp=params.temperature,
        top_p=params.top_p,
        top_k=0,
        min_p=0.0,
        repeat_penalty=1.0,
    )
    try:
        for count, token in enumerate(tokens, start=1):
            if cancel.is_set():
                return
            entry = _logprob(llm, token, params.logprobs)
            delta = state.step(index, token, entry, bool(lib.llama_vocab_is_eog(vocab, token)))
            if delta is not None:
                yield delta
            if state.finished:
                return
            if count >= max_new:
                break
    finally:
        tokens.close()
    if (delta := state.finish(index, "length")) is not None:
        yield delta


def _logprob(llm: Any, token: int, top: int | None) -> TokenLogprob | None:
    """The sampled token's logprob under the model's own distribution (before temperature and
    top-p, as OpenAI reports), from the logits llama.cpp kept for the step just sampled."""
    if top is None:
        return None
    lib = _llama_cpp()
    n_vocab = llm.n_vocab()
    logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
    logits = logits.astype(np.float64)
    peak = logits.max()
    logp = logits - (peak + np.log(np.exp(logits - peak).sum()))
    alternatives: tuple[TopLogprob, ...] = ()
    if top:
        best = np.argsort(-logp, kind="stable")[:top]
        alternatives = tuple(TopLogprob(_text(llm, int(t)), float(logp[t])) for t in best)
    return TokenLogprob(_text(llm, token), float(logp[token]), alternatives)


def _text(llm: Any, token: int) -> str:
    raw: bytes = llm.detokenize([token], special=True)
    return raw.decode("utf-8", errors="replace")
