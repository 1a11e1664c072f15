"""Task metrics equal the reference libraries on the same strings, and their intervals behave."""

from __future__ import annotations

from typing import Any

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF

from pipeline.evaluate.metrics import (
    OTHER,
    TextMetrics,
    exact_match,
    label_figures,
    macro_f1,
    mean_figure,
    normalize_answer,
    read_label,
    token_f1,
)

PREDICTIONS = [
    "The cat sat on the mat.",
    "a quick brown fox jumps",
    "Paris is the capital of France",
    "",
    "completely unrelated words here",
]
REFERENCES = [
    ["The cat is sitting on the mat.", "A cat sat on a mat."],
    ["The quick brown fox jumps over the lazy dog."],
    ["The capital of France is Paris.", "Paris"],
    ["something"],
    ["a reference"],
]


def test_normalisation_and_squad_figures() -> None:
    assert normalize_answer("  The  Cat, sat!  ") == "cat sat"
    assert exact_match("the Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    # SQuAD F1 by hand: pred {cat sat on mat} vs ref {cat sat on mat} after normalisation.
    assert token_f1("The cat sat on the mat.", ["A cat sat on a mat."]) == 1.0
    # pred: quick brown fox jumps (4); ref: quick brown fox jumps over lazy dog (7); common 4.
    assert token_f1("a quick brown fox jumps", REFERENCES[1]) == pytest.approx(2 * 4 / (4 + 7))
    assert token_f1("", ["x"]) == 0.0 and token_f1("", [""]) == 1.0


def test_rouge_chrf_bleu_equal_the_libraries() -> None:
    text = TextMetrics()
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for pred, refs in zip(PREDICTIONS, REFERENCES, strict=True):
        ours = text.per_item(pred, refs)
        best = max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
        assert ours["rouge_l"] == pytest.approx(best, abs=1e-12)
        assert ours["chrf"] == pytest.approx(CHRF().sentence_score(pred, refs).score, abs=1e-9)
        bleu = BLEU(effective_order=True).sentence_score(pred, refs).score
        assert ours["bleu"] == pytest.approx(bleu, abs=1e-9)
    corpus = text.corpus(PREDICTIONS, REFERENCES, samples=200, seed=0)
    streams: Any = [[r[k] if k < len(r) else None for r in REFERENCES] for k in range(2)]
    assert corpus["bleu"]["value"] == pytest.approx(BLEU().corpus_score(PREDICTIONS, streams).score)
    assert corpus["chrf"]["value"] == pytest.approx(CHRF().corpus_score(PREDICTIONS, streams).score)
    for fig in corpus.values():
        assert fig["ci95"][0] <= fig["value"] <= fig["ci95"][1]


def test_mean_interval_is_seeded_and_narrows_with_more_items() -> None:
    small = mean_figure([1.0, 0.0] * 10, samples=500, seed=3)
    assert small == mean_figure([1.0, 0.0] * 10, samples=500, seed=3)
    large = mean_figure([1.0, 0.0] * 500, samples=500, seed=3)
    assert small["value"] == large["value"] == 0.5

    def width(f: dict[str, Any]) -> float:
        return float(f["ci95"][1] - f["ci95"][0])

    assert width(large) < width(small) / 3
    assert mean_figure([1.0] * 5, samples=50, seed=0)["ci95"] == [1.0, 1.0]


def test_labels_accuracy_macro_f1_and_confusion() -> None:
    labels = ["positive", "negative", "neutral"]
    assert read_label(" Positive.", labels) == "positive"
    assert read_label("negative, clearly", labels) == "negative"
    assert read_label("no idea", labels) == OTHER
    gold = ["positive", "positive", "negative", "negative", "neutral", "neutral"]
    pred = ["positive", "negative", "negative", "negative", OTHER, "neutral"]
    figures, confusion = label_figures(gold, pred, labels, samples=200, seed=0)
    assert figures["accuracy"]["value"] == pytest.approx(4 / 6)
    # per label F1: positive 2·1/(2+0+1)=2/3, negative 2·2/(4+1+0)=4/5, neutral 2·1/(2+0+1)=2/3
    assert figures["macro_f1"]["value"] == pytest.approx((2 / 3 + 4 / 5 + 2 / 3) / 3)
    assert macro_f1(gold, pred, labels) == pytest.approx(figures["macro_f1"]["value"])
    sklearn = pytest.importorskip("sklearn.metrics")  # installed with lm_eval (the dev extra)
    theirs = sklearn.f1_score(gold, pred, labels=labels, average="macro", zero_division=0)
    assert figures["macro_f1"]["value"] == pytest.approx(theirs)
    assert confusion["columns"] == [*labels, OTHER]
    assert confusion["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1]]
