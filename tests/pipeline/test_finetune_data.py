"""Fine-tuning data: which tokens are trained, templates, truncation, packing without leaks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.configs.base import ConfigError
from pipeline.configs.codec import decode, encode
from pipeline.configs.finetune import FinetuneConfig, check_runnable
from pipeline.parts import examples as data
from pipeline.parts.batches import IGNORE, Example, collate, pack
from pipeline.parts.chat import CHATML_NAME, ensure_chat_template
from pipeline.parts.examples import Encoder, encode_dataset
from pipeline.parts.objectives import forward_logits
from pipeline.types import PipelineError, StageCancelled
from tests.pipeline.finetune_helpers import build_base


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {family: build_base(family, root / family) for family in ("llama", "qwen2")}


def tokenizer_for(bases: dict[str, Path], family: str) -> Any:
    tok = AutoTokenizer.from_pretrained(str(bases[family]))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def trained_text(tok: Any, example: Example) -> str:
    ids = [t for t in example.labels.tolist() if t != IGNORE]
    return str(tok.decode(ids, skip_special_tokens=False))


CONVERSATION = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Format this record: anna lives in paris"},
    {"role": "assistant", "content": "NAME = anna ; CITY = paris ; END", "weight": 0},
    {"role": "user", "content": "Format this record: boris lives in oslo"},
    {"role": "assistant", "content": "NAME = boris ; CITY = oslo ; END"},
]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_chat_labels_are_exactly_the_weighted_assistant_turns(
    bases: dict[str, Path], family: str
) -> None:
    tok = tokenizer_for(bases, family)
    setup = ensure_chat_template(tok)
    assert setup.template == (CHATML_NAME if family == "llama" else "own")
    assert setup.end_of_turn_id == tok.convert_tokens_to_ids("<|im_end|>")
    enc = Encoder(tok, max_seq_len=512, train_on_inputs="auto")
    example = enc.example({"messages": CONVERSATION})
    # Only the second reply (weight defaults to 1) with its end-of-turn marker is trained.
    assert trained_text(tok, example).strip() == "NAME = boris ; CITY = oslo ; END<|im_end|>"
    both = [{k: v for k, v in m.items() if k != "weight"} for m in CONVERSATION]
    example = enc.example({"messages": both})
    text = trained_text(tok, example).strip()
    assert text == (
        "NAME = anna ; CITY = paris ; END<|im_end|>\nNAME = boris ; CITY = oslo ; END<|im_end|>"
    )
    assert "Format" not in text and "terse" not in text
    # train_on_inputs=true trains the whole conversation except the first token.
    everything = Encoder(tok, max_seq_len=512, train_on_inputs="true").example({"messages": both})
    assert sum(t != IGNORE for t in everything.labels) == len(everything) - 1


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_prompt_completion_trains_completion_and_eos_and_text_trains_all(
    bases: dict[str, Path], family: str
) -> None:
    tok = tokenizer_for(bases, family)
    enc = Encoder(tok, max_seq_len=512, train_on_inputs="auto")
    ex = enc.example({"prompt": "Format this record: anna lives in paris\n", "completion": "END"})
    assert trained_text(tok, ex) == "END" + tok.eos_token
    assert ex.prompt.startswith("Format") and ex.target == "END"
    text = enc.example({"text": "anna lives in paris"})
    decoded = tok.decode([t for t in text.labels.tolist() if t != IGNORE])
    # The first token is never trained (in a packed row it would be predicted across examples).
    assert decoded.strip().endswith("lives in paris" + tok.eos_token)
    assert sum(t != IGNORE for t in text.labels) == len(text) - 1


def test_truncation_and_dropping_are_counted(bases: dict[str, Path]) -> None:
    tok = tokenizer_for(bases, "qwen2")
    enc = Encoder(tok, max_seq_len=16, train_on_inputs="auto")
    long_prompt = " ".join(["anna lives in paris"] * 10)
    rows = [
        {"prompt": long_prompt, "completion": "END"},  # the completion is cut away: dropped
        {"prompt": "anna", "completion": " lives in paris " * 5},  # truncated, still trained
        {"prompt": "anna", "completion": " END"},
    ]
    examples, stats = encode_dataset(rows, enc)
    assert (stats.examples, stats.truncated, stats.dropped) == (2, 2, 1)
    assert all(len(e) <= 16 for e in examples)
    with pytest.raises(PipelineError, match="one kind of record"):
        encode_dataset([*rows, {"text": "x"}], enc)


def test_encoding_reads_a_block_at_a_time_and_stops_between_blocks(
    bases: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "_BLOCK", 4)
    enc = Encoder(tokenizer_for(bases, "qwen2"), max_seq_len=64, train_on_inputs="auto")
    rows = [
        {"messages": [{"role": "user", "content": f"where is {name}?"},
                      {"role": "assistant", "content": f"{name} lives in paris"}]}
        for name in ("anna", "boris", "chen", "dora", "emil", "femi", "gus", "hana", "ivo", "jun")
    ]  # fmt: skip
    read: list[int] = []

    def reading() -> Iterator[dict[str, Any]]:
        for i, row in enumerate(rows):
            read.append(i)
            yield row

    # Batched encoding gives each record what it gets alone.
    examples, stats = encode_dataset(reading(), enc)
    assert stats.examples == len(rows) == len(read)
    for example, row in zip(examples, rows, strict=True):
        alone = enc.example(row)
        assert example.input_ids.tolist() == alone.input_ids.tolist()
        assert example.labels.tolist() == alone.labels.tolist()

    read.clear()
    asked: list[int] = []

    def stop_at_once() -> bool:
        asked.append(len(read))
        return True

    with pytest.raises(StageCancelled, match="encoding"):
        encode_dataset(reading(), enc, stop_at_once)
    assert asked == [8]  # between the first and second blocks, not before the first
    assert encode_dataset(rows[:4], enc, lambda: pytest.fail("asked"))[1].examples == 4


def test_packed_rows_equal_separate_examples(bases: dict[str, Path]) -> None:
    """Packing changes nothing a token sees: logits match running each example alone."""
    for family in ("llama", "qwen2"):
        tok = tokenizer_for(bases, family)
        model = AutoModelForCausalLM.from_pretrained(str(bases[family])).eval()
        enc = Encoder(tok, max_seq_len=64, train_on_inputs="auto")
        examples = [
            enc.example({"text": t})
            for t in ("anna lives in paris", "boris lives in oslo and rome", "chen")
        ]
        packed = collate(examples, packing=True, capacity=64, pad_id=tok.pad_token_id)
        assert packed.input_ids.size(0) == 1 and packed.attention_mask is None
        with torch.no_grad():
            logits = forward_logits(model, packed, torch.device("cpu"))[0]
            at = 0
            for i in pack([len(e) for e in examples], 64)[0]:
                alone = collate([examples[i]], packing=False, capacity=64, pad_id=0)
                ref = forward_logits(model, alone, torch.device("cpu"))[0]
                n = len(examples[i])
                torch.testing.assert_close(logits[at : at + n], ref, atol=1e-5, rtol=1e-5)
                at += n


def test_pack_first_fit_decreasing() -> None:
    rows = pack([10, 6, 5, 4, 3], 10)
    assert sorted(sorted(r) for r in rows) == [[0], [1, 3], [2, 4]]


def test_config_auto_hyperparameters_and_validation() -> None:
    cfg = FinetuneConfig()
    small = cfg.resolve(20)
    assert small.n_epochs == 5 and small.batch_size == 1 and small.learning_rate == 2e-4
    big = cfg.resolve(100_000)
    assert big.n_epochs == 1 and big.batch_size == 64
    assert (
        FinetuneConfig(method="full", learning_rate_multiplier=2).resolve(500).learning_rate == 4e-5
    )
    assert FinetuneConfig(method="dpo").resolve(10).learning_rate == 5e-6
    cfg2 = decode(FinetuneConfig, {"method": "lora", "n_epochs": 3, "lora": {"rank": 4}})
    assert cfg2.lora.rank == 4 and decode(FinetuneConfig, encode(cfg2)) == cfg2
    with pytest.raises(ValueError, match=r"lora\.rank"):
        decode(FinetuneConfig, {"lora": {"rank": 0}})
    with pytest.raises(ValueError, match="batch_size"):
        decode(FinetuneConfig, {"batch_size": 0})
    with pytest.raises(ValueError):
        decode(FinetuneConfig, {"n_epochs": "many"})
    with pytest.raises(ConfigError, match="qlora needs a CUDA GPU"):
        check_runnable(FinetuneConfig(method="qlora"), cuda_available=False)
    check_runnable(FinetuneConfig(method="qlora"), cuda_available=True)
    check_runnable(FinetuneConfig(method="lora"), cuda_available=False)


def test_inputs_cross_the_process_boundary_through_the_codec(tmp_path: Path) -> None:
    from pipeline.finetune.stage import FinetuneInputs
    from pipeline.types import DatasetFile

    inputs = FinetuneInputs(tmp_path / "base", DatasetFile(tmp_path / "t.jsonl", "jsonl"), None)
    assert decode(FinetuneInputs, encode(inputs)) == inputs


def test_preference_pairs_in_both_shapes(bases: dict[str, Path]) -> None:
    tok = tokenizer_for(bases, "qwen2")
    enc = Encoder(tok, max_seq_len=128, train_on_inputs="auto")
    plain = enc.pair({"prompt": "anna in paris\n", "chosen": "NAME = anna", "rejected": "paris"})
    assert trained_text(tok, plain.chosen) == "NAME = anna" + tok.eos_token
    assert trained_text(tok, plain.rejected) == "paris" + tok.eos_token
    openai = enc.pair(
        {
            "input": {"messages": [{"role": "user", "content": "anna in paris"}]},
            "preferred_output": [{"role": "assistant", "content": "NAME = anna"}],
            "non_preferred_output": [{"role": "assistant", "content": "paris"}],
        }
    )
    assert trained_text(tok, openai.chosen).strip() == "NAME = anna<|im_end|>"
    assert trained_text(tok, openai.rejected).strip() == "paris<|im_end|>"


def test_qlora_without_cuda_is_refused_by_the_stage(bases: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.finetune.stage import FinetuneInputs, run_finetune
    from pipeline.types import DatasetFile
    from tests.pipeline.conftest import make_paths
    from tests.pipeline.finetune_helpers import chat_rows, task_split, write_jsonl

    if torch.cuda.is_available():
        pytest.skip("this machine could run qlora")
    data = write_jsonl(tmp_path / "t.jsonl", chat_rows(task_split()[0][:4]))
    with pytest.raises(PipelineError) as err:
        run_finetune(
            FinetuneConfig(method="qlora"),
            FinetuneInputs(bases["qwen2"], DatasetFile(data, "jsonl")),
            make_paths(tmp_path),
        )
    assert err.value.code == "train.qlora_needs_cuda"


def test_prompt_completion_on_a_template_less_base_runs_and_loads(
    bases: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.finetune.stage import FinetuneInputs, run_finetune
    from pipeline.types import DatasetFile
    from tests.pipeline.conftest import make_paths
    from tests.pipeline.finetune_helpers import write_jsonl

    rows = [{"prompt": f"{n} in paris\n", "completion": f"NAME = {n}"} for n in ("anna", "kai")]
    data = write_jsonl(tmp_path / "t.jsonl", rows * 4)
    result = run_finetune(
        FinetuneConfig(method="full", n_epochs=1, batch_size=4, validation_fraction=0.25),
        FinetuneInputs(bases["llama"], DatasetFile(data, "jsonl")),
        make_paths(tmp_path),
    )
    assert result.chat_template is None and result.adapter_dir is None
    assert result.valid_data is None and result.steps == 2
    assert "full_valid_loss" in result.metrics
    model = AutoModelForCausalLM.from_pretrained(str(result.model_dir))
    assert model.get_input_embeddings().weight.size(0) == len(tokenizer_for(bases, "llama"))
