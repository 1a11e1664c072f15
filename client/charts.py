"""Charts of a job's metrics: drawn with characters in the terminal (plotext) or into a PNG
(matplotlib); a comparison's rating ladder drawn with characters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Series = Mapping[str, tuple[Sequence[int], Sequence[float]]]
"""Metric name → (steps, values)."""


def plot_terminal(
    series: Series, *, title: str, width: int, height: int = 24, color: bool = True
) -> str:
    """A line chart drawn with characters (plotext, braille dots), one line per metric."""
    import plotext

    figure = plotext.figure
    figure.clear()
    for name, (steps, values) in series.items():
        signal = figure.signal(list(steps), list(values), marker="braille")
        signal.label(name)
        signal.lines()
        figure.draw(signal)
    figure.title(title)
    figure.label("step", axis="x")
    figure.plot_size(width, height)
    return str(figure.build().string(colorless=not color))


def plot_png(series: Series, out: Path, *, title: str) -> None:
    """A PNG chart (matplotlib's Agg canvas: no display, no global pyplot state)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="tight")
    axes = figure.add_subplot()
    for name, (steps, values) in series.items():
        axes.plot(list(steps), list(values), label=name, linewidth=1.8)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.grid(alpha=0.3)
    axes.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")


def ladder_text(ladder: Sequence[Mapping[str, Any]], *, title: str, width: int = 100) -> str:
    """A comparison's ladder drawn with characters: each model's rating (●) inside its 95%
    interval (├──┤), on one shared scale, best on top; ┆ marks 1000, the average model."""
    label = max(len(str(row["model"])) for row in ladder)
    cells = max(20, width - label - 8)
    low = min(1000.0, *(float(min(row["ci95"][0], row["rating"])) for row in ladder))
    high = max(1000.0, *(float(max(row["ci95"][1], row["rating"])) for row in ladder))
    span = (high - low) or 1.0

    def at(value: float) -> int:
        return 1 + round((value - low) / span * (cells - 3))  # a free cell at both ends

    lines = [title]
    for row in ladder:
        line = [" "] * cells
        line[at(1000.0)] = "┆"
        first, last, dot = at(row["ci95"][0]), at(row["ci95"][1]), at(row["rating"])
        # A bound that falls in the rating's own cell moves out by one cell (within the
        # scale's rounding), so the interval stays visible next to the ●.
        first = first - 1 if first == dot else first
        last = last + 1 if last == dot else last
        for i in range(first, last + 1):
            line[i] = "─"
        line[first], line[last] = "├", "┤"
        line[dot] = "●"
        lines.append(f"{row['model']:>{label}} {row['rating']:5.0f} {''.join(line)}".rstrip())
    left, right = f"{low:.0f}", f"{high:.0f}"
    axis = left + " " * max(1, cells - len(left) - len(right)) + right
    lines.append(" " * (label + 7) + axis)
    return "\n".join(lines)
