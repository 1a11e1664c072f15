"""``/v1/chat/completions`` and ``/v1/completions`` as text streams: the pieces of the answer as
the server sends them (Server-Sent Events), so a terminal can print each token as it comes.

Closing the iterator early (Ctrl-C, a ``break``) closes the connection, and the server stops
generating at its next token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from client.http import GristmillClient

READ_TIMEOUT_S = 600.0
"""The longest wait for the next piece: a large model on a CPU reads a long prompt slowly."""

Message = dict[str, str]
"""``{"role": "system" | "user" | "assistant", "content": …}``."""


class Completions:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def chat(self, model: str, messages: list[Message], **params: Any) -> Iterator[str]:
        """The assistant's answer to ``messages``, piece by piece."""
        body = {"model": model, "messages": messages, **_given(params)}
        for choice in self._stream("/chat/completions", body):
            if content := choice.get("delta", {}).get("content"):
                yield str(content)

    def complete(self, model: str, prompt: str, **params: Any) -> Iterator[str]:
        """What follows ``prompt``, piece by piece."""
        body = {"model": model, "prompt": prompt, **_given(params)}
        for choice in self._stream("/completions", body):
            if text := choice.get("text"):
                yield str(text)

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from client.http import ApiError

        # No retry: a generation is not idempotent, and a dropped stream is shown as it is.
        timeout = httpx.Timeout(self.client.timeout, read=READ_TIMEOUT_S)
        request = {**body, "stream": True}
        with self.client.http.stream("POST", path, json=request, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return
                event = json.loads(data)
                if "error" in event:  # an error after the headers were sent
                    error = event["error"]
                    raise ApiError(502, str(error.get("message")), error.get("code"))
                yield from event.get("choices", ())


def _given(params: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters the user set: the server's defaults apply to the rest."""
    return {k: v for k, v in params.items() if v is not None}
