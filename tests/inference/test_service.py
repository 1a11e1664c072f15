"""The service around the engine: queueing, timeouts, disconnects, adapters, the model LRU."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.engine import (
    ChatTemplate,
    Completion,
    Delta,
    GenerationRequest,
    GenerationStream,
    ModelInfo,
    ModelRef,
    ModelTooLarge,
    collect,
)
from inference.transformers_engine import TransformersEngine
from tests.inference.conftest import make_app, spec
from tests.timing import scaled, wait_for

PROMPT = "the miller ground the"


class SlowEngine:
    """The real engine, with a pause after each delta: a generation that takes a while."""

    def __init__(self, delay: float) -> None:
        self.inner = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu")
        self.delay = delay
        self.deltas = 0
        """Deltas generated so far, over all requests."""

    def load(self, model: ModelRef) -> ModelInfo:
        return self.inner.load(model)

    def chat_template(self, model: ModelRef) -> ChatTemplate | None:
        return self.inner.chat_template(model)

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        stream = self.inner.stream(model, request, cancel)

        def slow() -> Iterator[Delta]:
            for delta in stream:
                time.sleep(self.delay)
                self.deltas += 1
                yield delta

        return GenerationStream(stream.model, stream.prompt_tokens, slow())

    def generate(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> Completion:
        return collect(self.stream(model, request, cancel), request.params.n)


def long_request(path: Path, **extra: Any) -> dict[str, Any]:
    # No stop at eos: max_tokens is what ends it, so "how far it got" is measurable.
    return {"model": spec(path), "prompt": PROMPT, "max_tokens": 40, "temperature": 0, **extra}


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """``tests.timing.wait_for`` inside an event loop: the loop keeps serving while it waits."""
    deadline = time.monotonic() + scaled(timeout)
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_full_queue_is_429_with_retry_after(gpt2_dir: Path) -> None:
    app = make_app(SlowEngine(0.05), concurrency=1, queue_size=1, retry_after_seconds=3)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/completions", json=long_request(gpt2_dir)))
            await _wait_for(lambda: app.state.scheduler.running == 1)
            second = asyncio.create_task(c.post("/v1/completions", json=long_request(gpt2_dir)))
            await _wait_for(lambda: app.state.scheduler.admitted == 2)
            started = time.monotonic()
            third = await c.post("/v1/completions", json=long_request(gpt2_dir))
            assert time.monotonic() - started < 1.0  # refused at once, not queued
            assert third.status_code == 429
            assert third.headers["retry-after"] == "3"
            assert third.json()["error"]["code"] == "queue_full"
            health = (await c.get("/health")).json()
            assert health["running"] == 1 and health["waiting"] == 1
            assert (await first).status_code == 200
            assert (await second).status_code == 200  # the waiting one ran after
            after = await c.post("/v1/completions", json=long_request(gpt2_dir, max_tokens=2))
            assert after.status_code == 200

    asyncio.run(scenario())


def test_queue_size_zero_refuses_while_busy(gpt2_dir: Path) -> None:
    app = make_app(SlowEngine(0.05), concurrency=1, queue_size=0)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:
            first = asyncio.create_task(c.post("/v1/completions", json=long_request(gpt2_dir)))
            await _wait_for(lambda: app.state.scheduler.running == 1)
            busy = await c.post("/v1/completions", json=long_request(gpt2_dir))
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert (await first).status_code == 200

    asyncio.run(scenario())


def test_request_timeout_stops_generation(gpt2_dir: Path) -> None:
    app = make_app(SlowEngine(0.05), request_timeout_seconds=0.5)
    with TestClient(app) as client:
        started = time.monotonic()
        resp = client.post("/v1/completions", json=long_request(gpt2_dir))
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"
        assert time.monotonic() - started < scaled(3)
    wait_for(lambda: app.state.stats.cancelled >= 1, timeout=5, interval=0.02, what="a cancel")
    assert app.state.stats.cancelled == 1
    assert app.state.stats.tokens < 40


def _scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 5000),
        "server": ("test", 80),
    }


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_generation(gpt2_dir: Path, stream: bool) -> None:
    """Drive the ASGI app by hand: the client goes away after a few chunks (streamed) or once a
    few tokens were generated (not streamed: nothing is sent before the end)."""
    engine = SlowEngine(0.05)
    app = make_app(engine)
    body = json.dumps(long_request(gpt2_dir, stream=stream)).encode()
    chunks: list[bytes] = []

    async def scenario() -> None:
        gone = asyncio.Event()
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not stream:
                await _wait_for(lambda: engine.deltas >= 3)
                gone.set()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                chunks.append(message["body"])
                if len(chunks) >= 3:
                    gone.set()

        await asyncio.wait_for(app(_scope("/v1/completions"), receive, send), 10)

    asyncio.run(scenario())
    wait_for(lambda: app.state.stats.cancelled >= 1, timeout=5, interval=0.02, what="a cancel")
    assert app.state.stats.cancelled == 1
    assert app.state.stats.completed == 0
    assert app.state.stats.tokens < 20  # of 40: it stopped soon after the client left
    assert app.state.scheduler.admitted == 0  # the slot was given back


def test_adapter_loads_on_its_base_unmerged(
    client: TestClient, app: Any, llama_dir: Path, adapter_dir: Path
) -> None:
    messages = [{"role": "user", "content": "hello mill"}]

    def top(adapter: Path | None) -> list[float]:
        resp = client.post(
            "/v1/chat/completions",
            json={
                "model": spec(llama_dir, adapter, id_="ft" if adapter else "base"),
                "messages": messages,
                "max_tokens": 1,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": 5,
            },
        )
        assert resp.status_code == 200, resp.text
        entry = resp.json()["choices"][0]["logprobs"]["content"][0]
        return [t["logprob"] for t in entry["top_logprobs"]]

    base, tuned = top(None), top(adapter_dir)
    assert base != pytest.approx(tuned, abs=1e-3)
    # The service's numbers are peft's own for the adapter on its base.
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(llama_dir), adapter_dir
    )
    with torch.no_grad():
        logits = peft_model(torch.tensor([ids])).logits[0, -1]
    expected = torch.log_softmax(logits, -1).topk(5).values.tolist()
    assert tuned == pytest.approx(expected, abs=1e-4)
    loaded = app.state.engine.engines["huggingface"]._loaded(ModelRef("ft", llama_dir, adapter_dir))
    assert loaded.shared is not None  # served on the base, not merged into it
    assert (
        isinstance(loaded.shared.peft, PeftModel)
        and loaded.shared.peft.get_base_model() is loaded.model
    )


def test_lru_evicts_within_budget_and_refuses_too_big(llama_dir: Path, gpt2_dir: Path) -> None:
    sizes = {
        p: sum(f.stat().st_size for f in p.glob("*.safetensors")) for p in (llama_dir, gpt2_dir)
    }
    engine = TransformersEngine(memory_budget_bytes=int(max(sizes.values()) * 1.5), device="cpu")
    llama, gpt2 = ModelRef("a", llama_dir), ModelRef("b", gpt2_dir)
    engine.load(llama)
    engine.load(llama)
    assert engine.cache.loads == 1
    engine.load(gpt2)  # both do not fit: the least recently used goes
    assert engine.cache.keys() == [gpt2.key] and engine.cache.evictions == 1
    assert engine.cache.used_bytes <= engine.cache.budget_bytes
    small = TransformersEngine(memory_budget_bytes=min(sizes.values()) // 2, device="cpu")
    with pytest.raises(ModelTooLarge, match="memory budget"):
        small.load(gpt2)
    assert small.cache.loads == 0

    app = make_app(memory_budget_bytes=min(sizes.values()) // 2)
    with TestClient(app) as client:
        resp = client.post("/v1/completions", json={"model": spec(gpt2_dir), "prompt": "hi"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_too_large"


class CrashingEngine(SlowEngine):
    """An engine bug: a crash whose text names a server path."""

    def stream(
        self, model: ModelRef, request: GenerationRequest, cancel: threading.Event
    ) -> GenerationStream:
        raise RuntimeError("cannot open /srv/gristmill/store/models/m_1/model.safetensors")


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_crash_is_a_stable_code_without_its_text(gpt2_dir: Path, stream: bool) -> None:
    with TestClient(make_app(CrashingEngine(0))) as client:
        answer = client.post("/v1/completions", json={**long_request(gpt2_dir), "stream": stream})
    assert "/srv/" not in answer.text and "RuntimeError" not in answer.text
    assert answer.status_code == 500 and answer.json()["error"]["code"] == "generation_failed"


def test_only_the_token_holder_gets_generations(gpt2_dir: Path) -> None:
    token = "a-token-for-this-test-only"
    body = {"model": spec(gpt2_dir), "prompt": PROMPT, "max_tokens": 1}
    with TestClient(make_app(token=token)) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = client.post("/v1/completions", json=body, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"]["code"] == "invalid_service_token"
        # Refused before the body is looked at: a stranger learns nothing about validation.
        assert client.post("/v1/chat/completions", json={}).status_code == 401
        assert client.get("/health").status_code == 200
        ok = client.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200, ok.text


def test_one_tenants_burst_leaves_room_for_another(gpt2_dir: Path) -> None:
    app = make_app(
        SlowEngine(0.05), concurrency=1, queue_size=3, tenant_limit=2, retry_after_seconds=2
    )
    acme, globex = {"X-Gristmill-Tenant": "acme"}, {"X-Gristmill-Tenant": "globex"}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as c:

            def post(headers: dict[str, str]) -> Any:
                return c.post("/v1/completions", json=long_request(gpt2_dir), headers=headers)

            burst = [asyncio.create_task(post(acme)) for _ in range(2)]
            await _wait_for(lambda: app.state.scheduler.admitted == 2)
            refused = await post(acme)  # the queue has room, acme has its share
            assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
            assert refused.json()["error"]["code"] == "tenant_queue_full"
            admitted = asyncio.create_task(post(globex))
            await _wait_for(lambda: app.state.scheduler.admitted == 3)
            assert app.state.scheduler.by_tenant == {"acme": 2, "globex": 1}
            assert [(await r).status_code for r in (*burst, admitted)] == [200, 200, 200]
            assert app.state.scheduler.by_tenant == {}
            again = await c.post(
                "/v1/completions", json=long_request(gpt2_dir, max_tokens=2), headers=acme
            )
            assert again.status_code == 200  # a finished request gives its share back

    asyncio.run(scenario())
