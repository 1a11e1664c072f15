"""Charts as PNG bytes: one function per figure, matplotlib's object API (no global state)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig: Any) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def bits_per_byte_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Bits per byte per (model, dataset): the figure that compares across tokenizers."""
    fig = _figure(7, 1.2 + 0.45 * max(len(rows), 1))
    ax = fig.subplots()
    labels = [f"{r['model']} · {r['dataset']}" for r in rows][::-1]
    values = [float(r["bits_per_byte"]) for r in rows][::-1]
    ax.barh(range(len(values)), values, color="#0a66c2")
    ax.set_yticks(range(len(labels)), labels)
    for i, v in enumerate(values):
        ax.annotate(f"{v:.3f}", (v, i), xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xlabel("bits per byte (lower is better)")
    return _png(fig)


def bias_png(categories: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Bias per category with its 95% bootstrap interval; 0 is no measured preference."""
    names = sorted(categories)
    fig = _figure(7, 1.2 + 0.45 * max(len(names), 1))
    ax = fig.subplots()
    values = [float(categories[c]["bias"]) for c in names]
    lows = [v - float(categories[c]["ci95"][0]) for v, c in zip(values, names, strict=True)]
    highs = [float(categories[c]["ci95"][1]) - v for v, c in zip(values, names, strict=True)]
    ax.errorbar(values, range(len(names)), xerr=[lows, highs], fmt="o", capsize=4)
    ax.set_yticks(range(len(names)), [f"{c} (n={categories[c]['n']})" for c in names])
    ax.axvline(0, color="#999", linewidth=0.8, linestyle="--")
    ax.set_xlabel("bias: mean Δ log-prob, stereotyped − anti-stereotyped (nats)")
    return _png(fig)


def loss_curves_png(curves: Mapping[str, Sequence[tuple[int, float]]]) -> bytes:
    """Each named curve (``<job> · train_loss``) against its steps."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    for label, points in curves.items():
        ax.plot([s for s, _ in points], [v for _, v in points], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize="small")
    return _png(fig)


_SCALES = {"bleu": 100.0, "chrf": 100.0, "grader_score": 10.0}


def task_png(figures: Mapping[str, Mapping[str, Any]]) -> bytes:
    """Each task figure with its 95% bootstrap interval, on one 0–1 axis (BLEU and chrF, which
    sacrebleu gives in 0–100, are divided by 100 and say so; the grader's 1–10 by 10)."""
    names = list(figures)[::-1]
    scale = {n: _SCALES.get(n, 1.0) for n in names}
    fig = _figure(7, 1.2 + 0.45 * max(len(names), 1))
    ax = fig.subplots()
    values = [float(figures[n]["value"]) / scale[n] for n in names]
    lows = [v - float(figures[n]["ci95"][0]) / scale[n] for v, n in zip(values, names, strict=True)]
    highs = [
        float(figures[n]["ci95"][1]) / scale[n] - v for v, n in zip(values, names, strict=True)
    ]
    ax.errorbar(values, range(len(names)), xerr=[lows, highs], fmt="o", capsize=4)
    ax.set_yticks(
        range(len(names)), [n + (f" (÷{scale[n]:g})" if scale[n] > 1 else "") for n in names]
    )
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("score with 95% bootstrap interval (higher is better)")
    return _png(fig)
