"""Batched continuation scoring in torch (packed rows, 4D masks), apart so runtimes stay short."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

# Most float32 logits one continuation batch may hold (rows x kept positions x vocabulary): 1 GiB.
_MAX_BATCH_LOGITS = 1 << 28


def continuation_nll(
    model: PreTrainedModel,
    seqs: Sequence[Sequence[int]],
    scored: Sequence[int],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
) -> list[float]:
    """Summed NLL of the last ``scored[i]`` ids of each seq given everything before them (cut
    to the last ``max_length`` ids), many sequences per forward pass.

    Sequences that share their context (the bias probe asks 16 questions of each item's two
    contexts) are packed into one row: the context once, then each continuation's ids, under
    an attention mask by which a continuation sees the context and its own earlier ids only,
    with position ids that restart after the context for each one. Rows are left-padded to
    end together, so the model computes logits for each row's tail only (the context's last
    position and the continuations, ``logits_to_keep``); a pass holds up to ``batch_size *
    max_length`` tokens. The figures equal one sequence at a time within float tolerance.
    """
    if not seqs:
        return []
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (seq, k) in enumerate(zip(seqs, scored, strict=True)):
        end = len(seq) - 1
        if not 0 < k <= min(end, max_length):
            raise ValueError("scored ids must fit one window after at least one context id")
        row = list(seq[max(0, end - max_length) :])
        groups.setdefault(tuple(row[:-k]), []).append((i, row[-k:]))
    rows = [_Packed(list(context), conts) for context, conts in groups.items()]
    rows.sort(key=lambda row: row.width, reverse=True)
    vocab = int(model.config.get_text_config().vocab_size)
    logit_rows = max(1, _MAX_BATCH_LOGITS // (max(row.tail for row in rows) * vocab))
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    totals = torch.zeros(len(seqs), dtype=torch.float64)
    b = 0
    while b < len(rows):
        width = rows[b].width  # the widest row of this batch
        n = max(1, min(batch_size * max_length // width, logit_rows))
        batch, b = rows[b : b + n], b + n
        keep = max(row.tail for row in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)  # (B, W)
        positions = torch.zeros((len(batch), width), dtype=torch.long)  # (B, W)
        allow = torch.zeros((len(batch), width, width), dtype=torch.bool)  # (B, W query, W key)
        picks: list[tuple[int, int, int, int]] = []  # (row, kept column, target id, seq index)
        for r, packed in enumerate(batch):
            picks += packed.fill(r, ids[r], positions[r], allow[r], keep)
        mask = torch.zeros((len(batch), 1, width, width))  # additive, as attention adds it
        mask.masked_fill_(~allow[:, None], torch.finfo(mask.dtype).min)
        # The few architectures without logits_to_keep compute every position's logits.
        extra = {"logits_to_keep": keep} if keeps_logits else {}
        with torch.inference_mode():
            out = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                use_cache=False,
                **extra,
            )
            logprobs = torch.log_softmax(out.logits[:, -keep:].float(), dim=-1).cpu()
        r_, c_, t_, i_ = (torch.tensor(x) for x in zip(*picks, strict=True))
        totals.index_add_(0, i_, -logprobs[r_, c_, t_].double())
    return totals.tolist()


@dataclass(frozen=True)
class _Packed:
    """One context and the continuations scored after it, laid out as one row (see
    :func:`continuation_nll`)."""

    context: list[int]
    continuations: list[tuple[int, list[int]]]  # (seq index, scored ids)

    @property
    def tail(self) -> int:
        """Positions whose logits are read: the context's last and each continuation's own."""
        return 1 + sum(len(c) - 1 for _, c in self.continuations)

    @property
    def width(self) -> int:
        return len(self.context) - 1 + self.tail

    def fill(
        self, r: int, ids: torch.Tensor, positions: torch.Tensor, allow: torch.Tensor, keep: int
    ) -> list[tuple[int, int, int, int]]:
        """Write this row, right-aligned, into batch row ``r``'s ``ids``, ``positions`` and
        ``allow`` (W, W); return what its kept columns predict as (r, kept column, target id,
        seq index) picks."""
        width = ids.shape[0]
        pad = width - self.width
        n = len(self.context)
        allow[range(pad), range(pad)] = True  # padding sees itself, so its softmax is defined
        ids[pad : pad + n] = torch.tensor(self.context)
        positions[pad : pad + n] = torch.arange(n)
        allow[pad : pad + n, pad : pad + n] = torch.ones(n, n, dtype=torch.bool).tril()
        first = width - keep  # the first kept column
        picks = []
        at = pad + n  # where the next continuation's ids go
        for index, cont in self.continuations:
            m = len(cont) - 1  # ids read: all but the last scored one
            ids[at : at + m] = torch.tensor(cont[:-1], dtype=torch.long)
            positions[at : at + m] = torch.arange(n, n + m)
            allow[at : at + m, pad : pad + n] = True
            allow[at : at + m, at : at + m] = torch.ones(m, m, dtype=torch.bool).tril()
            # cont[0] is predicted by the context's last id, cont[t] by cont[t - 1].
            columns = [pad + n - 1, *range(at, at + m)]
            picks += [(r, c - first, t, index) for c, t in zip(columns, cont, strict=True)]
            at += m
        return picks
