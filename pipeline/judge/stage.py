"""The ``judge`` stage: a judge votes on every pair of a comparison, each pair in both orders.

For a pair (x, y) the judge is asked twice, x shown as A then as B (MT-Bench's swap). Orders
that agree give that model the win; orders that disagree are a tie, since the judge then
followed the position rather than the answers. The share of pairs where it picked the same
position both times is its position bias (1.0: it only ever looks at the position).

A registry model (a runtime from :mod:`pipeline.parts.runtimes`) answers by log-likelihood: the
verdict is whichever of " A" and " B" is the likelier continuation of the filled-in rubric, so
no sampling and no parsing is involved. An external OpenAI-compatible endpoint answers a chat
completion at temperature 0, and its reply is searched for the letter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pipeline.configs.judge import JudgeConfig
from pipeline.parts.device import inference_device
from pipeline.parts.endpoints import ChatEndpoint, Endpoint
from pipeline.parts.runtimes import load_runtime
from pipeline.parts.runtimes.base import Runtime
from pipeline.types import Hooks, PipelineError, Progress, RunPaths, StageCancelled

Pick = Literal["A", "B", ""]
_CHUNK = 16  # pairs scored per call (each pair: two orders, two candidate labels)
_LETTER = re.compile(r"\b([AB])\b")


@dataclass(frozen=True)
class JudgePair:
    prompt_index: int
    model_x: str
    model_y: str
    question: str
    answer_x: str
    answer_y: str


@dataclass(frozen=True)
class JudgeInputs:
    pairs: tuple[JudgePair, ...]
    model_dir: Path | None = None
    """The judge's folder, for a registry model."""
    adapter_dir: Path | None = None
    """A peft adapter put on ``model_dir`` (then the adapter's base)."""
    endpoint: Endpoint | None = None
    """The judge, for an external endpoint."""


@dataclass(frozen=True)
class Verdict:
    prompt_index: int
    model_x: str
    model_y: str
    picks: tuple[Pick, Pick]
    """The position picked with x shown first, then with y shown first ("": no answer)."""
    winner: str
    """``model_x``, ``model_y`` or ``tie``."""


@dataclass(frozen=True)
class JudgeResult:
    verdicts: list[Verdict] = field(default_factory=list)
    pairs: int = 0
    wins: int = 0
    """Pairs where both orders named the same model."""
    ties: int = 0
    position_bias: float | None = None
    """Share of pairs (with both answers) where the judge picked the same position twice."""
    first_position: float | None = None
    """Share of all picks that were the position shown first (A)."""
    unanswered: int = 0
    """Orders whose reply named neither letter (their pairs count as ties)."""


def decide(pair: JudgePair, picks: tuple[Pick, Pick]) -> str:
    """The pair's winner from the two orders' picks: a model when they agree, else a tie."""
    first = {"A": pair.model_x, "B": pair.model_y}.get(picks[0])
    second = {"A": pair.model_y, "B": pair.model_x}.get(picks[1])
    return first if first is not None and first == second else "tie"


Asker = Callable[[Sequence[str]], list[Pick]]
"""Filled-in rubrics → the position the judge picks for each."""


def _model_asker(runtime: Runtime) -> Asker:
    labels = [runtime.encode(" A"), runtime.encode(" B")]

    def ask(texts: Sequence[str]) -> list[Pick]:
        seqs, scored = [], []
        for text in texts:
            context = [runtime.prefix, *runtime.encode(text)]
            for label in labels:
                seqs.append(context + label)
                scored.append(len(label))
        nll = runtime.scorer.continuation_nll(seqs, scored)
        # Equal likelihoods (a judge that cannot tell) count as the first position.
        return ["A" if nll[i] <= nll[i + 1] else "B" for i in range(0, len(nll), 2)]

    return ask


def _endpoint_asker(chat: ChatEndpoint) -> Asker:
    def one(text: str) -> Pick:
        found = _LETTER.search(chat.ask(text, max_tokens=8))
        return found.group(1) if found else ""  # type: ignore[return-value]

    return lambda texts: [one(text) for text in texts]


def run_judge(
    config: JudgeConfig, inputs: JudgeInputs, paths: RunPaths, hooks: Hooks = Hooks()
) -> JudgeResult:
    """Judge every pair in both orders; writes ``verdicts.jsonl`` to the output folder.

    Raises:
        PipelineError: ``judge.no_pairs`` for a comparison without pairs, ``judge.endpoint_*``
            when the endpoint fails, ``evaluate.model_format`` for a folder no runtime reads.
        StageCancelled: when ``hooks.should_stop`` answers True.
    """
    pairs = list(inputs.pairs[: config.max_pairs])
    if not pairs:
        raise PipelineError("judge.no_pairs", "the comparison has no pairs to judge")
    runtime: Runtime | None = None
    chat: ChatEndpoint | None = None
    if inputs.endpoint is not None:
        chat = ChatEndpoint(inputs.endpoint, role="judge", timeout_s=config.timeout_s)
        ask = _endpoint_asker(chat)
    elif inputs.model_dir is not None:
        torch.set_num_threads(config.threads)
        runtime = load_runtime(
            inputs.model_dir, device=inference_device(config.device),
            max_length=config.max_length, threads=config.threads, adapter=inputs.adapter_dir,
        )  # fmt: skip
        ask = _model_asker(runtime)
    else:
        raise PipelineError("judge.no_judge", "give a judge model or an endpoint")
    try:
        verdicts = _judge_all(config, pairs, ask, hooks)
    finally:
        if runtime is not None:
            runtime.close()
        if chat is not None:
            chat.close()
    _write(paths.output_dir, verdicts)
    return _summary(verdicts)


def _judge_all(
    config: JudgeConfig, pairs: list[JudgePair], ask: Asker, hooks: Hooks
) -> list[Verdict]:
    verdicts: list[Verdict] = []
    for start in range(0, len(pairs), _CHUNK):
        if hooks.should_stop():
            raise StageCancelled()
        chunk = pairs[start : start + _CHUNK]
        texts = []
        for p in chunk:  # x first, then y first
            texts += [config.render(p.question, p.answer_x, p.answer_y),
                      config.render(p.question, p.answer_y, p.answer_x)]  # fmt: skip
        picks = ask(texts)
        for i, p in enumerate(chunk):
            both = (picks[2 * i], picks[2 * i + 1])
            verdicts.append(Verdict(p.prompt_index, p.model_x, p.model_y, both, decide(p, both)))
        hooks.on_progress(Progress(step=len(verdicts), total=len(pairs)))
    return verdicts


def _summary(verdicts: list[Verdict]) -> JudgeResult:
    answered = [v for v in verdicts if "" not in v.picks]
    picks = [p for v in verdicts for p in v.picks if p]
    ties = sum(v.winner == "tie" for v in verdicts)
    return JudgeResult(
        verdicts=verdicts,
        pairs=len(verdicts),
        wins=len(verdicts) - ties,
        ties=ties,
        position_bias=(
            sum(v.picks[0] == v.picks[1] for v in answered) / len(answered) if answered else None
        ),
        first_position=sum(p == "A" for p in picks) / len(picks) if picks else None,
        unanswered=sum(p == "" for v in verdicts for p in v.picks),
    )


def _write(out: Path, verdicts: list[Verdict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "verdicts.jsonl").open("w", encoding="utf-8") as f:
        for v in verdicts:
            f.write(json.dumps({"prompt": v.prompt_index, "model_x": v.model_x,
                                "model_y": v.model_y, "picks": list(v.picks),
                                "winner": v.winner}) + "\n")  # fmt: skip
