"""The job types Gristmill runs and the parameter config each one takes.

The configs themselves live in ``workers.pipeline.configs`` (stdlib-only), so the API validates
parameters with exactly the rules the pipeline enforces.
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.pipeline.configs.probe import ProbeConfig


@dataclass(frozen=True)
class JobType:
    name: str
    params: type
    summary: str
    submittable: bool = True  # False: created by the service itself (e.g. dataset validation)


JOB_TYPES: dict[str, JobType] = {
    jt.name: jt
    for jt in (JobType("probe", ProbeConfig, "Diagnostic: report the device and measure GFLOP/s."),)
}
