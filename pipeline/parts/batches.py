"""Fine-tuning examples and their batches: the epoch's order, packed or padded rows, positions.

Packed rows hold several examples each (first-fit decreasing); position ids restart at every
example and the padding after them forms a segment of its own, so attention confined to
segments (:mod:`pipeline.parts.attention`) keeps every example inside itself. The order of an
epoch is a pure function of (seed, epoch), so a resumed run needs only the step to find its
place.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

IGNORE = -100
"""The label of a position nobody trains (Hugging Face's convention): prompts, padding."""
Ids = npt.NDArray[np.int32]


@dataclass(frozen=True, eq=False)
class Example:
    """One tokenised training sequence. ``prompt``/``target`` keep the text for samples and
    exact-match checks (the last trained turn and what precedes it); empty for plain text.

    Ids and labels are int32 arrays: as tuples of Python ints a dataset would cost about 70
    bytes a token, so a few million examples would not fit in a worker's memory.
    """

    input_ids: Ids
    labels: Ids
    prompt: str = ""
    target: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Pair:
    """A DPO preference pair: the same prompt completed the preferred and the other way."""

    chosen: Example
    rejected: Example


@dataclass(frozen=True)
class Batch:
    """Rows of token ids: padded rows carry an ``attention_mask``; packed rows carry instead
    their ``segments`` (per row, the lengths of its examples and of the padding after them)."""

    input_ids: torch.Tensor  # (R, T)
    labels: torch.Tensor  # (R, T)
    position_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor | None  # (R, T), or None when packed
    segments: tuple[tuple[int, ...], ...] | None = None  # R rows, when packed

    def rows(self, start: int, stop: int) -> Batch:
        mask = self.attention_mask[start:stop] if self.attention_mask is not None else None
        segments = self.segments[start:stop] if self.segments is not None else None
        return Batch(
            self.input_ids[start:stop],
            self.labels[start:stop],
            self.position_ids[start:stop],
            mask,
            segments,
        )


def batch_indices(n: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's shuffled batches of example indices: a pure function of (seed, epoch), so a
    resumed run needs only the step to find its place."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows of at most ``capacity`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def collate(examples: Sequence[Example], *, packing: bool, capacity: int, pad_id: int) -> Batch:
    """Rows padded to the longest; packed rows restart position ids at every example, and the
    padding after them forms a segment of its own, so attention confined to segments
    (:mod:`~pipeline.parts.attention`) keeps every example inside itself."""
    groups = (
        pack([len(e) for e in examples], capacity)
        if packing
        else [[i] for i in range(len(examples))]
    )
    width = max(sum(len(examples[i]) for i in g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    mask = torch.zeros((len(groups), width), dtype=torch.long)
    segments = []
    for r, group in enumerate(groups):
        at = 0
        for i in group:
            n = len(examples[i])
            ids[r, at : at + n] = torch.from_numpy(examples[i].input_ids)
            labels[r, at : at + n] = torch.from_numpy(examples[i].labels)
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
        mask[r, :at] = 1
        if packing:
            lengths = [len(examples[i]) for i in group]
            segments.append(tuple([*lengths, width - at] if at < width else lengths))
    if packing:
        return Batch(ids, labels, positions, None, tuple(segments))
    return Batch(ids, labels, positions, mask)


def collate_pairs(pairs: Sequence[Pair], *, capacity: int, pad_id: int) -> Batch:
    """Preference pairs as padded rows, the chosen answers first, then the rejected ones."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(rows, packing=False, capacity=capacity, pad_id=pad_id)
