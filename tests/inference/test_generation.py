"""Generation through the service (in-process) against transformers' own ``generate``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.inference.conftest import CONTEXT, key, spec

PROMPT = "the miller ground the"


def reference(path: Path, ids: list[int], max_new: int, **kwargs: Any) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(path)
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False, **kwargs)
    return list(out[0, len(ids) :].tolist())


def sse(response: Any) -> list[dict[str, Any]]:
    events = [
        line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("which", ["llama_dir", "gpt2_dir"])
def test_greedy_equals_generate(
    client: TestClient, which: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(which)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(PROMPT)["input_ids"]
    # No eos: a random model might emit one; generate must then run the full 20 tokens too.
    expected = reference(path, ids, 20, eos_token_id=None, pad_token_id=0)
    resp = client.post(
        "/v1/completions",
        json={"model": spec(path), "prompt": PROMPT, "max_tokens": 20, "temperature": 0},
    )
    assert resp.status_code == 200, resp.text
    body = Completion.model_validate(resp.json())
    eos = AutoModelForCausalLM.from_pretrained(path).generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    cut = next((i for i, t in enumerate(expected) if t in eos_ids), len(expected))
    assert body.choices[0].text == tokenizer.decode(expected[:cut], skip_special_tokens=True)
    assert body.choices[0].finish_reason == ("stop" if cut < 20 else "length")
    assert body.usage is not None
    assert body.usage.prompt_tokens == len(ids)
    assert body.usage.completion_tokens == min(cut + 1, 20)
    assert body.usage.total_tokens == len(ids) + body.usage.completion_tokens


def test_stream_matches_plain_token_by_token(client: TestClient, gpt2_dir: Path) -> None:
    request = {"model": spec(gpt2_dir), "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = client.post("/v1/completions", json=request).json()
    resp = client.post(
        "/v1/completions",
        json={**request, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    # (The SDK reads legacy stream chunks without validating them: finish_reason is null there.)
    chunks = sse(resp)
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert "".join(texts) == plain["choices"][0]["text"]
    # One chunk per token (no stop strings; a chunk waits only for an incomplete character).
    pieces = sum(1 for c in chunks if c["choices"] and c["choices"][0]["text"])
    assert pieces > plain["usage"]["completion_tokens"] // 2
    assert chunks[-2]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    final = Completion.model_validate(chunks[-2])
    assert final.id == chunks[0]["id"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]


def test_stop_strings_are_cut(client: TestClient, gpt2_dir: Path) -> None:
    request = {"model": spec(gpt2_dir), "prompt": PROMPT, "max_tokens": 24, "temperature": 0}
    full = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:6]
    expected = full[: full.index(stop)]
    body = client.post("/v1/completions", json={**request, "stop": [stop, "never-in-it"]}).json()
    assert body["choices"][0]["text"] == expected
    assert body["choices"][0]["finish_reason"] == "stop"
    streamed = sse(client.post("/v1/completions", json={**request, "stop": stop, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in streamed) == expected
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_n_with_seed_is_reproducible(client: TestClient, gpt2_dir: Path) -> None:
    request = {
        "model": spec(gpt2_dir),
        "prompt": PROMPT,
        "max_tokens": 10,
        "temperature": 1.0,
        "top_p": 0.9,
        "n": 3,
        "seed": 1234,
    }
    first = client.post("/v1/completions", json=request).json()
    second = client.post("/v1/completions", json=request).json()
    texts = [c["text"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2]
    assert texts == [c["text"] for c in second["choices"]]
    assert len(set(texts)) > 1  # three samples, not one copied
    other = client.post("/v1/completions", json={**request, "seed": 99}).json()
    assert [c["text"] for c in other["choices"]] != texts
    streamed = sse(client.post("/v1/completions", json={**request, "stream": True}))
    for i, text in enumerate(texts):
        assert (
            "".join(c["choices"][0]["text"] for c in streamed if c["choices"][0]["index"] == i)
            == text
        )


def test_logprobs_finite_and_sorted(client: TestClient, llama_dir: Path) -> None:
    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": spec(llama_dir),
            "messages": [{"role": "user", "content": "hello mill"}],
            "max_tokens": 6,
            "logprobs": True,
            "top_logprobs": 4,
            "temperature": 0,
        },
    )
    body = ChatCompletion.model_validate(resp.json())
    content = body.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content
    for entry in content:
        assert math.isfinite(entry.logprob) and entry.logprob <= 0
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True)
        assert all(math.isfinite(t) for t in tops)
        # Greedy: the chosen token is the most likely one.
        assert entry.logprob == pytest.approx(tops[0])
    legacy = client.post(
        "/v1/completions",
        json={
            "model": spec(llama_dir),
            "prompt": PROMPT,
            "max_tokens": 5,
            "logprobs": 3,
            "temperature": 0,  # deterministic: a sampled end-of-turn would shorten it
        },
    ).json()["choices"][0]["logprobs"]
    assert (
        len(legacy["tokens"]) == len(legacy["token_logprobs"]) == len(legacy["top_logprobs"]) == 5
    )
    assert all(math.isfinite(v) for v in legacy["token_logprobs"])
    for top in legacy["top_logprobs"]:
        values = list(top.values())
        assert values == sorted(values, reverse=True)


def test_chat_template_applied_and_stops_at_end_of_turn(
    tmp_path: Path, llama_dir: Path, client: TestClient
) -> None:
    """A copy of the tiny Llama whose head makes <|im_end|> win soon, so the turn ends."""
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    messages = [{"role": "user", "content": "hello mill"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    free = reference(llama_dir, ids, 4, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():  # <|im_end|> takes over the row of the 3rd greedy token, scaled up
        model.lm_head.weight[end] = model.lm_head.weight[free[2]] * 4
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    expected = reference(tmp_path, ids, 30)  # generate stops at generation_config's eos
    assert expected[-1] == end and len(expected) < 30

    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": spec(tmp_path, id_="turns"),
            "messages": messages,
            "max_tokens": 30,
            "temperature": 0,
        },
    )
    body = ChatCompletion.model_validate(resp.json())
    assert body.model == "turns"
    assert body.usage is not None and body.usage.prompt_tokens == len(ids)
    assert body.choices[0].finish_reason == "stop"
    assert body.choices[0].message.content == tokenizer.decode(
        expected[:-1], skip_special_tokens=True
    )
    assert body.usage.completion_tokens == len(expected)

    stream = sse(
        client.post(
            "/v1/chat/completions",
            json={
                "model": spec(tmp_path, id_="turns"),
                "messages": messages,
                "max_tokens": 30,
                "temperature": 0,
                "stream": True,
            },
        )
    )
    chunks = [ChatCompletionChunk.model_validate(c) for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks) == body.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_prompt_longer_than_context_is_400(client: TestClient, gpt2_dir: Path) -> None:
    resp = client.post(
        "/v1/completions",
        json={"model": spec(gpt2_dir), "prompt": "hello mill " * CONTEXT, "max_tokens": 4},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"maximum context length is {CONTEXT} tokens" in error["message"]
    # Near the edge it generates until the context is full and says "length".
    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    k = max(
        k for k in range(1, CONTEXT) if len(tokenizer("hello " * k)["input_ids"]) <= CONTEXT - 3
    )
    prompt = "hello " * k
    n_prompt = len(tokenizer(prompt)["input_ids"])
    assert CONTEXT - 6 < n_prompt < CONTEXT
    body = client.post(
        "/v1/completions",
        json={"model": spec(gpt2_dir), "prompt": prompt, "max_tokens": 50, "temperature": 0},
    ).json()
    assert body["usage"]["completion_tokens"] <= CONTEXT - n_prompt
    if body["choices"][0]["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == CONTEXT - n_prompt


def test_invalid_requests_are_400(client: TestClient, gpt2_dir: Path, tmp_path: Path) -> None:
    bad = client.post(
        "/v1/completions", json={"model": spec(gpt2_dir), "prompt": "x", "temperature": 5}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"
    missing = client.post("/v1/completions", json={"model": spec(tmp_path / "nope"), "prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    pickled = client.post("/v1/completions", json={"model": spec(tmp_path), "prompt": "x"})
    assert pickled.status_code == 400 and "safetensors" in pickled.json()["error"]["message"]
    no_template = client.post(
        "/v1/chat/completions",
        json={"model": spec(gpt2_dir), "messages": [{"role": "user", "content": "hi"}]},
    )
    assert (
        no_template.status_code == 400 and "chat template" in no_template.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("temperature", "NaN"),
        ("temperature", "1e999"),
        ("top_p", "Infinity"),
        ("top_p", "-Infinity"),
        ("seed", str(2**64)),
    ],
)
def test_non_finite_numbers_and_huge_seeds_are_400_naming_the_field(
    client: TestClient, gpt2_dir: Path, field: str, raw: str
) -> None:
    # Python's JSON parser takes NaN and Infinity; torch's generator crashes on a seed past 64 bits.
    body = f'{{"model": {json.dumps(spec(gpt2_dir))}, "prompt": "x", "{field}": {raw}}}'
    answer = client.post(
        "/v1/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == field
    assert ("finite" if field != "seed" else "less than or equal") in error["message"]


def test_load_errors_are_stable_codes_without_server_paths(
    client: TestClient, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # no model_type: transformers names the folder
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model.gguf").write_bytes(b"not a gguf")
    cases = [
        (spec(tmp_path / "missing"), 404, "model_not_found"),
        (spec(broken), 400, "model_load_failed"),
        (spec(tmp_path / "missing", format_="gguf"), 404, "model_not_found"),
        (spec(gguf, format_="gguf"), 400, "model_load_failed"),
    ]
    for model, status, code in cases:
        answer = client.post("/v1/completions", json={"model": model, "prompt": "x"})
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
        assert str(tmp_path) not in answer.text and "/tmp" not in answer.text, answer.text


def test_models_are_store_keys_never_paths(
    client: TestClient, gpt2_dir: Path, tmp_path: Path
) -> None:
    """A caller names keys under the service's store; the API sends the keys its ownership
    check resolved, and nothing else on the disk can be loaded."""
    escape = tmp_path / "escape"
    escape.symlink_to(gpt2_dir.parent.parent.parent)  # out of the store, through a link
    for path in (str(gpt2_dir), f"{key(gpt2_dir)}/../../..", "../etc", ""):
        model = {**spec(gpt2_dir), "path": path}
        answer = client.post("/v1/completions", json={"model": model, "prompt": "x"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "model.path"
    adapter = {**spec(gpt2_dir), "adapter_path": "/etc"}
    answer = client.post("/v1/completions", json={"model": adapter, "prompt": "x"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "model.adapter_path"
    linked = {**spec(gpt2_dir), "path": f"{key(tmp_path)}/{escape.name}"}
    answer = client.post("/v1/completions", json={"model": linked, "prompt": "x"})
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"
