"""Chat templates are tenant input: rendered in sandboxed children, on a budget, outside the slot.

The renderer must give exactly what ``apply_chat_template`` (and, for GGUF files, llama.cpp's
formatter) gave, and a template that loops or grows must fail its own request with a stable
code while another tenant is served, leaving the service's memory and slots as they were.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from transformers import AutoTokenizer

from inference.engine import GenerationRequest, ModelRef, SamplingParams
from inference.llamacpp_engine import read_chat_template as gguf_template
from inference.templates import TemplateRenderer
from inference.transformers_engine import encode_prompt, read_chat_template
from tests.inference.conftest import MODEL_ROOT, run_service, spec
from tests.inference.test_gguf import export_gguf
from tests.timing import scaled, wait_for

CHAT = [
    {"role": "system", "content": "you keep the mill"},
    {"role": "user", "content": "héllo mill ✓ "},
]
RICH = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}{% set ns = namespace(turns=0) %}"
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools: '"
    " ~ m['content']) }}{% endif %}{% if loop.index > 4 %}{% break %}{% endif %}"
    "{% set ns.turns = ns.turns + 1 %}<|im_start|>{{ m['role'] }}\n"
    "{% generation %}{{ m['content'] | trim }}{% endgeneration %}<|im_end|>\n{% endfor %}"
    "{{ dict(turns=ns.turns, last=messages[-1]) | tojson }}{{ strftime_now('%Y-%m') }}"
    "{{ pad_token }}{{ eos_token }}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SILENT_LOOP = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
TOO_LARGE = {
    "repeat": "{{ 'x' * 500000000 }}",
    "nested_loop": (
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}"
    ),
    "loop_output": "{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}",
    "doubling": (  # never output: only the child's memory cap stops it
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}"
    ),
}
TEMPLATE_TIMEOUT = scaled(4)
TENANT = "X-Gristmill-Tenant"


def templated(factory: pytest.TempPathFactory, llama_dir: Path, source: str) -> Path:
    """A copy of the tiny Llama whose tokenizer carries ``source`` as its chat template."""
    out = factory.mktemp("templated")
    shutil.copytree(llama_dir, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    tokenizer.chat_template = source
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> dict[str, Path]:
    sources = {"rich": RICH, "silent_loop": SILENT_LOOP, **TOO_LARGE}
    made = {name: templated(tmp_path_factory, llama_dir, src) for name, src in sources.items()}
    made["repeat_gguf"] = export_gguf(made["repeat"], tmp_path_factory.mktemp("gguf-repeat"))
    return made


@pytest.fixture(scope="module")
def renderer() -> Iterator[TemplateRenderer]:
    pool = TemplateRenderer(
        workers=1, timeout_seconds=scaled(10), max_chars=100_000, memory_bytes=256 * 2**20
    )
    yield pool
    pool.close()


def render(pool: TemplateRenderer, ref: ModelRef, messages: list[dict[str, Any]]) -> str:
    template = read_chat_template(ref) if ref.format == "huggingface" else gguf_template(ref)
    assert template is not None
    return pool.render(template, messages, time.monotonic() + scaled(30))


def test_rendering_matches_apply_chat_template(
    renderer: TemplateRenderer, models: dict[str, Path], llama_dir: Path
) -> None:
    for folder in (llama_dir, models["rich"]):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        text = render(renderer, ModelRef("t", folder), CHAT)
        assert text == tokenizer.apply_chat_template(
            CHAT, add_generation_prompt=True, tokenize=False
        )
        request = GenerationRequest(SamplingParams(), messages=tuple(CHAT), chat_prompt=text)
        assert encode_prompt(tokenizer, request) == tokenizer.apply_chat_template(
            CHAT, add_generation_prompt=True, return_dict=False
        )
    assert '{"turns": 2, "last": {"role": "user", "content": "héllo mill ✓ "}}' in text

    # The template's own raise_exception: the same message, as a stable code.
    tool = [*CHAT, {"role": "tool", "content": "42"}]
    with pytest.raises(Exception, match="no tools: 42") as expected:
        AutoTokenizer.from_pretrained(models["rich"]).apply_chat_template(tool)
    with pytest.raises(Exception, match="no tools: 42") as ours:
        render(renderer, ModelRef("t", models["rich"]), tool)
    assert getattr(ours.value, "code", None) == "template.error", expected.value


def test_gguf_rendering_matches_llama_cpp_formatter(
    renderer: TemplateRenderer, tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> None:
    """What llama-cpp-python's Jinja2ChatFormatter gave from the file (the engine's old path)."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    folder = export_gguf(models["rich"], tmp_path_factory.mktemp("gguf-rich"))
    ref = ModelRef("g", folder, format="gguf")
    path = next(folder.glob("*.gguf"))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    meta = llm.metadata

    def text(key: str, token: int) -> str:  # as the engine gave them to the formatter
        return llm.detokenize([token], special=True).decode() if key in meta else ""

    formatter = Jinja2ChatFormatter(
        template=meta["tokenizer.chat_template"],
        eos_token=text("tokenizer.ggml.eos_token_id", llm.token_eos()),
        bos_token=text("tokenizer.ggml.bos_token_id", llm.token_bos()),
    )
    assert render(renderer, ref, CHAT) == formatter(messages=CHAT).prompt  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def template_service() -> Iterator[tuple[str, int]]:
    env = {
        "GRISTMILL_INFERENCE_TEMPLATE_TIMEOUT_SECONDS": str(TEMPLATE_TIMEOUT),
        "GRISTMILL_INFERENCE_TENANT_LIMIT": "2",
    }
    with run_service(**env) as (url, process):
        yield url, process.pid


