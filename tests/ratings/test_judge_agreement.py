"""The judge's figures as plain functions: Cohen's kappa, agreement with people by model (not
by side), the verdict from two orders, and the rubric filled in without reading the texts."""

from __future__ import annotations

import pytest

from app.ratings.bradley_terry import Vote
from app.ratings.judges import agreement_with_people, cohen_kappa
from pipeline.configs.base import ConfigError
from pipeline.configs.judge import JudgeConfig
from pipeline.judge.stage import JudgePair, decide


def test_cohen_kappa_matches_the_textbook_example() -> None:
    # Wikipedia's: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → p_o 0.7, p_e 0.5, kappa 0.4.
    items = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(items) == pytest.approx(0.4)
    assert cohen_kappa([("tie", "x")] * 3) == 0.0
    assert cohen_kappa([("x", "x")] * 3) is None  # one label throughout: undefined
    assert cohen_kappa([]) is None


def test_agreement_compares_models_not_sides_and_skips_control_repeats() -> None:
    judge = [Vote("j", "0", "x", "y", "a"), Vote("j", "1", "x", "y", "tie")]
    people = [
        Vote("p", "0", "y", "x", "b"),  # x wins, shown on the right: agrees
        Vote("q", "1", "x", "y", "both_bad"),  # a tie: agrees
        Vote("p", "0", "y", "x", "a", round=1),  # a control repeat: not counted
        Vote("p", "2", "x", "y", "a"),  # a pair the judge did not vote on
    ]
    assert agreement_with_people(judge, people) == {
        "pairs": 2, "votes": 2, "agreement": 1.0, "kappa": 1.0,
    }  # fmt: skip


def test_two_orders_give_a_win_only_when_they_name_the_same_model() -> None:
    pair = JudgePair(0, "x", "y", "q", "ax", "ay")
    assert decide(pair, ("A", "B")) == "x"  # x first then second: named both times
    assert decide(pair, ("B", "A")) == "y"
    assert decide(pair, ("A", "A")) == "tie"  # the first position both times
    assert decide(pair, ("A", "")) == "tie"  # an order without an answer


def test_the_rubric_is_filled_in_one_pass_and_checked() -> None:
    config = JudgeConfig(rubric="Q {question} A {answer_a} B {answer_b}")
    assert config.render("{answer_b}", "{x}", "b") == "Q {answer_b} A {x} B b"
    with pytest.raises(ConfigError, match="rubric"):
        JudgeConfig(rubric="{question} {answer_a}")
    with pytest.raises(ConfigError, match="rubric"):
        JudgeConfig(rubric="{question} {answer_a} {answer_b} {answer_b}")
