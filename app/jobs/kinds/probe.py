"""``probe``: report the device and measure GFLOP/s, to prove the job path end to end."""

from __future__ import annotations

from app.jobs.kinds.registry import HOUR, JobKind, device_queue
from pipeline.configs.probe import ProbeConfig

KIND = JobKind(
    name="probe",
    summary="Diagnostic: report the device and measure GFLOP/s for a while.",
    params=ProbeConfig,
    queue=device_queue,
    handler="workers.handlers.probe:handle_probe",
    time_limit_s=2 * HOUR,
    stage="pipeline.probe.stage:run_probe",
)
