"""LoRA fine-tunes of one base share one loaded copy of it and decode in its batch: each answers
as it does alone and as its merged model does, and the budget counts the base once."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from inference.engine import ModelRef
from inference.transformers_engine import TransformersEngine
from tests.inference.conftest import CONTEXT, make_app, spec
from tests.inference.test_service import _wait_for
from tests.timing import wait_for

PROMPTS = ["the miller ground the", "a small cat sat on", "hello world, hello"]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def second_adapter(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    """Another fine-tune of the same base: other modules, a causal-LM task type (so peft wraps
    it in ``PeftModelForCausalLM``), random non-zero B."""
    out = tmp_path_factory.mktemp("adapter2")
    torch.manual_seed(3)
    base = LlamaForCausalLM.from_pretrained(llama_dir)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(base, config).save_pretrained(str(out))
    return out


def merged_reference(base: Path, adapter: Path | None, prompt: str) -> str:
    """Greedy text of the adapter merged into its base (``merge_and_unload``), cut at eos."""
    model: Any = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    new = out[0, len(ids) :].tolist()
    eos = {model.generation_config.eos_token_id, tokenizer.eos_token_id}
    cut = next((i for i, t in enumerate(new) if t in eos), len(new))
    return str(tokenizer.decode(new[:cut], skip_special_tokens=True))


def slowed(engine: TransformersEngine, base: Path, pause: float) -> Any:
    """The loaded base with each forward ``pause`` s longer, so requests in flight overlap."""
    loaded = engine._loaded(ModelRef("base", base))
    loaded.model.register_forward_pre_hook(lambda *_: time.sleep(pause))
    return loaded


def test_two_adapters_and_their_base_share_one_copy_and_one_batch(
    llama_dir: Path, adapter_dir: Path, second_adapter: Path
) -> None:
    engine = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu", max_batch=16)
    loaded = slowed(engine, llama_dir, pause=0.003)
    weight = loaded.model.model.layers[0].self_attn.q_proj.weight
    pointer = weight.data_ptr()
    batcher = loaded.batcher
    app = make_app(engine, concurrency=16, queue_size=16)
    models = {
        "base": spec(llama_dir, id_="base"),
        "ft-a": spec(llama_dir, adapter_dir, id_="ft-a"),
        "ft-b": spec(llama_dir, second_adapter, id_="ft-b"),
    }
    jobs = [(name, prompt) for name in models for prompt in PROMPTS]

    async def scenario() -> tuple[list[str], list[str], dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:

            async def text(name: str, prompt: str) -> str:
                body = {"model": models[name], "prompt": prompt, "max_tokens": MAX_TOKENS}
                resp = await c.post("/v1/completions", json={**body, "temperature": 0})
                assert resp.status_code == 200, resp.text
                return str(resp.json()["choices"][0]["text"])

            solo = [await text(name, prompt) for name, prompt in jobs]
            assert batcher.stats.peak_rows == 1
            together = await asyncio.gather(*(text(name, prompt) for name, prompt in jobs))
            health = (await c.get("/health")).json()
            return solo, list(together), health

    solo, together, health = asyncio.run(scenario())
    # Token for token: concurrent = solo = the merged model's own greedy output.
    assert together == solo
    assert batcher.stats.peak_rows >= 3  # base and adapter rows really shared the batch
    folders = {"base": None, "ft-a": adapter_dir, "ft-b": second_adapter}
    merged = [merged_reference(llama_dir, folders[name], prompt) for name, prompt in jobs]
    assert solo == merged
    by_model = {
        name: [t for (n, _), t in zip(jobs, solo, strict=True) if n == name] for name in models
    }
    assert by_model["ft-a"] != by_model["base"] and by_model["ft-b"] != by_model["base"]
    assert by_model["ft-a"] != by_model["ft-b"]

    # One base: one cache entry and one set of base tensors, the adapters as its children.
    base_key = ModelRef("base", llama_dir).key
    assert engine.cache.keys(children=False) == [base_key]
    assert len(engine.cache.keys(parents=False)) == 2
    assert health["loaded_models"] == 1 and health["loaded_adapters"] == 2
    assert engine._loaded(ModelRef("ft-b", llama_dir, second_adapter)) is loaded
    assert engine.cache.loads == 3  # the base once, each adapter once
    assert loaded.shared is not None
    peft_model = loaded.shared.peft
    assert peft_model.get_base_model() is loaded.model
    assert sorted(peft_model.peft_config) == ["lora1", "lora2"]
    lora_layer = loaded.model.model.layers[0].self_attn.q_proj  # peft's LoRA layer now
    assert sorted(lora_layer.lora_A) == ["lora1", "lora2"]
    assert lora_layer.base_layer.weight is weight and weight.data_ptr() == pointer
    base_bytes = sum(f.stat().st_size for f in llama_dir.glob("*.safetensors"))
    adapter_bytes = [
        engine.load(ModelRef(name, llama_dir, path)).memory_bytes - loaded.memory_bytes
        for name, path in (("ft-a", adapter_dir), ("ft-b", second_adapter))
    ]
    assert min(adapter_bytes) > 0
    assert engine.cache.used_bytes == loaded.memory_bytes + sum(adapter_bytes)
    assert engine.cache.used_bytes < 2 * base_bytes
    wait_for(lambda: batcher.idle, timeout=5, interval=0.02, what="the decode loop to end")


def test_evicting_an_adapter_frees_only_it(
    llama_dir: Path, adapter_dir: Path, second_adapter: Path
) -> None:
    """A budget with room for the base and one adapter: the second adapter evicts the first,
    which detaches from the base; the base stays loaded and is not reloaded."""
    probe = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu")
    a, b = ModelRef("a", llama_dir, adapter_dir), ModelRef("b", llama_dir, second_adapter)
    sizes = [probe.load(ref).memory_bytes for ref in (ModelRef("base", llama_dir), a, b)]
    base, size_a, size_b = sizes[0], sizes[1] - sizes[0], sizes[2] - sizes[0]
    engine = TransformersEngine(
        memory_budget_bytes=base + max(size_a, size_b) + min(size_a, size_b) // 2, device="cpu"
    )
    engine.load(a)
    loaded = engine._loaded(a)
    assert loaded.shared is not None and loaded.shared.adapters == ["lora1"]
    engine.load(b)
    assert engine.cache.keys(children=False) == [ModelRef("base", llama_dir).key]
    assert engine.cache.keys(parents=False) == [b.key]
    assert engine._loaded(b) is loaded and loaded.shared.adapters == ["lora2"]
    assert engine.cache.loads == 3 and engine.cache.evictions == 1
    assert engine.cache.used_bytes <= engine.cache.budget_bytes
    # The evicted adapter comes back on the same base, without reloading it.
    engine.load(a)
    assert engine._loaded(a) is loaded and loaded.shared.adapters == ["lora3"]
    assert engine.cache.loads == 4


def test_an_adapter_attaches_while_its_base_is_mid_generation(
    llama_dir: Path, adapter_dir: Path
) -> None:
    """The base alone is decoding when the first adapter request arrives: the adapter attaches
    to it between steps, its rows join the running batch, and neither answer changes."""
    engine = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu", max_batch=4)
    loaded = slowed(engine, llama_dir, pause=0.03)
    batcher = loaded.batcher
    app = make_app(engine, concurrency=4, queue_size=4)
    base: dict[str, Any] = {"model": spec(llama_dir, id_="base"), "prompt": PROMPTS[0]}
    base.update(max_tokens=CONTEXT - 16, temperature=0)
    tuned: dict[str, Any] = {"model": spec(llama_dir, adapter_dir, id_="ft"), "prompt": PROMPTS[1]}
    tuned.update(max_tokens=MAX_TOKENS, temperature=0)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            solo = (await c.post("/v1/completions", json=base)).json()
            assert loaded.shared is not None and loaded.shared.adapters == []
            running = asyncio.create_task(c.post("/v1/completions", json=base))
            await _wait_for(lambda: batcher.rows == 1)
            answer = (await c.post("/v1/completions", json=tuned)).json()
            assert not running.done()  # the adapter's request ran beside the base's
            return solo, (await running).json(), answer

    solo, beside, answer = asyncio.run(scenario())
    assert solo["usage"]["completion_tokens"] == CONTEXT - 16  # long enough to overlap
    assert beside["choices"][0]["text"] == solo["choices"][0]["text"]
    assert answer["choices"][0]["text"] == merged_reference(llama_dir, adapter_dir, PROMPTS[1])
    assert batcher.stats.peak_rows == 2 and engine.cache.loads == 2


def test_a_broken_adapter_fails_alone_and_leaves_its_base_as_it_was(
    tmp_path_factory: pytest.TempPathFactory, llama_dir: Path, adapter_dir: Path
) -> None:
    """Weights that do not fit the base fail that model's requests with a stable code; the
    half-loaded adapter is taken out of the base, whose answers and other adapters stay."""
    broken = tmp_path_factory.mktemp("broken")
    shutil.copy(adapter_dir / "adapter_config.json", broken)
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    save_file(
        {k: v[:, :1].contiguous() for k, v in weights.items()}, broken / "adapter_model.safetensors"
    )
    engine = TransformersEngine(memory_budget_bytes=64 * 2**20, device="cpu")
    app = make_app(engine)
    with TestClient(app) as client:

        def ask(adapter: Path | None) -> Any:
            model = spec(llama_dir, adapter, id_="m")
            body = {"model": model, "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS}
            return client.post("/v1/completions", json={**body, "temperature": 0})

        before = ask(None).json()["choices"][0]["text"]
        for _ in range(2):  # the first try wraps the base, the second adds to the wrapper
            failed = ask(broken)
            assert failed.status_code == 400, failed.text
            assert failed.json()["error"]["code"] == "model_load_failed"
            assert ask(None).json()["choices"][0]["text"] == before
            good = ask(adapter_dir).json()["choices"][0]["text"]
            assert good == merged_reference(llama_dir, adapter_dir, PROMPTS[0])
    loaded = engine._loaded(ModelRef("m", llama_dir))
    assert loaded.shared is not None and len(loaded.shared.adapters) == 1
