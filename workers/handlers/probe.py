"""``probe``: diagnostics, to prove the whole job path end to end."""

from __future__ import annotations

from pipeline.configs.probe import ProbeConfig
from pipeline.probe.stage import ProbeInputs, run_probe
from workers.handlers.base import JobContext, Outcome, figures, run_stage


def handle_probe(ctx: JobContext[ProbeConfig]) -> Outcome:
    return Outcome(result=figures(run_stage(ctx, run_probe, ctx.params, ProbeInputs())))
