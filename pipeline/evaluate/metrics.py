"""Task metrics and their 95% intervals, each defined as the reference implementation defines it.

* Exact match and token F1: SQuAD's ``normalize_answer`` (lowercase, drop punctuation, the
  articles a/an/the and extra whitespace), the best over the references.
* ROUGE-L: rouge-score's F-measure (its own tokenizer, no stemming), the best reference.
* chrF and BLEU: sacrebleu. The headline figures are corpus scores (sacrebleu's default: n-gram
  statistics summed over items); per item, sentence scores (BLEU with ``effective_order``).
* Labels: accuracy, macro-F1 over the labels (an answer that names none counts against recall
  of its true label) and the confusion matrix.

Intervals are percentile bootstraps over items (the unit that was sampled): a mean-of-items
figure resamples the per-item values; a corpus figure (BLEU, chrF) sums resampled per-item
statistics, as sacrebleu's own paired bootstrap does; macro-F1 recomputes from resampled pairs.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from rouge_score import rouge_scorer
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.metrics.chrf import CHRF

Indices = npt.NDArray[np.int64]
OTHER = "(other)"
"""The confusion matrix's column for an answer that names no label."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(r) for r in references))


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:  # SQuAD 2.0's rule: both empty is a match, one empty is not
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, references: Sequence[str]) -> float:
    """SQuAD's token F1 against the best-matching reference."""
    return max(_f1(prediction, r) for r in references)


class TextMetrics:
    """ROUGE-L, chrF and BLEU, per item and for the corpus, built once per evaluation."""

    def __init__(self) -> None:
        self.rouge = rouge_scorer.RougeScorer(["rougeL"])
        self.bleu = BLEU()
        self.sentence_bleu = BLEU(effective_order=True)
        self.chrf = CHRF()

    def rouge_l(self, prediction: str, references: Sequence[str]) -> float:
        return float(self.rouge.score_multi(list(references), prediction)["rougeL"].fmeasure)

    def per_item(self, prediction: str, references: Sequence[str]) -> dict[str, float]:
        refs = list(references)
        return {
            "rouge_l": self.rouge_l(prediction, refs),
            "chrf": float(self.chrf.sentence_score(prediction, refs).score),
            "bleu": float(self.sentence_bleu.sentence_score(prediction, refs).score),
        }

    def corpus(
        self,
        predictions: Sequence[str],
        references: Sequence[Sequence[str]],
        *,
        samples: int,
        seed: int,
    ) -> dict[str, dict[str, Any]]:
        """Corpus BLEU and chrF with bootstrap intervals (references may differ in number)."""
        width = max(len(r) for r in references)
        streams: list[list[str | None]] = [
            [r[k] if k < len(r) else None for r in references] for k in range(width)
        ]
        out = {}
        for name, metric in (("bleu", self.bleu), ("chrf", self.chrf)):
            # sacrebleu takes None for a missing reference, though its annotation says str.
            found = metric._extract_corpus_statistics(list(predictions), streams)  # type: ignore[arg-type]
            stats = np.asarray(found)

            def score(idx: Indices, metric: Any = metric, stats: Any = stats) -> float:
                return float(metric._compute_score_from_stats(list(stats[idx].sum(0))).score)

            out[name] = figure(
                score(np.arange(len(predictions))),
                len(predictions),
                score,
                samples=samples,
                seed=seed,
            )
        return out


def bootstrap_interval(
    n: int, statistic: Callable[[Indices], float], *, samples: int, seed: int
) -> list[float]:
    """95% percentile interval of ``statistic`` over ``samples`` resamples of ``n`` items (the
    same quantile rule as the bias probe's interval)."""
    rng = np.random.default_rng(seed)
    values = sorted(statistic(rng.integers(0, n, n)) for _ in range(samples))
    return [values[int(0.025 * (samples - 1))], values[math.ceil(0.975 * (samples - 1))]]


def figure(
    value: float, n: int, statistic: Callable[[Indices], float], *, samples: int, seed: int
) -> dict[str, Any]:
    return {
        "value": value,
        "ci95": bootstrap_interval(n, statistic, samples=samples, seed=seed),
        "n": n,
    }


def mean_figure(values: Sequence[float], *, samples: int, seed: int) -> dict[str, Any]:
    """The mean of per-item values with its bootstrap interval."""
    arr = np.asarray(values, dtype=np.float64)
    return figure(
        float(arr.mean()), len(arr), lambda idx: float(arr[idx].mean()), samples=samples, seed=seed
    )


def read_label(answer: str, labels: Sequence[str]) -> str:
    """The label an answer names: the one it equals after normalisation, else the one its
    normalised text starts with (longest first), else :data:`OTHER`."""
    norm = normalize_answer(answer)
    keyed = sorted(((normalize_answer(label), label) for label in labels), key=lambda x: -len(x[0]))
    for key, label in keyed:
        if norm == key:
            return label
    for key, label in keyed:
        if key and (norm == key or norm.startswith(key + " ")):
            return label
    return OTHER


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Mean over ``labels`` of each label's F1 (0 where it is never predicted nor true)."""
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def label_figures(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str], *, samples: int, seed: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(accuracy and macro-F1 with intervals, the confusion matrix: rows true, columns read)."""
    columns = [*labels, OTHER]
    g = np.asarray([labels.index(x) for x in gold])
    p = np.asarray([columns.index(x) for x in predicted])
    k = len(labels)

    def f1_of(idx: Indices) -> float:
        cm = np.zeros((k, k + 1), dtype=np.int64)
        np.add.at(cm, (g[idx], p[idx]), 1)
        tp = np.diag(cm[:, :k]).astype(np.float64)
        denom = cm.sum(1) + cm[:, :k].sum(0)  # 2tp + fn + fp
        return float(np.mean(np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)))

    everything = np.arange(len(g))
    matrix = np.zeros((k, k + 1), dtype=np.int64)
    np.add.at(matrix, (g, p), 1)
    figures = {
        "accuracy": mean_figure(
            [float(a == b) for a, b in zip(gold, predicted, strict=True)],
            samples=samples,
            seed=seed,
        ),
        "macro_f1": figure(f1_of(everything), len(g), f1_of, samples=samples, seed=seed),
    }
    return figures, {"labels": list(labels), "columns": columns, "matrix": matrix.tolist()}
