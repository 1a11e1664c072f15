"""Fine-tuning data: records → token ids with loss labels (batches: :mod:`pipeline.parts.batches`).

Labels are aligned with ``input_ids`` (Hugging Face convention; the loss shifts them) and are
-100 wherever the model is not trained: prompts and user turns by default, and always the first
token of an example, so that in a packed row nothing is predicted across an example boundary.
Labels are assigned by character span on one tokenisation of the whole text (offsets), so the
tokens trained are exactly those the model sees, whatever the tokenizer does at a boundary.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
from transformers import PreTrainedTokenizerBase

from pipeline.configs.data import ValidateConfig
from pipeline.parts.batches import IGNORE, Example, Ids, Pair
from pipeline.parts.chat import ChatSetup, chat_segments, ensure_chat_template
from pipeline.parts.datasets.formats import iter_records
from pipeline.parts.datasets.readers import open_binary
from pipeline.types import DatasetFile, PipelineError, StageCancelled

KINDS = ("chat", "prompt_completion", "text", "preference")
_BLOCK = 256  # records tokenised in one call: the tokenizer spreads a block over every core

_T = TypeVar("_T")
Segments = Sequence[tuple[str, bool]]


@dataclass(frozen=True)
class DataStats:
    kind: str
    examples: int
    truncated: int
    dropped: int
    tokens: int
    trained_tokens: int


def read_objects(
    file: DatasetFile, limits: ValidateConfig | None = None
) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file (keeping fields dataset validation drops, such as
    per-message ``weight`` and preference pairs); other formats yield ``{"text": ...}``.

    Raises:
        PipelineError: ``dataset.invalid_record`` for a line that is not a JSON object.
    """
    limits = limits or ValidateConfig()
    if file.format != "jsonl":
        for record in iter_records(file, limits):
            yield {"text": record.training_text()}
        return
    with open_binary(file.path, file.compression, limits) as (stream, _):
        number = 0
        while line := stream.readline(limits.max_record_bytes + 1):
            number += 1
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise PipelineError("dataset.invalid_record", f"line {number}: {exc}") from exc
            if not isinstance(obj, dict):
                raise PipelineError("dataset.invalid_record", f"line {number}: not an object")
            yield obj


def kind_of(obj: Mapping[str, Any]) -> str:
    if "chosen" in obj or "preferred_output" in obj:
        return "preference"
    if "messages" in obj:
        return "chat"
    if "prompt" in obj:
        return "prompt_completion"
    if "text" in obj:
        return "text"
    raise PipelineError("dataset.invalid_record", f"unrecognised record with keys {sorted(obj)}")


