"""Tokenizer training: trained here from the shipped corpus, loaded back through transformers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from pipeline.configs.base import ConfigError
from pipeline.configs.training import TokenizerConfig
from pipeline.tokenizer import stage as tokenizer
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, Hooks, PipelineError, RunPaths, StageCancelled
from tests.pipeline.conftest import text_file

CHAT = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"


def _paths(tmp_path: Path) -> RunPaths:
    return RunPaths(work_dir=tmp_path, output_dir=tmp_path)


def test_tokenizer_trains_from_dataset_file_and_loads_with_autotokenizer(
    tmp_path: Path, corpus_file: DatasetFile
) -> None:
    config = TokenizerConfig(vocab_size=600, chat_template=CHAT, extra_special_tokens=("<|user|>",))
    result = run_tokenizer(config, TokenizerInputs(corpus_file), _paths(tmp_path))

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file(), name
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["eos_token"] == "<|eos|>"
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert len(tok) == result.vocab_size == 600
    # Byte-level: text far from the training corpus still round-trips exactly.
    text = "Zoë's café — 東京 🚀\n\ttabs"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.convert_tokens_to_ids("<|user|>") == 3
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|user|>hi<|eos|>"


def test_tokenizer_report_has_sane_bytes_per_token(
    tmp_path: Path, corpus_file: DatasetFile
) -> None:
    inputs = TokenizerInputs(corpus_file)
    small = run_tokenizer(TokenizerConfig(vocab_size=300), inputs, _paths(tmp_path / "a"))
    large = run_tokenizer(TokenizerConfig(vocab_size=1000), inputs, _paths(tmp_path / "b"))

    assert small.bytes_per_token is not None and large.bytes_per_token is not None
    assert 1.0 < small.bytes_per_token < large.bytes_per_token < 8.0
    assert large.heldout_vocab_used is not None and 100 < large.heldout_vocab_used <= 1000
    assert large.training_bytes > 500_000 and large.training_seconds > 0
    assert len(large.sha256) == 64


def test_tokenizer_fails_with_dataset_empty_on_blank_text(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        blank = TokenizerInputs(text_file(tmp_path / "blank.jsonl", ["", "   ", "\n"]))
        run_tokenizer(TokenizerConfig(vocab_size=300), blank, _paths(tmp_path))
    assert info.value.code == "dataset.empty"


def test_reading_a_large_text_reports_progress_and_can_be_stopped(
    tmp_path: Path, corpus_file: DatasetFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenizer, "_CHECK_IN_S", 0.0)  # after every document
    read: list[int] = []
    polls: list[int] = []

    def on_event(message: str, data: Mapping[str, Any], level: str = "info") -> None:
        read.append(data["bytes"])

    def stop_on_third() -> bool:
        polls.append(1)
        return len(polls) == 3

    hooks = Hooks(on_event=on_event, should_stop=stop_on_third)
    with pytest.raises(StageCancelled, match="reading the training text"):
        run_tokenizer(
            TokenizerConfig(vocab_size=300), TokenizerInputs(corpus_file), _paths(tmp_path), hooks
        )
    assert len(polls) == 3 and len(read) == 2 and 0 < read[0] < read[1]
    assert not (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 258}, "vocab_size"),  # 256 bytes + 3 specials do not fit
        ({"vocab_size": 300_000}, "vocab_size"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"heldout_fraction": 0.9}, "heldout_fraction"),
        ({"extra_special_tokens": ("<|eos|>",)}, "extra_special_tokens"),
    ],
)
def test_tokenizer_config_errors_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenizerConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
