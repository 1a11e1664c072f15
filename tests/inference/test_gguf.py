"""GGUF models through the inference service, in llama.cpp: the tiny ChatML Llama exported with the
quantize job's own writer, then called as a Hugging Face model is, by a real service process.

f32 weights run in llama.cpp with the same argmax as in torch, so greedy answers are compared
with the Hugging Face model's, text and token counts alike.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inference.engine import GenerationRequest, ModelRef, SamplingParams
from inference.llamacpp_engine import LlamaCppEngine, estimate_bytes
from inference.transformers_engine import _estimate_bytes
from pipeline.quantize.gguf_export import read_arch, write_gguf
from pipeline.quantize.vocab import read_vocab
from tests.inference.conftest import make_app, spec

CHAT = [
    {"role": "system", "content": "you keep the mill"},
    {"role": "user", "content": "hello mill"},
]


def export_gguf(
    model_dir: Path, out: Path, *, chat_template: bool = True, kind: str = "f32"
) -> Path:
    """The folder a quantize job registers: one GGUF file written by the pipeline."""
    from transformers import AutoModelForCausalLM

    info = read_arch(model_dir)
    vocab = read_vocab(model_dir, info.vocab_size)
    if not chat_template:
        vocab = dataclasses.replace(vocab, chat_template=None)
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    out.mkdir(parents=True, exist_ok=True)
    write_gguf(state, info, vocab, out / f"tiny-{kind}.gguf", kind, name="tiny")
    return out


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    return export_gguf(llama_dir, tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="module")
def untemplated_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    return export_gguf(llama_dir, tmp_path_factory.mktemp("gguf-plain"), chat_template=False)


def gguf(path: Path) -> dict[str, Any]:
    return spec(path, id_="tiny-gguf", format_="gguf")


def post(service: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{service}/v1/{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return dict(response.json())


def stream(service: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    import json

    with httpx.stream(
        "POST", f"{service}/v1/{path}", json={**body, "stream": True}, timeout=60
    ) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def answer(body: dict[str, Any]) -> tuple[list[str], list[str | None], dict[str, int]]:
    choices = body["choices"]
    texts = [c["message"]["content"] if "message" in c else c["text"] for c in choices]
    return texts, [c["finish_reason"] for c in choices], body["usage"]


@pytest.mark.slow
def test_greedy_completion_and_chat_answer_what_the_hugging_face_model_answers(
    service: str, llama_dir: Path, gguf_dir: Path
) -> None:
    completion = {"prompt": "the miller ground the", "max_tokens": 24, "temperature": 0}
    chat = {"messages": CHAT, "max_tokens": 24, "temperature": 0}
    for path, body in (("completions", completion), ("chat/completions", chat)):
        from_gguf = post(service, path, {**body, "model": gguf(gguf_dir)})
        from_hf = post(service, path, {**body, "model": spec(llama_dir)})
        assert from_gguf["model"] == "tiny-gguf"
        # Same text, same prompt tokens (the metadata's template rendered alike), same ending.
        assert answer(from_gguf) == answer(from_hf)
        assert from_gguf["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_streams_stop_at_a_stop_string_or_at_max_tokens(service: str, gguf_dir: Path) -> None:
    body = {"model": gguf(gguf_dir), "prompt": "hello river", "temperature": 0, "max_tokens": 30}
    whole = post(service, "completions", body)["choices"][0]["text"]
    assert len(whole) >= 6, whole
    stop = whole[3:5]
    expected = whole[: whole.index(stop)]

    chunks = stream(service, "completions", {**body, "stop": [stop]})
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    short = {**body, "max_tokens": 5, "stream_options": {"include_usage": True}}
    chunks = stream(service, "completions", short)
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"

    chat = stream(service, "chat/completions", {"model": gguf(gguf_dir), "messages": CHAT})
    assert chat[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chat[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_a_seed_repeats_the_sample_and_n_runs_each_choice(service: str, gguf_dir: Path) -> None:
    body = {
        "model": gguf(gguf_dir),
        "prompt": "the cat",
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 7,
        "n": 2,
        "logprobs": 2,
    }
    first, again = post(service, "completions", body), post(service, "completions", body)
    assert answer(first) == answer(again)
    texts, _, usage = answer(first)
    assert len(texts) == 2 and texts[0] != texts[1]
    other = post(service, "completions", {**body, "seed": 8})
    assert answer(other)[0] != texts
    total = 0
    for choice in first["choices"]:
        logprobs = choice["logprobs"]
        total += len(logprobs["tokens"])
        pairs = zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
        for chosen, top in pairs:
            # Two ids may decode alike (a partial UTF-8 byte): the text-keyed dict keeps one.
            assert chosen <= max(top.values()) <= 0 and 1 <= len(top) <= 2
    assert total == usage["completion_tokens"]


@pytest.mark.slow
def test_no_template_and_a_long_prompt_are_refused_as_for_hugging_face_models(
    service: str, gguf_dir: Path, untemplated_dir: Path, gpt2_dir: Path, llama_dir: Path
) -> None:
    chat = {"messages": CHAT, "max_tokens": 4}
    plain = httpx.post(
        f"{service}/v1/chat/completions", json={**chat, "model": gguf(untemplated_dir)}
    )
    hf = httpx.post(f"{service}/v1/chat/completions", json={**chat, "model": spec(gpt2_dir)})
    assert plain.status_code == hf.status_code == 400
    assert plain.json() == hf.json()
    assert "no chat template" in plain.json()["error"]["message"]

    long = {"prompt": "hello mill " * 100, "max_tokens": 4}
    for model in (gguf(gguf_dir), spec(llama_dir)):
        refused = httpx.post(f"{service}/v1/completions", json={**long, "model": model})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.slow
def test_a_quantised_model_runs_on_cpus_with_amx(
    service: str, tmp_path: Path, llama_dir: Path
) -> None:
    """q8_0 weights in llama.cpp's AMX buffers crash the process on AMX CPUs (SIGILL or SIGSEGV
    in its AMX matrix multiply, llama-cpp-python 0.3.36, this very model included): the service
    loads them into plain CPU buffers and keeps answering."""
    q8 = export_gguf(llama_dir, tmp_path / "q8", kind="q8_0")
    body = {"model": gguf(q8), "prompt": "the miller", "max_tokens": 8, "temperature": 0}
    assert post(service, "completions", body)["usage"]["completion_tokens"] > 0
    assert httpx.get(f"{service}/health").json()["status"] == "ok"


def test_gguf_and_hugging_face_models_share_one_budget(llama_dir: Path, gguf_dir: Path) -> None:
    hf, ggml = ModelRef("hf", llama_dir), ModelRef("q", gguf_dir, format="gguf")
    sizes = (_estimate_bytes(hf), estimate_bytes(ggml))
    # Room for either, not for both: loading one evicts the other, whatever its engine.
    app = make_app(memory_budget_bytes=int(1.5 * max(sizes)))
    engine = app.state.engine
    with TestClient(app) as client:
        for model in (spec(llama_dir), gguf(gguf_dir)):
            body = {"model": model, "prompt": "hello", "max_tokens": 2}
            assert client.post("/v1/completions", json=body).status_code == 200
        assert engine.cache.keys() == [ggml.key] and engine.cache.evictions == 1
        health = client.get("/health").json()
        assert health["loaded_models"] == 1
        assert 0 < health["memory_used_bytes"] <= health["memory_budget_bytes"]


def test_cancel_stops_between_tokens(gguf_dir: Path) -> None:
    engine = make_app().state.engine.engines["gguf"]
    assert isinstance(engine, LlamaCppEngine)
    cancel = threading.Event()
    params = SamplingParams(max_tokens=40, temperature=1.0, seed=1, n=2)
    generation = engine.stream(
        ModelRef("q", gguf_dir, format="gguf"), GenerationRequest(params, prompt="the"), cancel
    )
    deltas = []
    for delta in generation:
        deltas.append(delta)
        cancel.set()
    # The token after the cancel is never sampled: one delta, no finish, no second choice.
    assert len(deltas) == 1 and deltas[0].finish_reason is None
