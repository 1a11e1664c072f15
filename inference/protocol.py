"""Request bodies (OpenAI's, with ``model`` resolved to folders by the API) and response shapes.

Responses are built as plain dicts in the shapes the official ``openai`` SDK parses
(``Completion``, ``ChatCompletion``, ``ChatCompletionChunk``); the tests validate them with the
SDK's own types.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference.engine import (
    Completion,
    Delta,
    GenerationRequest,
    ModelFormat,
    ModelNotFound,
    ModelRef,
    SamplingParams,
    TokenLogprob,
)


def _store_key(value: str | None) -> str | None:
    """A key relative to the store, never a path of the caller's choosing: the service reads
    nothing the API's ownership check did not name."""
    if value is None:
        return None
    if not value or value.startswith(("/", "\\")) or "\x00" in value:
        raise ValueError("must be a key relative to the store")
    if ".." in Path(value).parts:
        raise ValueError("must not contain '..'")
    return value


def resolve_key(root: Path, key: str) -> Path:
    """``key`` under ``root``; a symlink that leads out of it is treated as no model."""
    path = (root / key).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ModelNotFound("no such model on the store", param="model")
    return path


class ModelSpec(BaseModel):
    """The model the API resolved the request's id to: folders on the shared store, as keys
    under the service's ``model_root``."""

    id: str
    path: str
    adapter_path: str | None = None
    format: ModelFormat = "huggingface"

    _keys = field_validator("path", "adapter_path")(_store_key)

    def ref(self, root: Path) -> ModelRef:
        adapter = resolve_key(root, self.adapter_path) if self.adapter_path else None
        return ModelRef(self.id, resolve_key(root, self.path), adapter, self.format)


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: ModelSpec
    max_tokens: int | None = Field(None, ge=1)
    # NaN passes no comparison, so without allow_inf_nan=False it fails "<= 2": a misleading
    # message; this way it is "a finite number".
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    """OpenAI's range (a signed 64-bit integer); torch's generator refuses more with a crash."""
    presence_penalty: float | None = Field(None, allow_inf_nan=False)
    frequency_penalty: float | None = Field(None, allow_inf_nan=False)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("penalties are not supported by this engine; send 0 or omit")
        return value

    def _params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stop,
            seed=self.seed,
            n=self.n or 1,
            logprobs=logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Request):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a list of exactly one string)")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported")
        return value

    def generation(self) -> GenerationRequest:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        # OpenAI's default for the legacy endpoint is 16 tokens.
        params = self._params(16 if self.max_tokens is None else self.max_tokens, self.logprobs)
        return GenerationRequest(params=params, prompt=prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def for_template(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        # Templates know "system"; OpenAI's newer "developer" role means the same.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def generation(self) -> GenerationRequest:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        max_tokens = self.max_completion_tokens or self.max_tokens  # None: up to the context
        return GenerationRequest(
            params=self._params(max_tokens, logprobs),
            messages=tuple(m.for_template() for m in self.messages),
        )


def error_body(message: str, *, type_: str, code: str | None, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": _bytes(e.token),
                "top_logprobs": [
                    {"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token)}
                    for t in e.top
                ],
            }
            for e in entries
        ],
        "refusal": None,
    }


def _top_dict(entry: TokenLogprob) -> dict[str, float]:
    """Legacy top logprobs are keyed by text; two ids can decode alike (e.g. partial UTF-8
    bytes): keep the likelier, so the dict stays in descending order."""
    top: dict[str, float] = {}
    for t in entry.top:
        top.setdefault(t.token, t.logprob)
    return top


def completion_logprobs(entries: tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """The legacy completions shape; ``offset`` is where the first token's text starts."""
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e) for e in entries],
        "text_offset": offsets,
    }


class ResponseIds:
    """The id and timestamp every chunk of one response shares."""

    def __init__(self, prefix: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())


def completion_body(result: Completion, chat: bool, want_logprobs: bool) -> dict[str, Any]:
    ids = ResponseIds("chatcmpl" if chat else "cmpl")
    choices: list[dict[str, Any]] = []
    for c in result.choices:
        if chat:
            choices.append(
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text, "refusal": None},
                    "logprobs": chat_logprobs(c.logprobs) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
            )
        else:
            choices.append(
                {
                    "index": c.index,
                    "text": c.text,
                    "logprobs": completion_logprobs(c.logprobs, 0) if want_logprobs else None,
                    "finish_reason": c.finish_reason,
                }
            )
    return {
        "id": ids.id,
        "object": "chat.completion" if chat else "text_completion",
        "created": ids.created,
        "model": result.model,
        "choices": choices,
        "usage": usage(result.prompt_tokens, result.completion_tokens),
    }


class ChunkWriter:
    """Turns deltas into OpenAI stream chunks (dicts) for one response."""

    def __init__(self, model: str, chat: bool, n: int, want_logprobs: bool) -> None:
        self.ids = ResponseIds("chatcmpl" if chat else "cmpl")
        self.model = model
        self.chat = chat
        self.want_logprobs = want_logprobs
        self.offsets = [0] * n

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.ids.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.ids.created,
            "model": self.model,
            "choices": choices,
            **extra,
        }

    def opening(self, n: int) -> list[dict[str, Any]]:
        """Chat streams open with the assistant role, as OpenAI's do."""
        if not self.chat:
            return []
        return [
            self._chunk(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(n)
        ]

    def delta(self, delta: Delta) -> list[dict[str, Any]]:
        chunks = []
        if delta.text or delta.logprobs:
            if self.chat:
                lp = chat_logprobs(delta.logprobs) if self.want_logprobs else None
                choice = {
                    "index": delta.index,
                    "delta": {"content": delta.text},
                    "logprobs": lp,
                    "finish_reason": None,
                }
            else:
                lp = None
                if self.want_logprobs:
                    lp = completion_logprobs(delta.logprobs, self.offsets[delta.index])
                    self.offsets[delta.index] += sum(len(e.token) for e in delta.logprobs)
                choice = {
                    "index": delta.index,
                    "text": delta.text,
                    "logprobs": lp,
                    "finish_reason": None,
                }
            chunks.append(self._chunk([choice]))
        if delta.finish_reason is not None:
            if self.chat:
                choice = {
                    "index": delta.index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": delta.finish_reason,
                }
            else:
                choice = {
                    "index": delta.index,
                    "text": "",
                    "logprobs": None,
                    "finish_reason": delta.finish_reason,
                }
            chunks.append(self._chunk([choice]))
        return chunks

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        return self._chunk([], usage=usage(prompt_tokens, completion_tokens))
