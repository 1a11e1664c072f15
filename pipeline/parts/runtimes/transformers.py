"""The transformers runtime: generate and score with a Hugging Face causal LM in torch.

:func:`generate` is the one place a torch model generates: pretraining's samples, fine-tuning's
answers to validation prompts, evaluation's and comparison's seeded samples all call it.
:class:`Scorer` scores windows of token ids in batches (evaluation's perplexity; continuations
through :mod:`~pipeline.parts.runtimes.scoring`), and
:func:`logits_fn` gives per-position logits (quantisation's checks against llama.cpp).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from pipeline.configs.evaluate import SampleOptions
from pipeline.parts.hf import load_causal_lm, load_tokenizer
from pipeline.parts.lora import load_merged
from pipeline.parts.runtimes.base import (
    DEFAULT_MAX_LENGTH,
    Runtime,
    Window,
    WindowScorer,
    window_length,
)
from pipeline.parts.runtimes.scoring import continuation_nll
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


class _AskStop(StoppingCriteria):
    """Ends generation once ``should_stop`` answers True (every sequence of the batch)."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        stop = torch.full((input_ids.shape[0],), self.should_stop(), device=input_ids.device)
        return stop.bool()  # type: ignore[return-value]


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
    should_stop: Callable[[], bool] | None = None,
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
    if should_stop is not None:  # asked after every token: a cancel need not wait for the end
        extra["stopping_criteria"] = StoppingCriteriaList([_AskStop(should_stop)])
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
        """Continuations sharing a context scored in one packed row: see
        :func:`~pipeline.parts.runtimes.scoring.continuation_nll`."""
        return continuation_nll(
            self.model,
            seqs,
            scored,
            max_length=self.max_length,
            batch_size=self.batch_size,
            device=self.device,
        )


@dataclass
class TransformersRuntime(Runtime):
    """A Hugging Face folder in torch, in fp32."""

    tokenizer: Any = None
    model: Any = None
    device: Any = None

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        device: torch.device,
        max_length: int | None,
        batch_size: int,
        adapter: Path | None = None,
    ) -> TransformersRuntime:
        """``adapter``: a peft adapter on the base in ``folder``, merged (a fine-tune saves its
        tokenizer beside the adapter, and that one is used).

        Raises:
        PipelineError: ``model.tokenizer_invalid``, ``evaluate.no_bos``,
            ``evaluate.max_length``."""
        if adapter is not None:
            tokenizer_dir = adapter if (adapter / "tokenizer_config.json").is_file() else folder
            tokenizer = load_tokenizer(tokenizer_dir)
            model: Any = load_merged(folder, adapter, vocab_size=len(tokenizer))
        else:
            tokenizer = load_tokenizer(folder)
            model = load_causal_lm(folder, dtype=torch.float32)
        model.to(device)
        model.eval()
        context = int(getattr(model.config, "max_position_embeddings", 0) or DEFAULT_MAX_LENGTH)
        window = window_length(max_length, context)
        scorer = Scorer(model, max_length=window, batch_size=batch_size, device=device)
        info = {
            "format": "huggingface" if adapter is None else "peft-adapter",
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

    def lead_ids(self) -> list[int]:
        probe = list(self.tokenizer("a")["input_ids"])
        bos = self.tokenizer.bos_token_id
        return [int(bos)] if bos is not None and probe and probe[0] == bos else []

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            return super().chat_ids(messages)
        # Rendered as text first: the template writes any BOS itself, so none is added.
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return self.encode(str(text))

    def generate(
        self,
        ids: list[int],
        *,
        seed: int,
        options: SampleOptions,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[int]:
        torch.manual_seed(seed)
        return generate(
            self.model,
            ids,
            device=self.device,
            max_new_tokens=options.max_new_tokens,
            pad_id=self.tokenizer.pad_token_id or self.prefix,
            sampling=Sampling(temperature=options.temperature, top_p=options.top_p),
            should_stop=should_stop,
        )
