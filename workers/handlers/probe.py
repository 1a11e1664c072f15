from __future__ import annotations

from dataclasses import asdict

from pydantic import TypeAdapter

from workers.handlers.base import JobContext, Outcome
from workers.pipeline.configs.probe import ProbeConfig
from workers.pipeline.probe import ProbeInputs, run_probe


def handle(ctx: JobContext) -> Outcome:
    config = TypeAdapter(ProbeConfig).validate_python(ctx.params)
    return Outcome(result=asdict(run_probe(config, ProbeInputs(), ctx.paths, ctx.hooks)))
