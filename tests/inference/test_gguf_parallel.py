"""Concurrent requests on one GGUF model: each runs on one of the model's llama.cpp contexts
(``gguf_parallel``), answers what it answers alone, and waits, shown as waiting, while every
context is busy."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.engine import GenerationRequest, ModelRef, SamplingParams
from inference.llamacpp_engine import LlamaCppEngine, LlamaCppModel, estimate_bytes
from tests.inference.conftest import make_app, spec
from tests.inference.test_gguf import export_gguf
from tests.timing import scaled, wait_for

PROMPTS = ["the miller", "a small cat sat on the warm stone", "hello", "bread and flour, wind"]


@pytest.fixture(scope="module")
def q8_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    return export_gguf(llama_dir, tmp_path_factory.mktemp("gguf-q8"), kind="q8_0")


def body(path: Path, i: int) -> dict[str, Any]:
    return {
        "model": spec(path, id_="tiny-q8", format_="gguf"),
        "prompt": PROMPTS[i],
        "max_tokens": 12 + 4 * i,
        "temperature": 0,
    }


def gguf_engine(app: Any) -> LlamaCppEngine:
    engine = app.state.engine.engines["gguf"]
    assert isinstance(engine, LlamaCppEngine)
    return engine


def loaded(engine: LlamaCppEngine, path: Path) -> LlamaCppModel:
    return engine._loaded(ModelRef("tiny-q8", path.resolve(), format="gguf"))


def test_four_concurrent_greedy_requests_return_their_solo_outputs(q8_dir: Path) -> None:
    app = make_app(concurrency=4, queue_size=4, gguf_parallel=2)
    engine = gguf_engine(app)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:

            async def text(i: int) -> str:
                resp = await c.post("/v1/completions", json=body(q8_dir, i))
                assert resp.status_code == 200, resp.text
                return str(resp.json()["choices"][0]["text"])

            solo = [await text(i) for i in range(4)]
            assert len(set(solo)) > 1  # different prompts, different answers
            together = await asyncio.gather(*(text(i) for i in range(4)))
            assert list(together) == solo

    asyncio.run(scenario())
    model = loaded(engine, q8_dir)
    assert len(model.contexts) == 2 and model.pool.idle == 2  # every context given back
    # The budget counts the weights once and one KV cache per context.
    one, two = estimate_bytes(ModelRef("q", q8_dir, format="gguf"), 1), model.memory_bytes
    assert app.state.engine.cache.used_bytes == two and one < two < 2 * one


def test_requests_waiting_for_a_context_show_as_waiting_and_run_once_it_is_free(
    q8_dir: Path,
) -> None:
    app = make_app(concurrency=4, queue_size=4, gguf_parallel=1)
    engine = gguf_engine(app)
    model = loaded(engine, q8_dir)
    held = model.pool.acquire(threading.Event())  # the model's only context, busy as if generating

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            waiting = [
                asyncio.create_task(c.post("/v1/completions", json=body(q8_dir, i)))
                for i in range(2)
            ]

            async def health() -> dict[str, Any]:
                return dict((await c.get("/health")).json())

            deadline = asyncio.get_running_loop().time() + scaled(10)
            while (await health())["waiting"] != 2:
                assert asyncio.get_running_loop().time() < deadline, await health()
                await asyncio.sleep(0.02)
            # Both hold a service slot, but neither generates: waiting, not running.
            assert (await health())["running"] == 0 and engine.queued() == 2
            assert not any(task.done() for task in waiting)
            model.pool.release(held)
            for resp in await asyncio.gather(*waiting):
                assert resp.status_code == 200, resp.text
            final = await health()
            assert (final["running"], final["waiting"]) == (0, 0)

    asyncio.run(scenario())
    assert engine.queued() == 0 and app.state.stats.completed == 2


def test_a_request_cancelled_while_waiting_for_a_context_never_takes_one(q8_dir: Path) -> None:
    app = make_app(gguf_parallel=1)
    engine = gguf_engine(app)
    model = loaded(engine, q8_dir)
    held = model.pool.acquire(threading.Event())
    cancel = threading.Event()
    request = GenerationRequest(SamplingParams(max_tokens=8, temperature=0), prompt="hello")
    stream = engine.stream(ModelRef("tiny-q8", q8_dir.resolve(), format="gguf"), request, cancel)
    deltas: list[Any] = []
    reader = threading.Thread(target=lambda: deltas.extend(stream))
    reader.start()
    wait_for(lambda: engine.queued() == 1, timeout=10, interval=0.01, what="the request to wait")
    cancel.set()
    reader.join(timeout=scaled(10))
    assert not reader.is_alive() and deltas == [] and engine.queued() == 0
    model.pool.release(held)
    assert model.pool.idle == 1


def test_a_freed_context_goes_to_the_request_that_waited_longest(q8_dir: Path) -> None:
    app = make_app(gguf_parallel=1)
    engine = gguf_engine(app)
    model = loaded(engine, q8_dir)
    held = model.pool.acquire(threading.Event())
    ref = ModelRef("tiny-q8", q8_dir.resolve(), format="gguf")
    started: list[str] = []

    def run(name: str) -> None:
        request = GenerationRequest(SamplingParams(max_tokens=6, temperature=0), prompt=name)
        for _ in engine.stream(ref, request, threading.Event()):
            if name not in started:
                started.append(name)

    readers = []
    for count, name in enumerate(["hello", "the miller", "bread"], start=1):
        readers.append(threading.Thread(target=run, args=(name,)))
        readers[-1].start()
        waited = functools.partial(lambda n: engine.queued() == n, count)
        wait_for(waited, timeout=10, interval=0.01, what="the request to wait")
    model.pool.release(held)
    for reader in readers:
        reader.join(timeout=scaled(30))
    assert started == ["hello", "the miller", "bread"] and model.pool.idle == 1
