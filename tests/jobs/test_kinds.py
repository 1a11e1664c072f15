"""Every job kind is declared once and everything else derives from it: walk the registry."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing

import pytest
from fastapi.testclient import TestClient

from app.jobs.kinds import KINDS, JobKind
from workers.pipeline.configs.codec import decode, encode
from workers.pipeline.types import Hooks, RunPaths
from workers.runner import handler_for

PLACEHOLDER_ID = "ds_01JAAAAAAAAAAAAAAAAAAAAAAA"
# Kinds only the service creates, whose parameters carry more than references.
SERVICE_EXAMPLES: dict[str, dict[str, object]] = {
    "compare": {
        "comparison_id": "cmp_01JAAAAAAAAAAAAAAAAAAAAAAA",
        "model_ids": ["mdl_01JAAAAAAAAAAAAAAAAAAAAAAA", "mdl_01JBBBBBBBBBBBBBBBBBBBBBBB"],
        "prompts": ["Say hello."],
    }
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
    return {f.name: PLACEHOLDER_ID for f in required}


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_every_kind_validates_an_example_routes_and_finds_its_handler_and_stage(
    kind: JobKind,
) -> None:
    params = decode(kind.params, example_params(kind))
    assert decode(kind.params, encode(params)) == params  # the codec round-trips
    assert kind.queue_for(params) in ("cpu", "gpu")
    assert callable(handler_for(kind.handler))
    assert kind.stage is not None and kind.stage.startswith("workers.pipeline.")
    module, function = kind.stage.split(":")
    stage = getattr(importlib.import_module(module), function)
    hints = typing.get_type_hints(stage)
    assert list(inspect.signature(stage).parameters)[:4] == ["config", "inputs", "paths", "hooks"]
    assert (hints["paths"], hints["hooks"]) == (RunPaths, Hooks)
    assert dataclasses.is_dataclass(hints["config"]) and dataclasses.is_dataclass(hints["inputs"])
    for item in kind.inputs:
        assert item.kind in ("dataset", "tokenizer", "model")


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
    from workers.pipeline.configs.base import ConfigError
    from workers.pipeline.configs.training import estimate_memory_bytes

    pretrain = KINDS["pretrain"]
    params = decode(
        pretrain.params,
        {
            "dataset_id": PLACEHOLDER_ID,
            "model": {"preset": "gpt2-small"},
            "micro_batch_size": 64,
            "global_batch_tokens": 65536,
            "tokenizer": {"vocab_size": 16384},
        },
    )
    need = estimate_memory_bytes(params.model, params, vocab_size=16384)
    assert 80e9 < need < 141e9
    assert pretrain.preflight is not None
    h200 = Capacity(devices=1, device_memory_bytes=141 * 10**9, accelerated=True)
    h100 = Capacity(devices=1, device_memory_bytes=80 * 10**9, accelerated=True)
    pretrain.preflight(params, h200, {})
    with pytest.raises(ConfigError) as refused:
        pretrain.preflight(params, h100, {})
    assert refused.value.field == "micro_batch_size"
    with pytest.raises(ConfigError, match="devices"):
        two = decode(pretrain.params, {**pretrain_example(), "devices": 2})
        pretrain.preflight(two, h200, {})


def pretrain_example() -> dict[str, object]:
    return {"dataset_id": PLACEHOLDER_ID, "model": {"preset": "tiny"}, "global_batch_tokens": 2048}
