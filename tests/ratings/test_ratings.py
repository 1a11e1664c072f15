"""Ratings math on synthetic votes whose truth is known, and the pairing rules."""

from __future__ import annotations

import json
import math
import random

import pytest

from app.ratings.bradley_terry import Vote, elo, results
from app.ratings.pairing import PairKey, export_jsonl, next_pair, resolve_ticket, vote_for

SECRET = b"s3cret"


def _votes(a: str, b: str, wins: int, losses: int, ties: int = 0) -> list[Vote]:
    out = [Vote("r", f"p{i}", a, b, "a") for i in range(wins)]
    out += [Vote("r", f"q{i}", a, b, "b") for i in range(losses)]
    out += [Vote("r", f"t{i}", b, a, "tie") for i in range(ties)]
    return out


def test_two_models_closed_form() -> None:
    ratings = elo(["A", "B"], _votes("A", "B", 30, 10), ridge=1e-9)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert ratings["A"] + ratings["B"] == pytest.approx(2000)
    # Ties are half a win: 10 wins + 20 ties = 20 of 30 points, odds 2.
    ratings = elo(["A", "B"], _votes("A", "B", 10, 0, ties=20), ridge=1e-9)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(2), abs=1e-3)


def test_undefeated_model_stays_finite() -> None:
    ratings = elo(["A", "B"], _votes("A", "B", 10, 0))
    assert 1000 < ratings["A"] < 3000 and math.isfinite(ratings["B"])


def _simulate(true: dict[str, float], n: int, seed: int) -> list[Vote]:
    rng = random.Random(seed)
    models = sorted(true)
    votes = []
    for i in range(n):
        a, b = rng.sample(models, 2)
        p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
        u = rng.random()
        outcome = "tie" if abs(u - p) < 0.05 else ("a" if u < p else "b")
        votes.append(Vote(f"r{i % 5}", f"p{i}", a, b, outcome))  # type: ignore[arg-type]
    return votes


def test_recovers_a_known_order_with_intervals() -> None:
    true = {"big": 1300.0, "mid": 1100.0, "small": 900.0, "tiny": 700.0}
    out = results(_simulate(true, 1500, 1), rounds=200, seed=3)
    assert [row["model"] for row in out["ladder"]] == ["big", "mid", "small", "tiny"]
    centre = sum(true.values()) / 4
    for row in out["ladder"]:
        lo, hi = row["ci95"]
        assert lo < row["rating"] < hi and hi - lo < 150
        assert lo - 30 < true[row["model"]] - centre + 1000 < hi + 30
    assert out["win_rate"]["big"]["tiny"] > 0.9 > out["win_rate"]["tiny"]["big"]
    assert sum(out["votes_per_model"].values()) == 2 * 1500
    assert out["left_win_rate"] == pytest.approx(0.5, abs=0.05)
    again = results(_simulate(true, 1500, 1), rounds=200, seed=3)
    assert again == out
    json.dumps(out)


def test_left_bias_and_rater_agreement() -> None:
    votes = [Vote("r", f"p{i}", "A", "B", "a") for i in range(8)]
    votes += [Vote("r", f"p{i}", "B", "A", "a" if i < 2 else "b", round=1) for i in range(4)]
    votes += [Vote("r", "tp", "A", "B", "tie"), Vote("r", "tp", "B", "A", "both_bad", round=1)]
    out = results(votes, rounds=20)
    assert out["left_win_rate"] == pytest.approx(10 / 12)
    # p0, p1 flipped (left won again = the other model), p2, p3 and the tie agree.
    assert out["rater_agreement"] == {"repeats": 5, "agreement": pytest.approx(3 / 5)}


def _answers() -> dict[str, dict[str, str]]:
    return {
        f"p{i}": {m: f"answer of {m} to {i}" for m in ("alpha", "beta", "gamma")} for i in range(4)
    }


def test_pairing_is_blind_complete_and_never_repeats() -> None:
    answers = _answers()
    voted: list[PairKey] = []
    seen_left: set[str] = set()
    while show := next_pair(answers, "rater1", voted, secret=SECRET, control_every=5):
        body = show.public({p: f"prompt {p}" for p in answers}, answers)
        assert set(body) == {"ticket", "prompt", "a", "b"}
        assert not any(m in body["ticket"] for m in ("alpha", "beta", "gamma"))
        assert show.key not in voted
        back = resolve_ticket(answers, "rater1", show.ticket, secret=SECRET)
        assert back == show
        assert resolve_ticket(answers, "rater2", show.ticket, secret=SECRET) is None
        seen_left.add(show.left_model)
        voted.append(show.key)
    fresh = [k for k in voted if k.round == 0]
    controls = [k for k in voted if k.round == 1]
    assert len(fresh) == 4 * 3 and len(set(fresh)) == 12
    assert controls and all(PairKey(k.prompt_id, k.model_x, k.model_y) in fresh for k in controls)
    assert voted[4].round == 1  # the fifth showing is a control repeat
    assert seen_left == {"alpha", "beta", "gamma"}


def test_pairing_prefers_least_rated() -> None:
    answers = _answers()
    counts = dict.fromkeys([PairKey.of(p, "alpha", "beta") for p in answers], 5)
    counts |= dict.fromkeys([PairKey.of(p, "alpha", "gamma") for p in answers], 5)
    show = next_pair(answers, "r", [], secret=SECRET, counts=counts)
    assert show is not None and {show.key.model_x, show.key.model_y} == {"beta", "gamma"}


def test_a_ticket_becomes_a_vote_in_model_terms() -> None:
    answers = _answers()
    show = next_pair(answers, "r", [], secret=SECRET)
    assert show is not None
    back = resolve_ticket(answers, "r", show.ticket, secret=SECRET)
    assert back is not None
    vote = vote_for(back, "r", "a", "crisper")
    assert vote.model_a == show.left_model and vote.outcome == "a" and vote.round == 0
    with pytest.raises(ValueError):
        vote_for(back, "r", "left")
    [line] = export_jsonl([vote]).splitlines()
    assert json.loads(line) == {
        "rater": "r",
        "prompt_id": show.key.prompt_id,
        "model_a": show.left_model,
        "model_b": show.right_model,
        "outcome": "a",
        "round": 0,
        "note": "crisper",
    }
