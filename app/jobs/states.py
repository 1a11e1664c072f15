"""The job state machine, and nowhere else.

queued ──► running ──► succeeded | failed | cancelled
   │          │  ▲
   │          ▼  │ (lease expired: back to queued to resume)
   │      cancelling ──► cancelled | succeeded | failed
   └──► cancelled | failed

Pausing (a user's request) is cooperative like cancelling: a running job becomes ``pausing``,
stops at its next step with a checkpoint and becomes ``paused``; a queued one is ``paused`` at
once. ``paused`` holds no worker and no lease; a resume queues it again and it continues from its
checkpoint. A ``pausing`` job resumed before it stopped simply goes on ``running``.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    pausing = "pausing"
    paused = "paused"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_STATES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.queued: frozenset(
        {JobStatus.running, JobStatus.cancelled, JobStatus.failed, JobStatus.paused}
    ),
    JobStatus.running: frozenset(
        {
            JobStatus.succeeded,
            JobStatus.failed,
            JobStatus.cancelled,
            JobStatus.cancelling,
            JobStatus.pausing,
            JobStatus.queued,
        }
    ),
    # A job asked to stop may still finish first: exactly one final state wins.
    JobStatus.cancelling: frozenset({JobStatus.cancelled, JobStatus.succeeded, JobStatus.failed}),
    # Asked to pause, it may still finish, fail, be cancelled instead, or be resumed before it
    # reached its next step (then it simply goes on running).
    JobStatus.pausing: frozenset(
        {
            JobStatus.paused,
            JobStatus.running,
            JobStatus.cancelling,
            JobStatus.succeeded,
            JobStatus.failed,
        }
    ),
    # A paused job holds no worker and no lease: it waits for a resume (or a cancel).
    JobStatus.paused: frozenset({JobStatus.queued, JobStatus.cancelled}),
    JobStatus.succeeded: frozenset(),
    JobStatus.failed: frozenset(),
    JobStatus.cancelled: frozenset(),
}

# States in which a worker holds the job's lease (heartbeats renew it; the reaper expires it).
LEASED_STATES = frozenset({JobStatus.running, JobStatus.cancelling, JobStatus.pausing})


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every state from which ``target`` may be entered."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
