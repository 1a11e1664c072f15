"""The vLLM engine: the setting and its startup error everywhere; the engine itself on CUDA.

The CUDA part builds its own small Llama (head size 64, as vLLM's attention kernels want) and
a LoRA adapter on it, so it runs with ``--noconftest`` on a GPU box (benchmarks/gpu_suite.sh).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import ValidationError

from inference.settings import InferenceSettings
from tests.serving import free_port
from tests.timing import scaled

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_CUDA = torch.cuda.is_available()


def test_the_engine_setting_reads_auto_or_vllm_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert InferenceSettings().engine == "auto"
    monkeypatch.setenv("GRISTMILL_INFERENCE_ENGINE", "vllm")
    assert InferenceSettings().engine == "vllm"
    monkeypatch.setenv("GRISTMILL_INFERENCE_ENGINE", "tgi")
    with pytest.raises(ValidationError, match="engine"):
        InferenceSettings()


@pytest.mark.skipif(HAS_VLLM and HAS_CUDA, reason="vLLM can run here: nothing to refuse")
def test_asking_for_vllm_where_it_cannot_run_stops_the_service_with_a_stable_code() -> None:
    env = {**os.environ, "GRISTMILL_INFERENCE_ENGINE": "vllm", "GRISTMILL_INFERENCE_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "app.cli", "inference", "--port", str(free_port())]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=scaled(60))
    code = "engine.no_cuda" if HAS_VLLM else "engine.vllm_missing"
    assert done.returncode != 0
    assert f"[{code}]" in done.stderr and "GRISTMILL_INFERENCE_ENGINE" in done.stderr
    assert "Traceback" not in done.stderr


gpu = pytest.mark.skipif(
    not (HAS_CUDA and HAS_VLLM),
    reason="needs a CUDA device and the vllm extra (pip install 'gristmill[vllm]')",
)


def build_models(root: Path) -> tuple[Path, Path]:
    """A small Llama with a ChatML tokenizer, and a LoRA adapter that changes its output."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.inference.conftest import build_tokenizer

    base, adapter = root / "base", root / "adapter"
    tokenizer = build_tokenizer(chat=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(base)  # vLLM runs fp32 checkpoints in fp16
    tokenizer.save_pretrained(base)
    lora = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(LlamaForCausalLM.from_pretrained(base), lora).save_pretrained(str(adapter))
    return base, adapter


@pytest.mark.gpu
@gpu
def test_vllm_serves_concurrent_requests_sampling_options_and_a_lora(tmp_path: Path) -> None:
    from inference.server import create_app

    build_models(tmp_path)
    settings = InferenceSettings(engine="vllm", model_root=tmp_path, concurrency=8, queue_size=8)
    app = create_app(settings)
    model = {"id": "base", "path": "base", "format": "huggingface"}
    tuned = {**model, "id": "tuned", "adapter_path": "adapter"}
    prompts = ["the miller", "a small cat sat on", "hello", "bread and flour"]

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300) as c:

            async def complete(**body: Any) -> dict[str, Any]:
                resp = await c.post("/v1/completions", json={"model": model, **body})
                assert resp.status_code == 200, resp.text
                return dict(resp.json())

            async def text(i: int) -> str:
                out = await complete(prompt=prompts[i], max_tokens=16, temperature=0)
                return str(out["choices"][0]["text"])

            solo = [await text(i) for i in range(4)]
            assert list(await asyncio.gather(*(text(i) for i in range(4)))) == solo

            sampled = {"prompt": "the", "max_tokens": 12, "temperature": 1.0, "seed": 7, "n": 2}
            sampled["logprobs"] = 2
            first, again = await complete(**sampled), await complete(**sampled)
            assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
            assert len(first["choices"]) == 2
            top = first["choices"][0]["logprobs"]["top_logprobs"][0]
            assert 1 <= len(top) <= 2

            stop = solo[0][2:6]
            stopped = await complete(prompt=prompts[0], max_tokens=16, temperature=0, stop=[stop])
            assert stopped["choices"][0]["finish_reason"] == "stop"
            assert stop not in stopped["choices"][0]["text"]

            lora_body = {"prompt": prompts[0], "max_tokens": 16, "temperature": 0}
            lora = await c.post("/v1/completions", json={"model": tuned, **lora_body})
            assert lora.status_code == 200, lora.text
            assert lora.json()["choices"][0]["text"] != solo[0]

    asyncio.run(scenario())


def test_vllm_cumulative_outputs_become_deltas_with_their_logprobs() -> None:
    """vLLM reports each choice's whole text and token ids so far; the service streams what is
    new (checked here without vLLM, on outputs shaped as its ``CompletionOutput``)."""
    from types import SimpleNamespace as Out

    from inference.vllm_engine import to_delta

    def step(chosen: int, rank: int) -> dict[int, Any]:
        entries = {
            5: Out(logprob=-0.1, rank=1, decoded_token="a"),
            6: Out(logprob=-2.0, rank=2, decoded_token="b"),
        }
        entries.setdefault(chosen, Out(logprob=-5.0, rank=rank, decoded_token="z"))
        return entries

    seen_text, seen_tokens = [0, 0], [0, 0]
    first = Out(
        index=1, text="ab", token_ids=[5, 6], logprobs=[step(5, 1), step(6, 2)], finish_reason=None
    )
    delta = to_delta(first, seen_text, seen_tokens, 1)
    assert delta is not None and (delta.index, delta.text, delta.tokens) == (1, "ab", 2)
    assert [e.token for e in delta.logprobs] == ["a", "b"]
    assert [[t.token for t in e.top] for e in delta.logprobs] == [["a"], ["a"]]
    done = Out(
        index=1,
        text="abz",
        token_ids=[5, 6, 9],
        logprobs=[step(5, 1), step(6, 2), step(9, 7)],
        finish_reason="stop",
    )
    last = to_delta(done, seen_text, seen_tokens, 1)
    assert last is not None and (last.text, last.tokens, last.finish_reason) == ("z", 1, "stop")
    assert last.logprobs[0].logprob == -5.0
    aborted = Out(index=0, text="x", token_ids=[5], logprobs=None, finish_reason="abort")
    assert to_delta(aborted, seen_text, seen_tokens, None) is None