def chat(url: str, model: dict[str, Any], tenant: str) -> httpx.Response:
    body = {"model": model, "messages": CHAT, "max_tokens": 8, "temperature": 0}
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers={TENANT: tenant}, timeout=scaled(60)
    )


def assert_refused(response: httpx.Response, code: str) -> None:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert str(MODEL_ROOT[0]) not in response.text
    assert "/" not in response.json()["error"]["message"]


def timed(url: str, model: dict[str, Any], tenant: str) -> tuple[httpx.Response, float]:
    """The response and when it came (``time.monotonic``)."""
    response = chat(url, model, tenant)
    return response, time.monotonic()


def at(answer: tuple[httpx.Response, float]) -> float:
    return answer[1]


def waiting(url: str) -> int:
    return int(httpx.get(f"{url}/health").json()["waiting"])


def assert_idle(url: str) -> dict[str, Any]:
    health: dict[str, Any] = httpx.get(f"{url}/health").json()
    assert health["running"] == 0 and health["waiting"] == 0
    return health


def test_looping_templates_fail_alone_while_another_tenant_is_served(
    template_service: tuple[str, int], models: dict[str, Path], llama_dir: Path
) -> None:
    """Tenant a sends two loops (both render children would be theirs, but a tenant renders one
    at a time); tenant b is answered while they loop, on the one generation slot."""
    url, _ = template_service
    normal = spec(llama_dir)
    assert chat(url, normal, "b").status_code == 200  # loads the model
    began = time.monotonic()
    solo = chat(url, normal, "b")
    solo_seconds = time.monotonic() - began
    killed = assert_idle(url)["templates_killed"]

    loop = spec(models["silent_loop"], id_="loop")
    with ThreadPoolExecutor(2) as pool:
        began = time.monotonic()
        loops = [pool.submit(timed, url, loop, "a") for _ in range(2)]
        wait_for(
            lambda: any(f.done() for f in loops) or waiting(url) == 2,
            timeout=10,
            interval=0.02,
            what="both looping requests to be admitted",
        )
        other_began = time.monotonic()
        other = chat(url, normal, "b")
        other_seconds = time.monotonic() - other_began
        # Served while both still ran (on a slot, or on every child, it would have waited).
        assert not any(f.done() for f in loops)
        (first, first_at), (second, second_at) = sorted((f.result() for f in loops), key=at)
    first_seconds, second_seconds = first_at - began, second_at - began
    assert other.status_code == 200 and other.json()["choices"] == solo.json()["choices"]
    for refused in (first, second):
        assert_refused(refused, "template.timeout")
    assert TEMPLATE_TIMEOUT <= first_seconds < TEMPLATE_TIMEOUT + scaled(5)
    assert 2 * TEMPLATE_TIMEOUT <= second_seconds < 2 * TEMPLATE_TIMEOUT + scaled(8)
    print(
        f"loops failed after {first_seconds:.2f}s and {second_seconds:.2f}s; the other tenant "
        f"was answered in {other_seconds:.2f}s (alone {solo_seconds:.2f}s)"
    )
    assert assert_idle(url)["templates_killed"] == killed + 2
    assert chat(url, normal, "a").json()["choices"] == solo.json()["choices"]


def vm_peak(pid: int) -> int:
    """The process's peak resident memory (kB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_templates_that_grow_fail_too_large_without_the_service_growing(
    template_service: tuple[str, int], models: dict[str, Path], llama_dir: Path
) -> None:
    url, pid = template_service
    assert chat(url, spec(llama_dir), "a").status_code == 200
    before, killed = vm_peak(pid), assert_idle(url)["templates_killed"]
    for name in [*TOO_LARGE, "repeat_gguf"]:
        began = time.monotonic()
        fmt = "gguf" if name.endswith("gguf") else "huggingface"
        response = chat(url, spec(models[name], id_=name, format_=fmt), "a")
        assert_refused(response, "template.too_large")
        assert time.monotonic() - began < TEMPLATE_TIMEOUT, name  # not stopped by the clock
    assert vm_peak(pid) - before < 64 * 1024, "the service's own memory grew"
    assert assert_idle(url)["templates_killed"] == killed
    assert chat(url, spec(llama_dir), "b").status_code == 200
