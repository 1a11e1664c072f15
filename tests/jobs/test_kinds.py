"""Every job kind is declared once and everything else derives from it: walk the registry."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import pkgutil
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

import app
import app.jobs.kinds
import workers.handlers
from app.jobs.kinds import KINDS, JobKind
from pipeline.configs.codec import decode, encode
from pipeline.types import Hooks, RunPaths, is_product
from workers import attempt_files, runner
from workers.handlers.base import JobContext, Outcome, resolve_stage
from workers.runner import handler_for

PLACEHOLDER_ID = "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"
# Kinds only the service creates, whose parameters carry more than references.
SERVICE_EXAMPLES: dict[str, dict[str, object]] = {
    "compare": {
        "comparison_id": "cmp_01JAAAAAAAAAAAAAAAAAAAAAAA",
        "model_ids": ["mdl_01JAAAAAAAAAAAAAAAAAAAAAAA", "mdl_01JBBBBBBBBBBBBBBBBBBBBBBB"],
        "prompts": ["Say hello."],
    },
    "judge": {
        "comparison_id": "cmp_01JAAAAAAAAAAAAAAAAAAAAAAA",
        "judge_model_id": "mdl_01JAAAAAAAAAAAAAAAAAAAAAAA",
    },
}
# Kinds that need one of several optional inputs besides their required ones.
ONE_OF_EXAMPLES: dict[str, dict[str, object]] = {
    "evaluate": {"dataset_id": PLACEHOLDER_ID},
    "synthesize": {"model_id": PLACEHOLDER_ID},  # or a secret and endpoint_model
}


def example_params(kind: JobKind) -> dict[str, object]:
    """The smallest valid parameters: every required field is an input reference."""
    if kind.name in SERVICE_EXAMPLES:
        return SERVICE_EXAMPLES[kind.name]
    required = [
        f
        for f in dataclasses.fields(kind.params)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert all("ref" in f.metadata for f in required), "required fields must be input references"
    return {f.name: PLACEHOLDER_ID for f in required} | ONE_OF_EXAMPLES.get(kind.name, {})


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_every_kind_validates_an_example_routes_and_finds_its_handler_and_stage(
    kind: JobKind,
) -> None:
    params = decode(kind.params, example_params(kind))
    assert decode(kind.params, encode(params)) == params  # the codec round-trips
    assert kind.queue_for(params) in ("cpu", "gpu")
    assert callable(handler_for(kind.handler))
    assert kind.stage is not None and kind.stage.startswith("pipeline.")
    module, function = kind.stage.split(":")
    stage = getattr(importlib.import_module(module), function)
    hints = typing.get_type_hints(stage)
    assert list(inspect.signature(stage).parameters)[:4] == ["config", "inputs", "paths", "hooks"]
    assert (hints["paths"], hints["hooks"]) == (RunPaths, Hooks)
    assert dataclasses.is_dataclass(hints["config"]) and dataclasses.is_dataclass(hints["inputs"])
    for item in kind.inputs:
        assert item.kind in ("dataset", "tokenizer", "model")


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_every_kind_is_one_module_one_handler_and_a_stage_with_a_typed_result(
    kind: JobKind,
) -> None:
    """``app/jobs/kinds/<kind>.py`` declares it (params, pre-flight, entry);
    ``workers/handlers/<kind>.py`` runs its stage, whose result is a dataclass the codec decodes
    (torchrun children send it as JSON) and which lists the products the handler registers."""
    module = importlib.import_module(f"app.jobs.kinds.{kind.name}")
    assert module.KIND is kind
    assert kind.params.__module__ in (module.__name__, *_config_modules())
    if kind.preflight is not None:
        assert kind.preflight.__module__ == module.__name__
    assert kind.handler == f"workers.handlers.{kind.name}:handle_{kind.name}"
    handler = handler_for(kind.handler)
    hints = typing.get_type_hints(handler)
    assert (hints["ctx"], hints["return"]) == (JobContext[kind.params], Outcome)
    assert kind.stage is not None
    stage = resolve_stage(kind.stage)
    assert getattr(importlib.import_module(handler.__module__), stage.__name__) is stage
    result_type = typing.get_type_hints(stage)["return"]
    assert dataclasses.is_dataclass(result_type)
    TypeAdapter(result_type)  # the codec can decode it
    products = [f.name for f in dataclasses.fields(result_type) if is_product(f)]
    assert products or not kind.outputs, f"{result_type.__name__} lists no products"


def _config_modules() -> list[str]:
    """A kind that reads no stored input may take its stage's config as its params as it is."""
    import pipeline.configs

    return [f"pipeline.configs.{m.name}" for m in pkgutil.iter_modules(pipeline.configs.__path__)]