class Encoder:
    """Turns records into :class:`Example`s for one tokenizer and masking rule."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, max_seq_len: int, train_on_inputs: str
    ) -> None:
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on_inputs = train_on_inputs
        probe = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        # Prepend BOS only where the tokenizer itself would (Llama does, GPT-2 and Qwen do not).
        self.bos = [bos] if bos is not None and probe and probe[0] == bos else []
        eos = tokenizer.eos_token_id
        if eos is None:
            raise PipelineError("tokenizer.invalid", "the tokenizer has no EOS token")
        self.eos = int(eos)

    def _inputs_trained(self, kind: str) -> bool:
        if self.train_on_inputs == "auto":
            return kind == "text"
        return self.train_on_inputs == "true"

    def segments(self, obj: Mapping[str, Any]) -> tuple[list[tuple[str, bool]], bool]:
        """(text, trained) pieces and whether an EOS follows (for raw, template-less text)."""
        kind = kind_of(obj)
        inputs = self._inputs_trained(kind)
        if kind == "chat":
            return chat_segments(self.tokenizer, obj["messages"], train_on_inputs=inputs), False
        if kind == "prompt_completion":
            return [(str(obj["prompt"]), inputs), (str(obj["completion"]), True)], True
        if kind == "text":
            return [(str(obj["text"]), True)], True
        raise PipelineError("dataset.invalid_record", f"a {kind} record in supervised data")

    def encode(self, items: Sequence[tuple[Segments, bool]]) -> list[Example]:
        """Examples from (segments, add_eos) items, tokenised in one batched call.

        Each item's text is tokenised once, joined; a token is trained when its first
        character lies in a trained segment.
        """
        texts = ["".join(text for text, _ in segments) for segments, _ in items]
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            self._example(segments, add_eos, ids, offsets)
            for (segments, add_eos), ids, offsets in zip(
                items, encoded["input_ids"], encoded["offset_mapping"], strict=True
            )
        ]

    def _example(
        self,
        segments: Segments,
        add_eos: bool,
        token_ids: Sequence[int],
        offsets: Sequence[tuple[int, int]],
    ) -> Example:
        # Trained spans as sorted boundaries [lo0, hi0, lo1, hi1, ...]: a start offset lies in
        # a span exactly when an odd number of boundaries are at or before it.
        bounds: list[int] = []
        at = 0
        for text, trained in segments:
            if trained:
                bounds += (at, at + len(text))
            at += len(text)
        starts = np.fromiter((start for start, _ in offsets), np.int64, len(offsets))
        hit = np.searchsorted(np.asarray(bounds, np.int64), starts, side="right") % 2 == 1
        body = np.asarray(token_ids, np.int32)
        eos = [self.eos] if add_eos else []
        ids = np.concatenate([np.asarray(self.bos, np.int32), body, np.asarray(eos, np.int32)])
        labels = np.concatenate(
            [
                np.full(len(self.bos), IGNORE, np.int32),
                np.where(hit, body, np.int32(IGNORE)).astype(np.int32),
                np.asarray([self.eos if segments[-1][1] else IGNORE] if add_eos else [], np.int32),
            ]
        )
        # Nothing predicts an example's first token: in a packed row it would be predicted from
        # the previous example's last one.
        labels[0] = IGNORE
        prompt, target = _last_turn(segments)
        return Example(ids, labels, prompt, target)

    def example(self, obj: Mapping[str, Any]) -> Example:
        return self.encode([self.segments(obj)])[0]

    def pair_segments(self, obj: Mapping[str, Any]) -> list[tuple[Segments, bool]]:
        """The chosen and the rejected sequence of a preference record, as encode() items:
        ``{prompt, chosen, rejected}`` (prompt a string or a message list) or OpenAI's
        ``{input: {messages}, preferred_output, non_preferred_output}``."""
        if "preferred_output" in obj:
            prompt: Any = obj["input"]["messages"]
            chosen = obj["preferred_output"][-1]["content"]
            rejected = obj["non_preferred_output"][-1]["content"]
        else:
            prompt, chosen, rejected = obj["prompt"], obj["chosen"], obj["rejected"]
        inputs = self.train_on_inputs == "true"
        out: list[tuple[Segments, bool]] = []
        for answer in (chosen, rejected):
            if isinstance(prompt, list):
                messages = [*prompt, {"role": "assistant", "content": str(answer)}]
                out.append((chat_segments(self.tokenizer, messages, train_on_inputs=inputs), False))
            else:
                out.append(([(str(prompt), inputs), (str(answer), True)], True))
        return out

    def pair(self, obj: Mapping[str, Any]) -> Pair:
        chosen, rejected = self.encode(self.pair_segments(obj))
        return Pair(chosen, rejected)

    def fit(self, example: Example) -> tuple[Example | None, bool]:
        """(the example cut to max_seq_len or None if nothing trained is left, truncated?)."""
        if len(example) <= self.max_seq_len:
            return example, False
        labels = example.labels[: self.max_seq_len].copy()  # a copy: the rest can be freed
        if not trains(labels):
            return None, True
        ids = example.input_ids[: self.max_seq_len].copy()
        return Example(ids, labels, example.prompt, example.target), True


def trains(labels: Ids) -> bool:
    """Whether any position of ``labels`` is trained."""
    return bool((labels != IGNORE).any())


def _last_turn(segments: Sequence[tuple[str, bool]]) -> tuple[str, str]:
    """The text before the last trained piece, and that piece (for samples and exact match)."""
    for i in range(len(segments) - 1, 0, -1):
        if segments[i][1] and not segments[i - 1][1]:
            return "".join(t for t, _ in segments[:i]), segments[i][0]
    return "", ""


def encode_dataset(
    objects: Iterable[Mapping[str, Any]],
    encoder: Encoder,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[list[Example] | list[Pair], DataStats]:
    """Encode every record, truncating to max_seq_len; examples with nothing left to train on
    are dropped and counted.

    Streams: records are read, tokenised and let go a block at a time, and ``should_stop`` is
    asked between blocks (a one-block dataset is never asked).

    Raises:
        PipelineError: ``dataset.mixed_kinds`` or ``dataset.empty`` (nothing survived).
        StageCancelled: ``should_stop`` answered True.
    """
    kind: str | None = None
    truncated = dropped = tokens = trained = 0
    out: list[Any] = []
    records = iter(objects)
    blocks = iter(lambda: list(itertools.islice(records, _BLOCK)), [])
    for index, block in enumerate(blocks):
        if index and should_stop():
            raise StageCancelled("stopped while encoding the examples")
        for obj in block:
            other = kind_of(obj)
            kind = kind or other
            if other != kind:
                raise PipelineError(
                    "dataset.mixed_kinds", f"one kind of record per dataset, got {kind} and {other}"
                )
        if kind == "preference":
            encoded = encoder.encode([item for obj in block for item in encoder.pair_segments(obj)])
            groups = [encoded[i : i + 2] for i in range(0, len(encoded), 2)]
        else:
            groups = [[example] for example in encoder.encode([encoder.segments(o) for o in block])]
        for group in groups:
            fitted = [encoder.fit(example) for example in group]
            truncated += any(cut for _, cut in fitted)
            parts = [example for example, _ in fitted if example is not None]
            # A pair may have a side with nothing trained (an empty answer to an empty prompt):
            # its log-probability is 0, still a preference. A lone example needs a target.
            if len(parts) < len(group) or (kind != "preference" and not trains(parts[0].labels)):
                dropped += 1
                continue
            out.append(Pair(parts[0], parts[1]) if kind == "preference" else parts[0])
            tokens += sum(len(p) for p in parts)
            trained += sum(int((p.labels != IGNORE).sum()) for p in parts)
    if not out:
        raise PipelineError(
            "dataset.empty", f"no usable examples ({dropped} dropped: nothing left to train on)"
        )
    assert kind is not None
    return out, DataStats(kind, len(out), truncated, dropped, tokens, trained)


def split_validation(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded random ``fraction`` held out (at least one item when fraction > 0)."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_valid = max(1, round(len(items) * fraction))
    valid = {*order[:n_valid]}
    return [x for i, x in enumerate(items) if i not in valid], [items[i] for i in sorted(valid)]


@dataclass(frozen=True)
class Examples:
    """A fine-tune's encoded data: what it trains and validates on, and what the encoding cost."""

    train: list[Any]  # Example, or Pair for preference data
    valid: list[Any]
    train_stats: DataStats
    valid_stats: DataStats | None
    """None when the validation examples were held out of the training file."""
    chat: ChatSetup | None
    """The chat template in use, for chat data (installed into the tokenizer when it had none)."""

    def summary(self, hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
        """What the "data" event reports: the encoding's figures and the resolved settings."""
        return {
            "train": asdict(self.train_stats),
            "valid": asdict(self.valid_stats) if self.valid_stats else None,
            "valid_examples": len(self.valid),
            "hyperparameters": dict(hyperparameters),
        }

    def warnings(self, max_seq_len: int) -> list[dict[str, int]]:
        """One warning per file whose examples were cut to ``max_seq_len`` or dropped."""
        return [
            {"truncated": stats.truncated, "dropped": stats.dropped, "max_seq_len": max_seq_len}
            for stats in (self.train_stats, self.valid_stats)
            if stats is not None and (stats.truncated or stats.dropped)
        ]


def load_examples(
    tokenizer: PreTrainedTokenizerBase,
    train: DatasetFile,
    validation: DatasetFile | None,
    *,
    method: str,
    max_seq_len: int,
    train_on_inputs: str,
    validation_fraction: float,
    seed: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> Examples:
    """Encode the training file, and the validation file or a seeded share held out of training.

    The first record decides the kind: preference pairs for ``method`` dpo, supervised records
    (chat, prompt/completion, text) otherwise. Chat data gets a chat template.

    Raises:
        PipelineError: ``dataset.empty``, ``dataset.wrong_kind``, ``dataset.mixed_kinds``,
            ``dataset.invalid_record``.
        StageCancelled: ``should_stop`` answered True while encoding.
    """
    first, train_objs = _peek(read_objects(train))
    if first is None:
        raise PipelineError("dataset.empty", "the training file has no records")
    kind = kind_of(first)
    if (kind == "preference") != (method == "dpo"):
        raise PipelineError(
            "dataset.wrong_kind",
            "dpo needs {prompt, chosen, rejected} pairs"
            if method == "dpo"
            else f"method {method} needs chat, prompt/completion or text records",
        )
    uses_chat = kind == "chat" or (
        kind == "preference" and isinstance(first.get("prompt", []), list)
    )
    chat = ensure_chat_template(tokenizer) if uses_chat else None
    encoder = Encoder(tokenizer, max_seq_len=max_seq_len, train_on_inputs=train_on_inputs)
    examples, train_stats = encode_dataset(train_objs, encoder, should_stop)
    first_valid, valid_objs = _peek(read_objects(validation) if validation else [])
    if first_valid is not None:
        valid, valid_stats = encode_dataset(valid_objs, encoder, should_stop)
    else:
        examples, valid = split_validation(list(examples), validation_fraction, seed)
        valid_stats = None
    return Examples(list(examples), list(valid), train_stats, valid_stats, chat)


def _peek(records: Iterable[_T]) -> tuple[_T | None, Iterator[_T]]:
    """The first record (None when there is none) and an iterator over all of them."""
    iterator = iter(records)
    first = next(iterator, None)
    return first, iterator if first is None else itertools.chain([first], iterator)
