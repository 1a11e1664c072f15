"""An external OpenAI-compatible endpoint asked one prompt at a time (a chat completion at
temperature 0): the pairwise judge's and the score grader's one way to call it.

The key travels in the ``Authorization`` header only; no error message, ``repr`` or log line
holds it, nor the URL, which is part of the secret too (it may carry a token of its own): while
an endpoint is open, httpx's and httpcore's log records naming its host are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from pipeline.types import PipelineError

_TRIES = 3
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
                 "httpcore.proxy")  # fmt: skip


class _HideHost(logging.Filter):
    """Drops log records that name the endpoint's host (httpx logs each request's URL)."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.host or self.host not in record.getMessage()


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint; ``repr`` leaves the key out."""

    base_url: str
    model: str
    api_key: str = field(repr=False)


class ChatEndpoint:
    """Chat completions from ``endpoint``; failures raise ``PipelineError`` codes under
    ``role`` (``judge.endpoint_refused``, ``grader.endpoint_unreachable``…)."""

    def __init__(self, endpoint: Endpoint, *, role: str, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.role = role
        self.url = endpoint.base_url.rstrip("/") + "/chat/completions"
        self.client = httpx.Client(timeout=timeout_s)
        self.hide = _HideHost(urlsplit(endpoint.base_url).hostname or endpoint.base_url)
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self.hide)

    def close(self) -> None:
        self.client.close()
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self.hide)

    def ask(self, text: str, *, max_tokens: int) -> str:
        """The reply's text; 429 and 5xx answers and network errors are tried three times.

        Raises:
            PipelineError: ``<role>.endpoint_unreachable``, ``<role>.endpoint_refused`` (401,
                403), ``<role>.endpoint_failed`` (another status, or not a chat completion).
        """
        body = {
            "model": self.endpoint.model,
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"}
        role = self.role
        for attempt in range(_TRIES):
            try:
                response = self.client.post(self.url, json=body, headers=headers)
            except httpx.HTTPError as err:
                if attempt + 1 == _TRIES:
                    raise PipelineError(
                        f"{role}.endpoint_unreachable",
                        f"the {role} endpoint did not answer ({type(err).__name__})",
                    ) from None
                time.sleep(2**attempt)
                continue
            if response.status_code in (401, 403):
                raise PipelineError(
                    f"{role}.endpoint_refused",
                    f"the {role} endpoint refused the secret's key ({response.status_code})",
                )
            retry = response.status_code == 429 or response.status_code >= 500
            if retry and attempt + 1 < _TRIES:
                time.sleep(2**attempt)
                continue
            if response.status_code != 200:
                raise PipelineError(
                    f"{role}.endpoint_failed",
                    f"the {role} endpoint answered {response.status_code}",
                )
            try:
                content = response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError):
                raise PipelineError(
                    f"{role}.endpoint_failed",
                    f"the {role} endpoint's answer is not a chat completion",
                ) from None
            return str(content)
        raise AssertionError("unreachable")
