"""The rating ladder as a PNG, drawn with matplotlib (a base dependency; no torch)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any


def ladder_png(results: Mapping[str, Any], *, title: str = "Ratings (Elo scale, 95% CI)") -> bytes:
    """Each model's Bradley–Terry rating with its bootstrap interval, best on top."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ladder = list(results.get("ladder") or [])[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.5 * max(len(ladder), 1)), dpi=100)
    ax = fig.subplots()
    if ladder:
        names = [row["model"] for row in ladder]
        ratings = [row["rating"] for row in ladder]
        low = [row["rating"] - row["ci95"][0] for row in ladder]
        high = [row["ci95"][1] - row["rating"] for row in ladder]
        ax.errorbar(ratings, range(len(names)), xerr=[low, high], fmt="o", capsize=4)
        ax.set_yticks(range(len(names)), names)
        ax.axvline(1000, color="#999", linewidth=0.8, linestyle="--")
        ax.set_xlabel("rating (400·r + 1000)")
    else:
        ax.text(0.5, 0.5, "no votes yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    ax.set_title(f"{title} · {results.get('votes', 0)} votes")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
