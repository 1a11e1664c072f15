"""Concurrent requests on one transformers model share its batch: same outputs as alone, and a
request that leaves (a client hanging up) gives its place to the next one at once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.batching import Batcher
from inference.engine import GenerationRequest, ModelRef, SamplingParams
from inference.transformers_engine import TransformersEngine
from tests.inference.conftest import make_app, spec
from tests.inference.test_service import PROMPT, _scope, _wait_for, long_request
from tests.timing import wait_for

PROMPTS = [
    "the miller",
    "a small cat sat on the warm stone and watched",
    "hello",
    "bread and flour, wind and water: the old mill",
    "the",
    "hello world, hello mill, hello river and",
    "watched the water turn",
    "every morning the miller ground the grain at the",
]


def slowed_engine(path: Path, max_batch: int, pause: float) -> tuple[TransformersEngine, Batcher]:
    """An engine of its own with ``path`` loaded and each forward ``pause`` s longer, so that
    requests in flight overlap however fast the machine is."""
    engine = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu", max_batch=max_batch)
    loaded = engine._loaded(ModelRef("tiny", path))
    loaded.model.register_forward_pre_hook(lambda *_: time.sleep(pause))
    assert loaded.batcher is not None
    return engine, loaded.batcher


def body(path: Path, i: int) -> dict[str, Any]:
    """Eight requests of different prompt lengths and lengths; two sampled with a seed, one
    with two choices: each must come out as it does alone."""
    sampled = {"temperature": 0.9, "top_p": 0.8, "seed": 11 + i} if i in (2, 5) else {}
    return {
        "model": spec(path),
        "prompt": PROMPTS[i],
        "max_tokens": 8 + 2 * i,
        "temperature": 0,
        "n": 2 if i == 3 else 1,
        **sampled,
    }


@pytest.mark.parametrize("which", ["llama_dir", "gpt2_dir"])
def test_eight_concurrent_requests_return_their_solo_outputs(
    which: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    engine, batcher = slowed_engine(path, max_batch=16, pause=0.003)
    app = make_app(engine, concurrency=8, queue_size=8)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:

            async def texts(i: int) -> list[str]:
                resp = await c.post("/v1/completions", json=body(path, i))
                assert resp.status_code == 200, resp.text
                return [choice["text"] for choice in resp.json()["choices"]]

            solo = [await texts(i) for i in range(8)]
            assert batcher.stats.peak_rows == 2  # alone (n=2 is one request's two rows)
            together = await asyncio.gather(*(texts(i) for i in range(8)))
            assert list(together) == solo
            assert batcher.stats.peak_rows >= 4  # they really shared the batch

    asyncio.run(scenario())
    assert app.state.stats.completed == 16
    wait_for(lambda: batcher.idle, timeout=5, interval=0.02, what="the decode loop to end")


def test_a_disconnect_mid_stream_frees_its_batch_slot(gpt2_dir: Path) -> None:
    """A batch of two is full (A, B) and C waits; A's client hangs up mid-stream: C joins and
    finishes while B is still generating."""
    engine, batcher = slowed_engine(gpt2_dir, max_batch=2, pause=0.02)
    app = make_app(engine, concurrency=4, queue_size=4)
    stream_a = json.dumps(long_request(gpt2_dir, max_tokens=55, stream=True)).encode()
    chunks_a: list[bytes] = []

    async def scenario() -> None:
        gone, sent = asyncio.Event(), False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": stream_a, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks_a.append(message["body"])

        a = asyncio.create_task(app(_scope("/v1/completions"), receive, send))
        await _wait_for(lambda: batcher.rows == 1)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            long_b = long_request(gpt2_dir, max_tokens=55, stream=True)
            b = asyncio.create_task(c.post("/v1/completions", json=long_b))
            await _wait_for(lambda: batcher.rows == 2)
            short_c = long_request(gpt2_dir, max_tokens=3)
            c_done = asyncio.create_task(c.post("/v1/completions", json=short_c))
            await _wait_for(lambda: batcher.waiting == 1)
            assert len(chunks_a) >= 2  # A is mid-stream
            gone.set()
            answer_c = await c_done
            assert answer_c.status_code == 200
            assert answer_c.json()["usage"]["completion_tokens"] == 3
            assert not b.done()  # C got A's place, not B's end
            await asyncio.wait_for(a, 30)
            answer_b = await b
            assert answer_b.status_code == 200 and answer_b.text.endswith("data: [DONE]\n\n")

    asyncio.run(scenario())
    assert app.state.stats.cancelled == 1 and app.state.stats.completed == 2
    wait_for(lambda: batcher.idle, timeout=5, interval=0.02, what="the decode loop to end")
    assert app.state.scheduler.admitted == 0


def test_a_request_cancelled_while_waiting_for_a_place_leaves_the_queue(gpt2_dir: Path) -> None:
    engine, batcher = slowed_engine(gpt2_dir, max_batch=1, pause=0.02)
    ref = ModelRef("tiny", gpt2_dir)
    params = GenerationRequest(SamplingParams(max_tokens=40, temperature=0), prompt=PROMPT)
    running, waiting = threading.Event(), threading.Event()
    first = engine.stream(ref, params, running)
    second = engine.stream(ref, params, waiting)
    next(iter(first))
    wait_for(lambda: batcher.rows == 1 and batcher.waiting == 1, timeout=5, what="a queue")
    waiting.set()
    assert list(second) == []  # ended, without a finish reason
    wait_for(lambda: batcher.waiting == 0, timeout=5, interval=0.02, what="the queue to empty")
    assert batcher.rows == 1  # the running one goes on
    rest = list(first)
    assert rest and rest[-1].finish_reason is not None  # it ran to its end
    assert batcher.stats.joined == 1