def test_every_kind_module_and_every_handler_module_belongs_to_a_registered_kind() -> None:
    kind_modules = {m.name for m in pkgutil.iter_modules(app.jobs.kinds.__path__)}
    handler_modules = {m.name for m in pkgutil.iter_modules(workers.handlers.__path__)}
    assert kind_modules - {"registry"} == set(KINDS)
    assert handler_modules - {"base"} == set(KINDS)


def output_types() -> set[str]:
    """The classes of every domain's ``outputs`` module (``app/<domain>/outputs.py``)."""
    names: set[str] = set()
    for domain in pkgutil.iter_modules(app.__path__):
        if not domain.ispkg:
            continue
        try:
            module = importlib.import_module(f"app.{domain.name}.outputs")
        except ModuleNotFoundError:
            continue
        names |= {
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and v.__module__ == module.__name__
        }
    return names


def named_output_types(source: str) -> set[str]:
    """The output types (and output modules) a module's code names anywhere: in an import, a
    name or an attribute."""
    named: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name):
            named.add(node.id)
        elif isinstance(node, ast.Attribute):
            named.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module:
            named.add(node.module)
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
    outputs = {n for n in named if n.split(".")[-1] == "outputs" and n.startswith("app.")}
    return (named & output_types()) | outputs


def test_the_runner_names_no_concrete_output_type() -> None:
    """Outputs are a protocol: the runner places, records and discards them without knowing
    their types, so a new output type touches its own domain and not the job layer."""
    assert {"NewArtifact", "NewDataset", "ValidationVerdict", "ImportVerdict"} <= output_types()
    # The check sees a type however it is named: the old runner's shape would fail it.
    assert named_output_types(
        "from app.artifacts.outputs import NewArtifact\nisinstance(o, NewArtifact)"
    ) == {"app.artifacts.outputs", "NewArtifact"}
    assert named_output_types("import app.datasets.outputs as d\nd.NewDataset") == {
        "app.datasets.outputs",
        "NewDataset",
    }
    for module in (runner, attempt_files):  # the runner and where it places outputs
        assert named_output_types(Path(inspect.getfile(module)).read_text()) == set()


def test_the_request_schema_lists_every_submittable_kind(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    submittable = {name for name, kind in KINDS.items() if kind.submittable}
    union = client.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["requestBody"]
    refs = union["content"]["application/json"]["schema"]["discriminator"]["mapping"]
    declared = set(refs)
    for name, ref in refs.items():
        assert schema[ref.rsplit("/", 1)[-1]]["description"] == KINDS[name].summary
    assert declared == submittable
    assert "validate" not in declared  # created by uploads only


def test_input_references_come_from_the_params_dataclass_alone() -> None:
    pretrain = KINDS["pretrain"]
    assert [(i.param, i.kind) for i in pretrain.inputs] == [
        ("dataset_id", "dataset"),
        ("validation_dataset_id", "dataset"),
        ("tokenizer_id", "tokenizer"),
    ]
    assert not KINDS["validate"].inputs[0].ready  # validation reads a dataset not ready yet


def test_the_memory_preflight_uses_the_queue_device_class() -> None:
    """The same shape is refused on an 80 GB device class and accepted on a 141 GB one."""
    from app.jobs.kinds import Capacity
    from pipeline.configs.base import ConfigError
    from pipeline.configs.training import estimate_memory_bytes

    pretrain = KINDS["pretrain"]
    params = decode(
        pretrain.params,
        {
            "dataset_id": PLACEHOLDER_ID,
            "model": {"preset": "gpt2-small"},
            "micro_batch_size": 192,
            "global_batch_tokens": 196608,
            "tokenizer": {"vocab_size": 16384},
        },
    )
    need = estimate_memory_bytes(params.model, params, vocab_size=16384)
    assert 80e9 < need < 141e9
    assert pretrain.preflight is not None
    h200 = Capacity(devices=1, device_memory_bytes=141 * 10**9, accelerated=True, cores=16)
    h100 = Capacity(devices=1, device_memory_bytes=80 * 10**9, accelerated=True, cores=16)
    pretrain.preflight(params, h200, {})
    with pytest.raises(ConfigError) as refused:
        pretrain.preflight(params, h100, {})
    assert refused.value.field == "micro_batch_size"
    with pytest.raises(ConfigError, match="devices"):
        two = decode(pretrain.params, {**pretrain_example(), "devices": 2})
        pretrain.preflight(two, h200, {})


def pretrain_example() -> dict[str, object]:
    return {"dataset_id": PLACEHOLDER_ID, "model": {"preset": "tiny"}, "global_batch_tokens": 2048}


# A Llama-2-7B-shaped base: what the fine-tuning pre-flight reads from its config.json.
LLAMA_7B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}
H100 = 80 * 10**9


