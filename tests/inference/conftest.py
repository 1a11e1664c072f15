"""Tiny models built in the test session: a Llama with a ChatML template, a GPT-2, a LoRA adapter.

The tokenizer is a byte-level BPE trained here on a few sentences, so nothing comes from a hub.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from inference.engine import Engine
from inference.server import create_app
from inference.settings import InferenceSettings
from tests.serving import free_port
from tests.timing import scaled, wait_for

TEXT = [
    "the miller ground the grain at the mill by the river every morning",
    "a small cat sat on the warm stone and watched the water turn the wheel",
    "bread and flour, wind and water: the old mill kept the village fed",
    "hello world, hello mill, hello river and hello stone",
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONTEXT = 64


def build_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if chat:
        wrapped.chat_template = CHATML
    return wrapped


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Llama whose end-of-turn is ``<|im_end|>`` (generation_config's eos_token_id)."""
    out = tmp_path_factory.mktemp("llama")
    tokenizer = build_tokenizer(chat=True)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpt2")
    tokenizer = build_tokenizer(chat=False)
    torch.manual_seed(1)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=CONTEXT,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    out = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(2)
    base = LlamaForCausalLM.from_pretrained(llama_dir)
    # init_lora_weights=False: B is random rather than zero, so the adapter changes the output.
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(base, config).save_pretrained(out)
    return out


MODEL_ROOT: list[Path] = []
"""The test services' store: pytest's base temporary folder, where every model here is built
(set once per session by ``_model_root``)."""


@pytest.fixture(scope="session", autouse=True)
def _model_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    MODEL_ROOT[:] = [tmp_path_factory.getbasetemp().resolve()]


def key(path: Path) -> str:
    """The store key of a folder built in this session, as the API sends it."""
    return str(path.resolve().relative_to(MODEL_ROOT[0]))


def spec(
    path: Path, adapter: Path | None = None, id_: str = "tiny", format_: str = "huggingface"
) -> dict[str, Any]:
    return {
        "id": id_,
        "path": key(path),
        "adapter_path": key(adapter) if adapter else None,
        "format": format_,
    }


def make_app(engine: Engine | None = None, **overrides: Any) -> Any:
    settings = InferenceSettings(
        **{
            "device": "cpu",
            "memory_budget_bytes": 64 * 2**20,
            "model_root": MODEL_ROOT[0],
            **overrides,
        }
    )
    return create_app(settings, engine)


@pytest.fixture(scope="session")
def app() -> Any:
    """One service for the read-only tests, so each tiny model loads once."""
    return make_app()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@contextlib.contextmanager
def run_service(
    *, model_root: bool = True, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``gristmill inference`` as a real process on a free port, with ``env`` on top of the
    test settings; yields its URL (once healthy) and the process. ``model_root=False`` leaves
    the models to the store that ``env`` names (``GRISTMILL_STORAGE_*``)."""
    port = free_port()
    env = {
        **os.environ,
        "GRISTMILL_INFERENCE_DEVICE": "cpu",
        "GRISTMILL_INFERENCE_QUEUE_SIZE": "2",
        "GRISTMILL_INFERENCE_MODEL_ROOT": str(MODEL_ROOT[0]),
        **env,
    }
    if not model_root:
        del env["GRISTMILL_INFERENCE_MODEL_ROOT"]
    cmd = [sys.executable, "-m", "app.cli", "inference", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, "the inference process exited"
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, timeout=60, what="the inference process to come up")
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=scaled(15))


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    """``gristmill inference`` as a real process on a free port, one per test module."""
    with run_service() as (url, _):
        yield url
