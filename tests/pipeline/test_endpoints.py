"""Calls to an OpenAI-compatible endpoint (``pipeline.parts.endpoints``) against a loopback
server that answers from a script: 429 and 5xx are retried up to the limit, a refused key is
final at once, a server that never answers or answers garbage is a stable error, and no error
or ``repr`` repeats the key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Header, Response

from pipeline.parts.endpoints import Endpoint, chat_text, completion_text, post
from pipeline.types import PipelineError
from tests.serving import free_port, serve_in_thread

KEY = "sk-parts-0123456789abcdefghijklmnopqrstuvwxyz"
CHAT = {"choices": [{"message": {"content": "hello"}}], "usage": {"completion_tokens": 1}}


class Script:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.calls: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Script]]:
    script, app = Script(), FastAPI()

    @app.post("/v1/chat/completions", response_model=None)
    def chat(body: dict[str, Any], authorization: str = Header("")) -> Any:
        script.calls.append({**body, "authorization": authorization})
        status = script.statuses.pop(0) if script.statuses else 200
        if status == 299:  # 200 with a body that is not JSON
            return Response("not json", media_type="text/plain")
        return Response(status_code=status) if status != 200 else CHAT

    with serve_in_thread(app, log_level="warning") as url:
        yield f"{url}/v1", script


def call(url: str, script: Script, *statuses: int) -> dict[str, Any]:
    script.statuses, script.calls = list(statuses), []
    with httpx.Client(timeout=10) as client:
        endpoint = Endpoint(url, "m-1", KEY)
        return post(client, endpoint, "/chat/completions", {"x": 1}, domain="t", backoff_s=0.0)


def test_a_throttled_or_failing_endpoint_is_retried_and_then_answers(
    served: tuple[str, Script],
) -> None:
    url, script = served
    answer = call(url, script, 429, 503)
    assert chat_text(answer, domain="t") == ("hello", 1)
    assert len(script.calls) == 3
    assert script.calls[-1] == {"x": 1, "model": "m-1", "authorization": f"Bearer {KEY}"}


@pytest.mark.parametrize(
    ("statuses", "code", "calls"),
    [
        ((401,), "t.endpoint_refused", 1),  # final at once: retrying will not fix a key
        ((403,), "t.endpoint_refused", 1),
        ((500, 502, 503), "t.endpoint_failed", 3),  # the retries ran out
        ((400,), "t.endpoint_failed", 1),
        ((299,), "t.endpoint_failed", 1),
    ],
)
def test_endpoint_failures_are_stable_codes_without_the_key(
    served: tuple[str, Script], statuses: tuple[int, ...], code: str, calls: int
) -> None:
    url, script = served
    with pytest.raises(PipelineError) as caught:
        call(url, script, *statuses)
    assert caught.value.code == code and len(script.calls) == calls
    assert KEY not in str(caught.value) + repr(caught.value)


def test_an_endpoint_that_never_answers_is_unreachable() -> None:
    endpoint = Endpoint(f"http://127.0.0.1:{free_port()}/v1", "m-1", KEY)
    assert KEY not in repr(endpoint)
    with httpx.Client(timeout=5) as client, pytest.raises(PipelineError) as caught:
        post(client, endpoint, "/completions", {}, domain="t", backoff_s=0.0)
    assert caught.value.code == "t.endpoint_unreachable"


def test_answers_that_are_not_completions_are_refused() -> None:
    with pytest.raises(PipelineError, match="not a chat completion"):
        chat_text({"choices": []}, domain="t")
    with pytest.raises(PipelineError, match="not a completion"):
        completion_text({"choices": [{"message": {}}]}, domain="t")
    assert completion_text({"choices": [{"text": "go"}]}, domain="t") == ("go", 0)
