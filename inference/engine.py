"""The seam between the HTTP service and whatever runs the model.

The service speaks to an :class:`Engine`: ``load`` a model (folders on the shared store),
``stream`` a generation as :class:`Delta` pieces, or ``generate`` it whole. Implementations are
picked by the :class:`ModelRef`'s ``format`` (:class:`inference.engines.FormatEngine`) and
share one memory budget and LRU (:mod:`inference.cache`):

- :class:`inference.transformers_engine.TransformersEngine` for ``huggingface`` models and peft
  adapters on them (PyTorch eager with the KV cache, CPU or one GPU; concurrent requests share
  one batch, :mod:`inference.batching`);
- :class:`inference.vllm_engine.VllmEngine` in its place on CUDA when
  ``GRISTMILL_INFERENCE_ENGINE=vllm`` (vLLM's continuous batching; LoRA as ``LoRARequest``);
- :class:`inference.llamacpp_engine.LlamaCppEngine` for ``gguf`` files, the quantize job's CPU
  exports (``llama_cpp.Llama`` in process, a few contexts per model run in parallel; the chat
  template from the file's metadata).

Text Generation Inference (an HTTP server per base model, LoRA via ``adapter_id``) would fit the
same seam: ``load`` checking the server serves that base, ``stream`` reading its SSE stream.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length"]


class InferenceError(Exception):
    """A request the service refuses; ``status`` and ``code`` become the HTTP error."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ModelNotFound(InferenceError):
    status = 404
    code = "model_not_found"


class ModelLoadError(InferenceError):
    """The folder is not a model this engine can load (no safetensors, no config, …)."""

    code = "model_load_failed"


class ModelTooLarge(InferenceError):
    """The model alone needs more than the whole memory budget, so it can never be loaded."""

    code = "model_too_large"


class PromptTooLong(InferenceError):
    code = "context_length_exceeded"


ModelFormat = Literal["huggingface", "gguf"]


@dataclass(frozen=True)
class ModelRef:
    """Which folders make up a model: a causal LM in HF layout, optionally a peft adapter on it,
    or (``format="gguf"``) a folder holding one GGUF file."""

    id: str
    path: Path
    adapter_path: Path | None = None
    format: ModelFormat = "huggingface"
    """Which engine runs it; an adapter's format is its base's."""

    @property
    def key(self) -> tuple[str, str, str | None]:
        """The cache key: two ids naming the same folders share one loaded copy."""
        adapter = str(self.adapter_path) if self.adapter_path else None
        return (self.format, str(self.path), adapter)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    context_length: int
    memory_bytes: int
    device: str


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = 16
    """None: up to the model's context."""
    temperature: float = 1.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    """None: no logprobs; k >= 0: the chosen token's logprob and the k most likely alternatives."""


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one of ``prompt`` (raw completion) or ``messages`` (chat, via the chat template)."""

    params: SamplingParams
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    chat_prompt: str | None = None
    """``messages`` rendered through the model's chat template by the service, in a sandboxed
    child before the request takes a slot (:mod:`inference.templates`); engines tokenise it as
    it is (special tokens parsed, nothing added), as ``apply_chat_template`` does."""


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template and what it renders with besides ``messages`` and
    ``add_generation_prompt`` (``bos_token``, ``eos_token``, …, as the tokenizer names them)."""

    source: str
    variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[TopLogprob, ...]
    """The most likely tokens at this step, most likely first."""


@dataclass(frozen=True)
class Delta:
    """New output of one choice. The last delta of a choice carries its ``finish_reason``."""

    index: int
    text: str
    tokens: int
    """Tokens generated since the previous delta of this choice (text may lag behind tokens)."""
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Completion:
    model: str
    prompt_tokens: int
    choices: tuple[Choice, ...]

    @property
    def completion_tokens(self) -> int:
        return sum(choice.completion_tokens for choice in self.choices)


@dataclass
class GenerationStream:
    """A started generation: the prompt is tokenised and checked; iterate for the deltas."""

    model: str
    prompt_tokens: int
    deltas: Iterator[Delta] = field(repr=False)

    def __iter__(self) -> Iterator[Delta]:
        return self.deltas


class Engine(Protocol):
    """What the service needs from a model runner. Methods block; the service calls them in threads.

    ``cancel`` is checked between tokens: once set, the stream ends early without a finish reason.
    """

    def load(self, model: ModelRef) -> ModelInfo: ...

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        """The model's chat template (None: it has none), read without loading its weights:
        the service calls it before the request takes a slot."""
        ...

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream: ...

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion: ...


def collect(stream: GenerationStream, n: int) -> Completion:
    """Join a stream's deltas into whole choices (what a non-streaming request returns)."""
    texts = [""] * n
    tokens = [0] * n
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    finish: list[FinishReason | None] = [None] * n
    for delta in stream:
        texts[delta.index] += delta.text
        tokens[delta.index] += delta.tokens
        logprobs[delta.index].extend(delta.logprobs)
        if delta.finish_reason is not None:
            finish[delta.index] = delta.finish_reason
    choices = tuple(
        Choice(i, texts[i], finish[i] or "length", tokens[i], tuple(logprobs[i])) for i in range(n)
    )
    return Completion(model=stream.model, prompt_tokens=stream.prompt_tokens, choices=choices)
