"""Calling an external OpenAI-compatible endpoint (a tenant secret's base URL and key): the
synthesize teacher's, the pairwise judge's and the score grader's one way to call it.

One POST with the retries every caller wants: a transport error, 429 or 5xx is tried again
after a doubling pause; 401/403 is final (the key is wrong, retrying will not fix it). Errors are
``PipelineError``\\ s named after the caller (``<domain>.endpoint_refused``,
``<domain>.endpoint_unreachable``, ``<domain>.endpoint_failed``) and never repeat the key, which
``Endpoint``'s ``repr`` leaves out too. The URL is part of the secret as well (it may carry a
token of its own): while an endpoint is open (:class:`HiddenHost`), httpx's and httpcore's log
records naming its host are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from pipeline.types import PipelineError

TRIES = 3
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2",
                 "httpcore.proxy")  # fmt: skip


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint; ``repr`` leaves the key out."""

    base_url: str
    """Up to and including the version, e.g. ``https://host/v1``."""
    model: str
    api_key: str = field(repr=False)


def post(
    client: httpx.Client,
    endpoint: Endpoint,
    path: str,
    body: dict[str, Any],
    *,
    domain: str,
    tries: int = TRIES,
    backoff_s: float = 1.0,
) -> dict[str, Any]:
    """POST ``body`` (``model`` filled in) to ``base_url + path``; the JSON answer.

    Raises:
        PipelineError: ``<domain>.endpoint_refused`` (401/403), ``<domain>.endpoint_unreachable``
            (no answer after ``tries``), ``<domain>.endpoint_failed`` (another status, or an
            answer that is not JSON).
    """
    url = endpoint.base_url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    for attempt in range(tries):
        last = attempt + 1 == tries
        try:
            response = client.post(url, json={**body, "model": endpoint.model}, headers=headers)
        except httpx.HTTPError as err:
            if last:
                raise PipelineError(
                    f"{domain}.endpoint_unreachable",
                    f"the {domain} endpoint did not answer ({type(err).__name__})",
                ) from None
            time.sleep(backoff_s * 2**attempt)
            continue
        status = response.status_code
        if status in (401, 403):
            raise PipelineError(
                f"{domain}.endpoint_refused",
                f"the {domain} endpoint refused the secret's key ({status})",
            )
        if (status == 429 or status >= 500) and not last:
            time.sleep(backoff_s * 2**attempt)
            continue
        if status != 200:
            raise PipelineError(
                f"{domain}.endpoint_failed", f"the {domain} endpoint answered {status}"
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PipelineError(
                f"{domain}.endpoint_failed", f"the {domain} endpoint's answer is not JSON"
            )
        return answer
    raise AssertionError("unreachable")


def chat_text(answer: dict[str, Any], *, domain: str) -> tuple[str, int]:
    """A chat completion's first message and its completion tokens (0 when not reported).

    Raises:
        PipelineError: ``<domain>.endpoint_failed`` when it is not a chat completion.
    """
    try:
        text = answer["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise PipelineError(
            f"{domain}.endpoint_failed", f"the {domain} endpoint's answer is not a chat completion"
        ) from None
    return str(text), _tokens(answer)


def completion_text(answer: dict[str, Any], *, domain: str) -> tuple[str, int]:
    """A text completion's first choice and its completion tokens (0 when not reported).

    Raises:
        PipelineError: ``<domain>.endpoint_failed`` when it is not a text completion.
    """
    try:
        text = answer["choices"][0]["text"] or ""
    except (KeyError, IndexError, TypeError):
        raise PipelineError(
            f"{domain}.endpoint_failed", f"the {domain} endpoint's answer is not a completion"
        ) from None
    return str(text), _tokens(answer)


def _tokens(answer: dict[str, Any]) -> int:
    usage = answer.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0


class HiddenHost(logging.Filter):
    """Drops the HTTP libraries' log records that name the endpoint's host (httpx logs each
    request's URL) from creation until :meth:`remove`."""

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__()
        self.host = urlsplit(endpoint.base_url).hostname or endpoint.base_url
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.host or self.host not in record.getMessage()

    def remove(self) -> None:
        for name in _HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self)


class ChatEndpoint:
    """One prompt at a time as a chat completion at temperature 0 (a judge's or a grader's
    question); failures raise ``PipelineError`` codes under ``role`` (``judge.endpoint_refused``,
    ``grader.endpoint_unreachable``...)."""

    def __init__(self, endpoint: Endpoint, *, role: str, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.role = role
        self.client = httpx.Client(timeout=timeout_s)
        self.hidden = HiddenHost(endpoint)

    def close(self) -> None:
        self.client.close()
        self.hidden.remove()

    def ask(self, text: str, *, max_tokens: int) -> str:
        """The reply's text (see :func:`post` for the retries and the errors)."""
        body = {
            "messages": [{"role": "user", "content": text}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        answer = post(self.client, self.endpoint, "/chat/completions", body, domain=self.role)
        return chat_text(answer, domain=self.role)[0]