def finetune_base(tmp_path: Path, config: dict[str, object]) -> dict[str, object]:
    """The resolved ``model_id`` input as the pre-flight sees it: a stored folder with its
    ``config.json``."""
    from app.flows.inputs import Resolved
    from app.storage import LocalStore

    folder = tmp_path / "models" / "base"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    store = LocalStore(tmp_path)
    base = Resolved(PLACEHOLDER_ID, "model", "base", "models/base", "huggingface", store=store)
    return {"model_id": base}


def finetune_params(**overrides: object) -> Any:
    return decode(
        KINDS["finetune"].params,
        {"model_id": PLACEHOLDER_ID, "dataset_id": PLACEHOLDER_ID, **overrides},
    )


def test_the_base_shape_counts_the_parameters_transformers_builds() -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.configs.finetune_memory import BaseShape

    config = LlamaConfig(**{**LLAMA_7B, "num_key_value_heads": 8})
    with torch.device("meta"):  # shapes only: no 7B of memory
        model = LlamaForCausalLM(config)
    shape = BaseShape.from_config(config.to_dict())
    assert shape is not None
    assert shape.parameters == sum(p.numel() for p in model.parameters())
    assert BaseShape.from_config({"hidden_size": 64}) is None


def test_the_finetune_preflight_divides_states_over_fsdp_devices_only() -> None:
    from pipeline.configs.finetune_memory import (
        BaseShape,
        MemoryEstimate,
        estimate_finetune_memory,
    )

    shape = BaseShape.from_config(LLAMA_7B)
    assert shape is not None
    n = shape.parameters

    def need(**kw: object) -> MemoryEstimate:
        return estimate_finetune_memory(
            finetune_params(**kw), parameters=n, shape=shape, accelerated=True
        )

    one = need(method="full")
    # fp32 master weights + autocast's bf16 copies, fp32 gradients, two fp32 moments.
    assert (one.weights, one.gradients, one.optimizer) == (6 * n, 4 * n, 8 * n)
    assert need(method="full", devices=4, strategy="ddp").states == one.states  # replicas
    fsdp = need(method="full", devices=4, strategy="fsdp")
    assert (fsdp.gradients, fsdp.optimizer) == (n, 2 * n)
    assert n < fsdp.weights < 2 * n  # a quarter of the master weights + what is gathered
    lora = need(method="lora")
    adapters = shape.lora_parameters(16)  # rank 16 on every linear layer: 0.6% of 7B
    assert adapters < 0.01 * n and lora.optimizer == 8 * adapters
    assert lora.weights == 2 * n + 4 * adapters  # the bf16 base, the fp32 adapters
    dpo_full = need(method="dpo", dpo={"use_lora": False})
    assert dpo_full.weights == one.weights + 4 * n  # the frozen reference
    assert need(method="full", gradient_checkpointing=True).activations < one.activations / 5


def test_the_finetune_preflight_refuses_what_cannot_fit_and_states_the_estimate(
    tmp_path: Path,
) -> None:
    from app.jobs.kinds import Capacity
    from pipeline.configs.base import ConfigError

    preflight = KINDS["finetune"].preflight
    assert preflight is not None
    inputs = finetune_base(tmp_path, LLAMA_7B)
    eight = Capacity(devices=8, device_memory_bytes=H100, accelerated=True, cores=16)
    with pytest.raises(ConfigError) as full:
        preflight(finetune_params(method="full"), eight, inputs)
    assert full.value.field == "method"
    assert "6738M-parameter model with full on one device" in full.value.message
    assert "GB per device (weights 40.4 + gradients 27.0 + optimiser 53.9" in full.value.message
    with pytest.raises(ConfigError, match="on 2 devices \\(ddp\\)"):
        preflight(finetune_params(method="full", devices=2), eight, inputs)
    preflight(finetune_params(method="full", devices=2, strategy="fsdp"), eight, inputs)
    preflight(finetune_params(method="lora"), eight, inputs)
    # The model fits; 16 rows of 4096 tokens at once do not, unless they are recomputed.
    long = {"method": "lora", "micro_batch_rows": 16, "max_seq_len": 4096}
    with pytest.raises(ConfigError) as rows:
        preflight(finetune_params(**long), eight, inputs)
    assert rows.value.field == "micro_batch_rows" and "gradient_checkpointing" in rows.value.message
    preflight(finetune_params(**long, gradient_checkpointing=True), eight, inputs)
