"""``tokenizer``: train a byte-level BPE tokenizer on a dataset."""

from __future__ import annotations

from dataclasses import dataclass

from app.jobs.kinds.registry import JobKind, ref
from pipeline.configs.training import TokenizerConfig


@dataclass(frozen=True)
class TokenizerParams(TokenizerConfig):
    dataset_id: str = ref("dataset")
    """The ready dataset whose text the tokenizer learns from."""


KIND = JobKind(
    name="tokenizer",
    summary="Train a byte-level BPE tokenizer (Hugging Face format) on a dataset.",
    params=TokenizerParams,
    outputs=("tokenizer",),
    handler="workers.handlers.tokenizer:handle_tokenizer",
    stage="pipeline.tokenizer.stage:run_tokenizer",
)
