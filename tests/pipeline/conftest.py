"""Tiny shared fixtures for pipeline tests: the shipped story corpus and a BPE trained from it.

The tokenizer is trained once per session (about a second), as nanochat's tests do, so no test
depends on a downloaded vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.configs.training import ModelConfig, PretrainConfig, TokenizerConfig
from pipeline.tokenizer.stage import TokenizerInputs, run_tokenizer
from pipeline.types import DatasetFile, RunPaths

CORPUS = Path(__file__).parents[1] / "fixtures" / "corpus" / "stories.jsonl"


@pytest.fixture(scope="session")
def corpus_file() -> DatasetFile:
    return DatasetFile(path=CORPUS, format="jsonl")


@pytest.fixture(scope="session")
def corpus_texts() -> list[str]:
    return [json.loads(line)["text"] for line in CORPUS.read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, corpus_file: DatasetFile) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    paths = RunPaths(work_dir=out, output_dir=out)
    run_tokenizer(TokenizerConfig(vocab_size=512), TokenizerInputs(corpus_file), paths)
    return out


def text_file(path: Path, texts: list[str]) -> DatasetFile:
    """Documents as a JSONL dataset, for stages that read files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return DatasetFile(path=path, format="jsonl")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token cache for the session: the corpus is tokenised once, like jobs share it."""
    return tmp_path_factory.mktemp("cache")


def make_paths(root: Path, cache: Path | None = None) -> RunPaths:
    (root / "work").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)
    return RunPaths(work_dir=root / "work", output_dir=root / "out", cache_dir=cache)


def tiny_config(**overrides: Any) -> PretrainConfig:
    """The `tiny` preset with 64-token windows: a step takes a few milliseconds on one core."""
    base = PretrainConfig(
        model=ModelConfig(preset="tiny", context_length=64),
        max_steps=40,
        global_batch_tokens=8 * 64 * 2,  # two accumulation steps: exercises accumulation
        micro_batch_size=8,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=5,
        log_interval=1,
        eval_interval=20,
        eval_batches=4,
        checkpoint_interval=10,
        sample_tokens=8,
        validation_fraction=0.02,
    )
    return dataclasses.replace(base, **overrides)
