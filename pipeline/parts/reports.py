"""The progress reports a training stage made, kept in its checkpoints (see :class:`ReportLog`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from pipeline.types import Hooks, Progress


class ReportLog:
    """The progress reports (step, metrics) made so far, recorded in each checkpoint.

    Metrics reach the job's ledger in batches, so a worker killed right after a checkpoint may
    have written the checkpoint but not the figures of the steps before it; the resumed attempt
    starts after that step and would never report them. The restored checkpoint's event carries
    them (``pipeline.parts.checkpoint.announce_restored``) and the job layer writes those it has
    no row for, so every step is reported exactly once. The newest ``KEPT`` are kept, so a long
    run's state stays small.
    """

    KEPT = 2000

    def __init__(self, state: Mapping[str, Any] | None = None) -> None:
        self._reports: list[tuple[int, dict[str, float]]] = []
        self.restore(state or {})

    def restore(self, state: Mapping[str, Any]) -> None:
        """Go on from a checkpoint's record (its state, as :meth:`state` wrote it)."""
        self._reports = [
            (int(step), {str(k): float(v) for k, v in metrics.items()})
            for step, metrics in state.get("reports", [])
        ]

    def watch(self, hooks: Hooks) -> Hooks:
        """``hooks`` whose every progress report is also recorded here."""

        def on_progress(progress: Progress) -> None:
            hooks.on_progress(progress)
            self.record(progress)

        return replace(hooks, on_progress=on_progress)

    def record(self, progress: Progress) -> None:
        self._reports.append((progress.step, dict(progress.metrics)))
        del self._reports[: -self.KEPT]

    def state(self) -> dict[str, Any]:
        """What a checkpoint records: ``{"reports": [[step, metrics], …]}``."""
        return {"reports": [[step, metrics] for step, metrics in self._reports]}
