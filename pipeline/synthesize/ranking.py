"""Preference pairs: a prompt's sampled answers ranked, the best chosen and the worst rejected.

Rules: ``judge`` is the judge model's mean log-likelihood per token of the answer after the
templated prompt (a length-normalised score, so a short answer does not win by being short);
``reference`` is ROUGE-L F1 against the prompt record's own answer; ``length`` prefers the longer
answer. A prompt whose answers all score the same (or that has fewer than two distinct answers)
makes no pair: a tie teaches DPO nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rouge_score import rouge_scorer

from pipeline.configs.synthesize import SynthesizeConfig
from pipeline.parts.runtimes.base import Runtime
from pipeline.synthesize.modes import Prompt, Synthetic
from pipeline.types import Hooks, PipelineError, StageCancelled


def judge_scores(runtime: Runtime, question: str, answers: Sequence[str]) -> list[float]:
    """Mean log-probability per token of each answer after the question the teacher was asked."""
    context = [runtime.prefix, *runtime.encode(question)]
    room = runtime.scorer.max_length
    seqs, scored = [], []
    for answer in answers:
        ids = runtime.encode(answer)[: room - 1] or [runtime.prefix]
        seqs.append([*context[-(room - len(ids)) :], *ids])
        scored.append(len(ids))
    nll = runtime.scorer.continuation_nll(seqs, scored)
    return [-n / k for n, k in zip(nll, scored, strict=True)]


def _rule_scores(rule: str, prompt: Prompt, answers: Sequence[str]) -> list[float]:
    if rule == "length":
        return [float(len(a)) for a in answers]
    if prompt.reference is None:
        raise PipelineError(
            "synthesize.no_reference",
            f"ranking 'reference' needs an answer in every prompt record (line {prompt.index})",
        )
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return [float(scorer.score(prompt.reference, a)["rougeL"].fmeasure) for a in answers]


def preference_pairs(
    config: SynthesizeConfig,
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[tuple[int, str]]],
    judge: Runtime | None,
    question: Callable[[str], str],
    base: dict[str, Any],
    skipped: Counter[str],
    hooks: Hooks,
) -> Iterator[Synthetic]:
    """One pair per prompt from its (seed, answer) samples, ranked by ``config.ranking``
    (``question``: what the teacher was asked for a prompt, the judge's context).

    Raises:
        PipelineError: ``synthesize.no_reference`` for ``reference`` ranking without answers.
        StageCancelled: ``should_stop`` answered True between prompts.
    """
    for prompt, drawn in zip(prompts, samples, strict=True):
        if hooks.should_stop():
            raise StageCancelled()
        if len(drawn) < 2:
            skipped["too_few_answers"] += 1
            continue
        answers = [a for _, a in drawn]
        if config.ranking == "judge":
            assert judge is not None
            scores = judge_scores(judge, question(prompt.text), answers)
        else:
            scores = _rule_scores(config.ranking, prompt, answers)
        order = sorted(range(len(drawn)), key=lambda i: (-scores[i], drawn[i][0]))
        best, worst = order[0], order[-1]
        if scores[best] == scores[worst]:
            skipped["tied_answers"] += 1
            continue
        provenance = {
            **base,
            "source": {**base["source"], "records": [prompt.index]},
            "seed": {"chosen": drawn[best][0], "rejected": drawn[worst][0]},
            "ranking": {"rule": config.ranking, "chosen_score": scores[best],
                        "rejected_score": scores[worst], "answers": len(drawn)},
        }  # fmt: skip
        yield Synthetic(prompt.text, [answers[best], answers[worst]], provenance)
