"""Ratings from pairwise votes: Bradley–Terry on the Elo scale, with bootstrap intervals.

The model is FastChat's (Chatbot Arena's "MLE Elo"): P(i beats j) = 1 / (1 + 10^((R_j − R_i)/400)),
fitted by maximum likelihood, a logistic regression without intercept whose features are +1 for
the left model and −1 for the right one. As there, a tie counts as half a win for each side
(a ``both_bad`` vote is a tie too), ratings are shown as 400·r + 1000 with ``r`` the strength in
log10 units, and the 95% interval comes from refitting on votes resampled with replacement.

Why not scikit-learn like FastChat: the API process serves these figures and numpy/scikit-learn
are not API dependencies. The problem is tiny (one parameter per model), so a Newton iteration
on the aggregated win counts, with an n×n linear solve in plain Python, converges in a few
steps. A weak Gaussian prior (``ridge``, in natural-log units; FastChat's regression carries a
similarly weak L2 term through its ``C``) keeps the fit finite when a model won or lost every
vote; ratings are then centred so their mean is 1000 (the likelihood does not fix the origin).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["a", "b", "tie", "both_bad"]
SCALE, BASE, INIT = 400.0, 10.0, 1000.0
_LN_BASE = math.log(BASE)


@dataclass(frozen=True)
class Vote:
    """One rater's verdict on one pair; ``a`` is the answer shown on the left."""

    rater: str
    prompt_id: str
    model_a: str
    model_b: str
    outcome: Outcome
    round: int = 0
    """0 for a pair's first showing to this rater, 1 for a control repeat of it."""
    note: str | None = None


def _score(outcome: str) -> float:
    """The left model's share of the win."""
    return {"a": 1.0, "b": 0.0}.get(outcome, 0.5)


def _wins(votes: Iterable[Vote], index: Mapping[str, int]) -> list[list[float]]:
    n = len(index)
    wins = [[0.0] * n for _ in range(n)]
    for v in votes:
        i, j, s = index[v.model_a], index[v.model_b], _score(v.outcome)
        wins[i][j] += s
        wins[j][i] += 1.0 - s
    return wins


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (a is small and well conditioned)."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            for k in range(c, n + 1):
                m[r][k] -= f * m[c][k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))) / m[r][r]
    return x


def fit(
    wins: Sequence[Sequence[float]], *, ridge: float = 1e-2, iterations: int = 100
) -> list[float]:
    """Strengths θ (natural-log units) maximising Σ w_ij log σ(θ_i − θ_j) − ridge/2 · Σ θ²."""
    n = len(wins)
    theta = [0.0] * n
    for _ in range(iterations):
        grad = [-ridge * t for t in theta]
        hess = [[0.0] * n for _ in range(n)]
        for i in range(n):
            hess[i][i] = -ridge
            for j in range(n):
                games = wins[i][j] + wins[j][i]
                if i == j or games == 0:
                    continue
                p = 1.0 / (1.0 + math.exp(theta[j] - theta[i]))
                grad[i] += wins[i][j] - games * p
                w = games * p * (1.0 - p)
                hess[i][i] -= w
                hess[i][j] += w
        step = _solve(hess, grad)
        theta = [t - s for t, s in zip(theta, step, strict=True)]
        if max(abs(s) for s in step) < 1e-10:
            break
    return theta


def elo(models: Sequence[str], votes: Sequence[Vote], *, ridge: float = 1e-2) -> dict[str, float]:
    """Each model's rating, 400·r + 1000 with r in log10 units, mean 1000."""
    index = {m: i for i, m in enumerate(models)}
    theta = fit(_wins(votes, index), ridge=ridge)
    mean = sum(theta) / len(theta)
    return {m: SCALE * (theta[i] - mean) / _LN_BASE + INIT for m, i in index.items()}


def _percentile(sorted_xs: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def results(
    votes: Sequence[Vote],
    models: Sequence[str] | None = None,
    *,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every figure of a comparison: the ladder with 95% bootstrap intervals, the win-rate
    matrix, votes per model, the left-position win rate and rater agreement on control repeats.
    """
    names = (
        list(models)
        if models is not None
        else sorted({v.model_a for v in votes} | {v.model_b for v in votes})
    )
    ladder: list[dict[str, Any]] = []
    if votes and len(names) >= 2:
        point = elo(names, votes)
        rng = random.Random(seed)
        samples: dict[str, list[float]] = {m: [] for m in names}
        for _ in range(rounds):
            resample = [votes[rng.randrange(len(votes))] for _ in votes]
            for m, r in elo(names, resample).items():
                samples[m].append(r)
        for m in names:
            xs = sorted(samples[m])
            ladder.append(
                {
                    "model": m,
                    "rating": point[m],
                    "ci95": [_percentile(xs, 0.025), _percentile(xs, 0.975)],
                }
            )
        ladder.sort(key=lambda row: -row["rating"])
    index = {m: i for i, m in enumerate(names)}
    wins = _wins(votes, index)
    matrix: dict[str, dict[str, float | None]] = {
        a: {
            b: (wins[i][j] / (wins[i][j] + wins[j][i])) if wins[i][j] + wins[j][i] else None
            for j, b in enumerate(names)
            if b != a
        }
        for i, a in enumerate(names)
    }
    per_model = dict.fromkeys(names, 0)
    for v in votes:
        per_model[v.model_a] += 1
        per_model[v.model_b] += 1
    return {
        "votes": len(votes),
        "ladder": ladder,
        "win_rate": matrix,
        "votes_per_model": per_model,
        "left_win_rate": left_win_rate(votes),
        "outcomes": {o: sum(v.outcome == o for v in votes) for o in ("a", "b", "tie", "both_bad")},
        "rater_agreement": agreement(votes),
    }


def left_win_rate(votes: Sequence[Vote]) -> float | None:
    """Share of decisive votes won by the answer shown on the left (0.5: no position bias)."""
    decisive = [v for v in votes if v.outcome in ("a", "b")]
    return sum(v.outcome == "a" for v in decisive) / len(decisive) if decisive else None


def _verdict(v: Vote) -> str:
    """The outcome in model terms, whatever side each model was shown on."""
    if v.outcome == "a":
        return v.model_a
    if v.outcome == "b":
        return v.model_b
    return "tie"


def agreement(votes: Sequence[Vote]) -> dict[str, Any]:
    """Share of control repeats where the rater gave the same verdict as the first time (a tie
    and a ``both_bad`` agree; sides are compared by model, not position)."""
    first: dict[tuple[str, str, frozenset[str]], str] = {}
    for v in votes:
        if v.round == 0:
            first[(v.rater, v.prompt_id, frozenset((v.model_a, v.model_b)))] = _verdict(v)
    pairs = same = 0
    for v in votes:
        if v.round == 1:
            key = (v.rater, v.prompt_id, frozenset((v.model_a, v.model_b)))
            if key in first:
                pairs += 1
                same += first[key] == _verdict(v)
    return {"repeats": pairs, "agreement": same / pairs if pairs else None}
