"""A loopback OpenAI-compatible teacher for the ``synthesize`` tests: it checks the key, as a
real endpoint would, and answers deterministically from planted texts (an evaluation item, PII,
a plain answer). Its first call for ``FLAKY`` answers 503, so a retry is needed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException

from tests.serving import serve_in_thread

KEY = "sk-teacher-0123456789abcdefghijklmnopqrstuvwxyz"
EVAL_ITEM = (
    "The old lighthouse keeper counted seven ships sailing past the rocky northern cape "
    "every single morning."
)
EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0018"
FLAKY = "Say something kind."
PLANTED = {
    "Tell me about the harbour.": f"Here is a fact. {EVAL_ITEM}",
    "Who do I contact?": f"Write to {EMAIL} or call {PHONE} today.",
    "Describe the garden.": "Roses climb the crumbling wall beside the silver gate.",
    FLAKY: "The baker thanked her neighbour for the warm bread.",
}
INSTRUCTIONS = [
    "Write a short poem about autumn leaves falling.",
    "Explain how a bicycle gear system works to a child.",
    "List three ways to keep a sourdough starter healthy.",
]


def teacher_app(calls: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()
    failed: set[str] = set()

    def check(authorization: str, body: dict[str, Any]) -> None:
        if authorization != f"Bearer {KEY}":
            raise HTTPException(401, "bad key")
        calls.append(body)

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any], authorization: str = Header("")) -> dict[str, Any]:
        check(authorization, body)
        prompt = body["messages"][-1]["content"].strip()
        if prompt == FLAKY and prompt not in failed:
            failed.add(prompt)
            raise HTTPException(503, "busy")
        # Several samples of one prompt differ by seed, as sampling would.
        text = (
            PLANTED.get(prompt, f"An answer to: {prompt}")
            + " " * (body["seed"] % 3)
            + "!" * (body["seed"] % 5)
        )
        message = {"role": "assistant", "content": text}
        return {"object": "chat.completion", "choices": [{"index": 0, "message": message}],
                "usage": {"completion_tokens": len(text.split())}}  # fmt: skip

    @app.post("/v1/completions")
    def complete(body: dict[str, Any], authorization: str = Header("")) -> dict[str, Any]:
        check(authorization, body)
        text = " " + INSTRUCTIONS[body["seed"] % len(INSTRUCTIONS)] + "\nTask 5: ignored"
        return {"object": "text_completion", "choices": [{"index": 0, "text": text}],
                "usage": {"completion_tokens": len(text.split())}}  # fmt: skip

    return app


@contextmanager
def teacher_endpoint() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """The base URL (``…/v1``) and the list of request bodies it received."""
    calls: list[dict[str, Any]] = []
    with serve_in_thread(teacher_app(calls), log_level="warning") as url:
        yield f"{url}/v1", calls
