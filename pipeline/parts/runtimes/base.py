"""What a runtime offers a stage, whichever engine runs the model: encode and decode text, the
one token a document starts from, window scoring, and seeded samples.

Two runtimes implement it: :mod:`~pipeline.parts.runtimes.transformers` (a Hugging Face folder in
torch) and :mod:`~pipeline.parts.runtimes.llamacpp` (a GGUF in llama.cpp, with its own embedded
tokenizer, so a GGUF's bits per byte compare with the torch model's even when the token ids
differ). :func:`pipeline.parts.runtimes.load_runtime` picks one for a model folder.

Scoring works on windows, both ways scoring every token exactly once:

* ``disjoint`` (lm-eval's rolling windows with context length 1): targets are cut into chunks of
  ``L`` tokens; a chunk sees the ``L`` tokens that end one before its last target, so a full
  chunk's first token is conditioned on one token only. Cheap, pessimistic on long documents.
* ``strided`` (Hugging Face's perplexity guide): windows of ``L`` tokens start every ``S``
  tokens and score only the tokens not scored before, so each is predicted from at least
  ``L - S`` tokens of context. Closer to the model's real ability, ``L/S`` times the compute.

A window is ``(start, end, scored)``: the model reads ``seq[start:end]``, its logits predict
``seq[start+1:end+1]``, and the last ``scored`` of those count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.configs.evaluate import SampleOptions
from pipeline.types import PipelineError, StageCancelled

DEFAULT_MAX_LENGTH = 2048
"""The window when neither the caller nor the model's config names one."""


@dataclass(frozen=True)
class Window:
    start: int
    end: int
    scored: int


def disjoint_windows(n: int, max_length: int) -> Iterator[Window]:
    """Windows over a sequence of ``n`` ids (BOS first, so ``n - 1`` targets at 1..n-1)."""
    for a in range(1, n, max_length):
        b = min(a + max_length, n)
        end = b - 1
        yield Window(max(0, end - max_length), end, b - a)


def strided_windows(n: int, max_length: int, stride: int) -> Iterator[Window]:
    """Hugging Face's sliding windows: start every ``stride`` ids, score what is new."""
    if stride > max_length:
        raise ValueError("stride must not exceed max_length")
    first_unscored = 1
    for begin in range(0, n - 1, stride):
        end = min(begin + max_length, n - 1)
        scored = end + 1 - first_unscored
        if scored > 0:
            yield Window(begin, end, scored)
        first_unscored = end + 1
        if end == n - 1:
            break


class WindowScorer:
    """Turns windowing into windows; subclasses score ``(seqs, windows)`` with some runtime."""

    max_length: int

    def windows(self, n: int, windowing: str, stride: int) -> list[Window]:
        if windowing == "disjoint":
            return list(disjoint_windows(n, self.max_length))
        return list(strided_windows(n, self.max_length, min(stride, self.max_length)))

    def nll(self, seqs: Sequence[Sequence[int]], windowing: str, stride: int) -> list[float]:
        """Summed NLL (nats) of ``seq[1:]`` given ``seq[0]`` and what comes before, per seq."""
        return self.score(seqs, [self.windows(len(seq), windowing, stride) for seq in seqs])

    def continuation_nll(self, seqs: Sequence[Sequence[int]], scored: Sequence[int]) -> list[float]:
        """Summed NLL of the last ``scored[i]`` ids of each seq given everything before them
        (the context is cut to the last ``max_length`` ids)."""
        windows = []
        for seq, k in zip(seqs, scored, strict=True):
            end = len(seq) - 1
            if not 0 < k <= min(end, self.max_length):
                raise ValueError("scored ids must fit one window after at least one context id")
            windows.append([Window(max(0, end - self.max_length), end, k)])
        return self.score(seqs, windows)

    def score(
        self, seqs: Sequence[Sequence[int]], windows: Sequence[Sequence[Window]]
    ) -> list[float]:
        raise NotImplementedError


def window_length(requested: int | None, context: int) -> int:
    """The scoring window: ``requested``, or the model's context up to ``DEFAULT_MAX_LENGTH``.

    Raises:
        PipelineError: ``evaluate.max_length`` when ``requested`` exceeds the context.
    """
    max_length = requested or min(context, DEFAULT_MAX_LENGTH)
    if max_length > context:
        raise PipelineError(
            "evaluate.max_length", f"max_length {max_length} exceeds the model's context {context}"
        )
    return max_length


def _never() -> bool:
    return False


@dataclass
class Runtime:
    """A loaded model, scored and sampled the same way whatever engine runs it."""

    scorer: WindowScorer
    prefix: int
    """The one token every document and prompt starts from: BOS, else EOS."""
    info: dict[str, Any] = field(default_factory=dict)
    """What the report says about the model (format, parameters, window, device)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens and spacing kept (for the round-trip check)."""
        raise NotImplementedError

    def lead_ids(self) -> list[int]:
        """What the tokenizer itself puts before text (BOS for most Llama-style tokenizers,
        nothing for GPT-2-style ones): how lm-evaluation-harness encodes a context."""
        return [self.prefix]

    def chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """``messages`` in the model's chat template, ending with the assistant's turn opened.

        Raises:
            PipelineError: ``task.no_chat_template`` when the model has none.
        """
        raise PipelineError("task.no_chat_template", "this model cannot render chat messages")

    def completion(self, ids: list[int]) -> str:
        """Generated ids as the text a reader sees."""
        return self.decode(ids)

    def generate(
        self,
        ids: list[int],
        *,
        seed: int,
        options: SampleOptions,
        should_stop: Callable[[], bool] = _never,
    ) -> list[int]:
        """New ids after ``ids``, sampled with ``seed`` set right before (greedy at T=0); ends
        early, between tokens, once ``should_stop`` answers True."""
        raise NotImplementedError

    def samples(
        self, options: SampleOptions, should_stop: Callable[[], bool] = _never
    ) -> list[dict[str, Any]]:
        """One generation per prompt and seed, each naming its prompt, seed and settings (the
        seed is set right before each one, so a sample does not depend on which others were
        asked for). Prompts start with the same single prefix token the perplexity figures use.

        Raises:
            StageCancelled: ``should_stop`` answered True (asked between samples and tokens).
        """
        out: list[dict[str, Any]] = []
        for prompt in options.prompts:
            ids = [self.prefix, *self.encode(prompt)]
            for seed in options.seeds:
                if should_stop():
                    raise StageCancelled()
                new = self.generate(ids, seed=seed, options=options, should_stop=should_stop)
                if should_stop():  # cut short: not the sample its seed gives
                    raise StageCancelled()
                out.append(
                    {
                        "prompt": prompt,
                        "seed": seed,
                        "completion": self.completion(new),
                        "tokens": len(new),
                        "temperature": options.temperature,
                        "top_p": options.top_p,
                        "max_new_tokens": options.max_new_tokens,
                    }
                )
        return out

    def close(self) -> None:
        return None
