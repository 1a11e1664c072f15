"""How far a judge agrees with people: Cohen's kappa over the pairs both voted on.

Verdicts are compared in model terms (which model won, or a tie; ``both_bad`` is a tie), so the
side each answer was shown on does not matter. Each human vote on a pair the judge voted on is
one item, paired with the judge's verdict on that pair.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from app.ratings.bradley_terry import Vote


def verdict(v: Vote) -> str:
    if v.outcome == "a":
        return v.model_a
    if v.outcome == "b":
        return v.model_b
    return "tie"


def _pair(v: Vote) -> tuple[str, frozenset[str]]:
    return v.prompt_id, frozenset((v.model_a, v.model_b))


def cohen_kappa(items: Sequence[tuple[str, str]]) -> float | None:
    """Kappa of two raters' labels, one (label, label) per item; None when chance agreement is
    total (both always gave the same single label), where kappa is undefined."""
    if not items:
        return None
    n = len(items)
    observed = sum(a == b for a, b in items) / n
    left, right = Counter(a for a, _ in items), Counter(b for _, b in items)
    expected = sum(left[k] * right[k] for k in left) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement_with_people(judge: Iterable[Vote], people: Iterable[Vote]) -> dict[str, Any]:
    """Pairs both voted on, the share of matching verdicts and Cohen's kappa (first showings
    only: a person's control repeats would count a pair twice)."""
    mine = {_pair(v): verdict(v) for v in judge if v.round == 0}
    items = [(mine[_pair(v)], verdict(v)) for v in people if v.round == 0 and _pair(v) in mine]
    return {
        "pairs": len({_pair(v) for v in people if v.round == 0 and _pair(v) in mine}),
        "votes": len(items),
        "agreement": sum(a == b for a, b in items) / len(items) if items else None,
        "kappa": cohen_kappa(items),
    }
