"""``probe``: diagnostics, to prove the whole job path end to end."""

from __future__ import annotations

from workers.handlers.base import JobContext, Outcome, run_stage
from workers.pipeline.configs.probe import ProbeConfig
from workers.pipeline.probe import ProbeInputs


def handle_probe(ctx: JobContext[ProbeConfig]) -> Outcome:
    return Outcome(result=run_stage(ctx, ctx.params, ProbeInputs()))
