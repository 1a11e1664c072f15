"""Pairing two jobs on ``grader_score``: items the grader could not rate in either job are left
out rather than read as a score."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidInput
from app.reports.paired import compare_examples


def test_ungraded_items_are_left_out_of_the_pairing() -> None:
    a: dict[int, dict[str, Any]] = {
        1: {"grader_score": 4},
        2: {"grader_score": None},
        3: {"grader_score": 6},
    }
    b: dict[int, dict[str, Any]] = {
        1: {"grader_score": 8},
        2: {"grader_score": 9},
        3: {"grader_score": None},
    }
    found = compare_examples(a, b, "grader_score", samples=50, permutations=50)
    assert found["n"] == 1 and found["difference"] == 4 and found["mean_b"] == 8
    with pytest.raises(InvalidInput):
        compare_examples({2: a[2]}, {2: b[2]}, "grader_score")
