"""The transformers runtime: generate and score with a Hugging Face causal LM in torch.

:func:`generate` is the one place a torch model generates: pretraining's samples, fine-tuning's
answers to validation prompts, evaluation's and comparison's seeded samples all call it.
:class:`Scorer` scores windows of token ids in batches (evaluation's perplexity), and
:func:`logits_fn` gives per-position logits (quantisation's checks against llama.cpp).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.configs.evaluate import SampleOptions
from pipeline.parts.hf import load_causal_lm, load_tokenizer
from pipeline.parts.runtimes.base import (
    DEFAULT_MAX_LENGTH,
    Runtime,
    Window,
    WindowScorer,
    window_length,
)
from pipeline.types import PipelineError

LogitsFn = Callable[[Sequence[int]], npt.NDArray[np.float32]]
"""Per-position logits of one sequence: (len(tokens), vocab)."""


@dataclass(frozen=True)
class Sampling:
    """How each next token is picked: greedily at temperature 0, else sampled from the
    temperature-scaled distribution cut to its ``top_k`` tokens and ``top_p`` mass (None: no
    cut)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None


GREEDY = Sampling()


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    device: torch.device,
    max_new_tokens: int,
    pad_id: int | None,
    sampling: Sampling = GREEDY,
    eos_ids: Sequence[int] | None = None,
) -> list[int]:
    """The ids ``model`` generates after ``prompt`` (with the KV cache), up to an id of
    ``eos_ids`` (default: the model's generation config) or ``max_new_tokens``.

    Sampling draws from torch's global RNG: seed it right before for a reproducible answer.
    ``model`` is put in eval mode for the call and given back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    inputs = torch.tensor([list(prompt)], device=device)
    sample = sampling.temperature > 0
    extra: dict[str, Any] = {} if eos_ids is None else {"eos_token_id": list(eos_ids)}
    out = model.generate(  # type: ignore[operator]
        inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=sampling.temperature if sample else None,
        top_k=sampling.top_k if sample else None,
        top_p=sampling.top_p if sample else None,
        pad_token_id=pad_id,
        use_cache=True,
        **extra,
    )
    model.train(was_training)
    return [int(i) for i in out[0, inputs.size(1) :].tolist()]


def answer(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int,
    eos_ids: list[int],
    device: torch.device,
) -> str:
    """Greedy answer to ``prompt`` (already templated), up to an id of ``eos_ids`` (EOS and the
    chat template's end-of-turn token): what a fine-tuned model says to a validation prompt."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    probe = tokenizer("a")["input_ids"]
    if bos is not None and probe and probe[0] == bos and (not ids or ids[0] != bos):
        ids = [bos, *ids]  # where the tokenizer itself starts with BOS, as in training
    out = generate(
        model,
        ids,
        device=device,
        max_new_tokens=max_new_tokens,
        pad_id=tokenizer.pad_token_id,
        eos_ids=eos_ids,
    )
    return str(tokenizer.decode(out, skip_special_tokens=True))


def answer_samples(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Iterable[Any],
    *,
    count: int,
    max_new_tokens: int,
    eos_ids: list[int],
    device: torch.device,
) -> list[dict[str, str]]:
    """Greedy answers to the prompts of the first ``count`` examples that have one (the chosen
    side of a preference pair), each beside the answer the data expects."""
    shown = [e for e in (getattr(x, "chosen", x) for x in items) if e.prompt][:count]
    return [
        {
            "prompt": e.prompt,
            "expected": e.target,
            "output": answer(
                model, tokenizer, e.prompt, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                device=device,
            ),
        }
        for e in shown
    ]  # fmt: skip


def sample_texts(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompts: Iterable[str],
    *,
    max_new_tokens: int,
    seed: int,
    device: torch.device,
    eos_id: int,
) -> list[dict[str, str]]:
    """A greedy and a top-k (k=40, T=0.8) continuation per text prompt, decoded: what a
    pretraining run's "samples" event shows.

    Runs inside ``fork_rng`` with its own seed, so sampling never shifts the training RNG and a
    resumed run stays bit-identical to an uninterrupted one. A leading EOS marks a document
    start, which is what the model saw in training.
    """
    out = []
    devices = [device.index or 0] if device.type == "cuda" else []
    top_k = Sampling(temperature=0.8, top_k=40)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for text in prompts:
            ids = [eos_id, *tokenizer.encode(text, add_special_tokens=False).ids]
            common: dict[str, Any] = {
                "device": device,
                "max_new_tokens": max_new_tokens,
                "pad_id": eos_id,
            }
            greedy = generate(model, ids, **common)
            sampled = generate(model, ids, sampling=top_k, **common)
            out.append(
                {
                    "prompt": text,
                    "greedy": tokenizer.decode(greedy),
                    "top_k": tokenizer.decode(sampled),
                }
            )
    return out


def logits_fn(model: PreTrainedModel) -> LogitsFn:
    """Per-position float32 logits of one sequence, as numpy (no gradient, no cache)."""

    def run(tokens: Sequence[int]) -> npt.NDArray[np.float32]:
        with torch.no_grad():
            out = model(torch.tensor([list(tokens)]), use_cache=False).logits[0]
        logits: npt.NDArray[np.float32] = out.float().numpy()
        return logits

    return run


def prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The one token every document is conditioned on: BOS, else EOS."""
    for tok in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tok is not None:
            return int(tok)
    raise PipelineError(
        "evaluate.no_bos", "the tokenizer has neither a BOS nor an EOS token to start documents"
    )


# Most float32 logits one continuation batch may hold (rows x kept positions x vocabulary): 1 GiB.
_MAX_BATCH_LOGITS = 1 << 28


class Scorer(WindowScorer):
    """Scores token sequences with a causal LM, batching equal-length windows.

    Windows are right-padded: under causal attention a padded position never affects the ones
    before it, so no attention mask is needed and scores equal an unbatched pass. Continuations
    (:meth:`continuation_nll`) are left-padded instead, so that each ends at the last position
    and only the last few positions' logits are computed.
    """

    def __init__(
        self, model: PreTrainedModel, *, max_length: int, batch_size: int, device: torch.device
    ) -> None:
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    def score(
        self, seqs: Sequence[Sequence[int]], windows: Sequence[Sequence[Window]]
    ) -> list[float]:
        jobs = [(i, w) for i, ws in enumerate(windows) for w in ws]
        jobs.sort(key=lambda job: job[1].end - job[1].start, reverse=True)
        totals = [0.0] * len(seqs)
        for b in range(0, len(jobs), self.batch_size):
            batch = jobs[b : b + self.batch_size]
            width = batch[0][1].end - batch[0][1].start
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (i, w) in enumerate(batch):
                seq = seqs[i]
                n = w.end - w.start
                inputs[row, :n] = torch.tensor(seq[w.start : w.end])
                labels = torch.tensor(seq[w.start + 1 : w.end + 1])
                targets[row, n - w.scored : n] = labels[n - w.scored :]
            with torch.inference_mode():
                logits = self.model(inputs.to(self.device), use_cache=False).logits.float()
            losses = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), targets.to(self.device), reduction="none"
            ).sum(dim=1)
            for row, (i, _) in enumerate(batch):
                totals[i] += float(losses[row])
        return totals

    def continuation_nll(self, seqs: Sequence[Sequence[int]], scored: Sequence[int]) -> list[float]:
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
            if not 0 < k <= min(end, self.max_length):
                raise ValueError("scored ids must fit one window after at least one context id")
            row = list(seq[max(0, end - self.max_length) :])
            groups.setdefault(tuple(row[:-k]), []).append((i, row[-k:]))
        rows = [_Packed(list(context), conts) for context, conts in groups.items()]
        rows.sort(key=lambda row: row.width, reverse=True)
        vocab = int(self.model.config.get_text_config().vocab_size)
        logit_rows = max(1, _MAX_BATCH_LOGITS // (max(row.tail for row in rows) * vocab))
        keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        totals = torch.zeros(len(seqs), dtype=torch.float64)
        b = 0
        while b < len(rows):
            width = rows[b].width  # the widest row of this batch
            n = max(1, min(self.batch_size * self.max_length // width, logit_rows))
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
                out = self.model(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
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
    :meth:`Scorer.continuation_nll`)."""

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


@dataclass
class TransformersRuntime(Runtime):
    """A Hugging Face folder in torch, in fp32."""

    tokenizer: Any = None
    model: Any = None
    device: Any = None

    @classmethod
    def load(
        cls, folder: Path, *, device: torch.device, max_length: int | None, batch_size: int
    ) -> TransformersRuntime:
        """Raises:
        PipelineError: ``model.tokenizer_invalid``, ``evaluate.no_bos``,
            ``evaluate.max_length``."""
        tokenizer = load_tokenizer(folder)
        model: Any = load_causal_lm(folder, dtype=torch.float32)
        model.to(device)
        model.eval()
        context = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_LENGTH)
        window = window_length(max_length, context)
        scorer = Scorer(model, max_length=window, batch_size=batch_size, device=device)
        info = {
            "format": "huggingface",
            "architecture": type(model).__name__,
            "params": sum(p.numel() for p in model.parameters()),
            "max_length": window,
            "device": device.type,
        }
        return cls(scorer, prefix_token(tokenizer), info, tokenizer, model, device)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(
            self.tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )

    def completion(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, ids: list[int], *, seed: int, options: SampleOptions) -> list[int]:
        torch.manual_seed(seed)
        return generate(
            self.model,
            ids,
            device=self.device,
            max_new_tokens=options.max_new_tokens,
            pad_id=self.tokenizer.pad_token_id or self.prefix,
            sampling=Sampling(temperature=options.temperature, top_p=options.top_p),
        )
