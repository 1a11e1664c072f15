"""Counterfactual augmentation undoes a gender bias planted in a corpus, as the bias probe sees it.

The whole path a user takes: a skewed corpus (men with the probe's stereotyped attributes and
men's occupations, women with the others, 90% of the time) → ``prepare`` without and with
``counterfactual`` → the ``tiny`` model pretrained on each → the evaluate stage's bias probe on
the shipped templates' gender items. ``python -m benchmarks.bench_debias`` runs the same at a
larger size and prints every figure; the README quotes it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.bench_debias import run_debias
from pipeline.evaluate.bias import TEMPLATES_V1


@pytest.mark.slow
def test_augmentation_removes_most_of_a_planted_gender_bias(tmp_path: Path) -> None:
    gender = tmp_path / "gender.jsonl"
    lines = TEMPLATES_V1.read_text(encoding="utf-8").splitlines(keepends=True)
    gender.write_text("".join(line for line in lines if '"category": "gender"' in line))
    started = time.perf_counter()
    # One thread: the tiny model gains little from a second, which on a shared machine spins.
    figures = run_debias(
        tmp_path / "run", docs=1500, skew=0.9, steps=600, modes=("replace",), threads=1,
        templates=gender,
    )  # fmt: skip
    print(f"{time.perf_counter() - started:.0f} s", figures)
    skewed = figures["skewed"]["categories"]["gender"]
    augmented = figures["cda-replace"]["categories"]["gender"]
    assert skewed["n"] == augmented["n"] == 80
    # The planted bias is large and certain ...
    assert skewed["ci95"][0] > 1.0 and skewed["p_value"] < 0.01
    # ... and augmentation removes at least nine tenths of it.
    assert abs(augmented["bias"]) < 0.1 * skewed["bias"]
    assert augmented["ci95"][1] < skewed["ci95"][0]
    assert figures["cda-replace"]["records"] == figures["skewed"]["records"] == 1500
