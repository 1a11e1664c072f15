"""Charts of a job's metrics: drawn with characters in the terminal (plotext) or into a PNG
(matplotlib)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

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
