"""Fault drills from RELIABILITY.md on real processes: duplicate deliveries, dead workers, a Redis
that forgets its queues and a Postgres that goes away. Postgres is the ledger, the lease and the
reaper recover every job; the broker is only a doorbell."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from functools import partial

import pytest
import redis

from app.broker import RUN_JOB, create_celery
from app.settings import Settings
from tests.e2e.procs import RedisServer, TcpProxy
from tests.e2e.stack import Stack, StackFactory, database_url
from tests.timing import scaled, wait_for

pytestmark = pytest.mark.slow

LEASE_S = 4
HEARTBEAT_FAILED = "heartbeat failed; will retry"  # the worker's log line (workers.runner)
RECOVERY_S = LEASE_S + 1 + 10  # lease expiry + a reaper period + a fresh run's start


@pytest.fixture
def stack(make_stack: StackFactory) -> Stack:
    """API and one worker with the fast timings."""
    stack = make_stack(job_lease_seconds=LEASE_S)
    stack.start_api()
    stack.start_worker()
    return stack


def ring_again(broker_url: str, job_id: str) -> None:
    """Publish one more ``gristmill.jobs.run`` message for ``job_id``, as a redelivery would."""
    celery = create_celery(Settings(broker_url=broker_url))
    try:
        celery.send_task(RUN_JOB, args=[job_id], queue="cpu")
    finally:
        celery.close()


def wait_running_with_progress(stack: Stack, job_id: str) -> None:
    """Wait until the job has really started computing (a first step was reported)."""
    stack.api.wait_status(job_id, "running", timeout=20, logs=stack.logs)
    wait_for(
        lambda: (stack.api.job(job_id)["progress"] or {}).get("step", 0) >= 1,
        timeout=15,
        what="a first progress step",
        logs=stack.logs,
    )


def attempt_starts(stack: Stack, job_id: str) -> list[str]:
    return [e["message"] for e in stack.api.events(job_id) if e["message"].startswith("attempt ")]


# --- (a) duplicate delivery ----------------------------------------------------------------------


def test_duplicate_deliveries_of_a_job_run_it_once(stack: Stack, redis_server: RedisServer) -> None:
    """A second and third ``run`` message for the same job, one while it runs and one after it
    ended → both are ignored by the claim: attempt stays 1, one "attempt 1 started" event, and
    the worker logs "duplicate or stale delivery ignored" for each."""
    job_id = stack.api.submit(duration_s=2)["id"]
    stack.api.wait_status(job_id, "running", logs=stack.logs)

    ring_again(redis_server.url, job_id)
    job = stack.api.wait_status(job_id, "succeeded", logs=stack.logs)
    ring_again(redis_server.url, job_id)

    ignored = f"job {job_id}: duplicate or stale delivery ignored"
    wait_for(
        lambda: stack.worker.log().count(ignored) >= 2,
        timeout=15,
        what="both duplicates to be ignored",
        logs=stack.logs,
    )
    assert job["attempt"] == 1
    assert stack.api.job(job_id)["attempt"] == 1
    starts = attempt_starts(stack, job_id)
    assert len(starts) == 1
    assert starts[0].startswith("attempt 1 started")


# --- (b) dead workers ----------------------------------------------------------------------------


def test_job_is_retried_and_succeeds_when_its_pool_child_is_killed(stack: Stack) -> None:
    """SIGKILL the pool process mid-probe (an OOM kill) → the lease expires, the reaper re-queues
    the job and a fresh pool process runs attempt 2 to ``succeeded``."""
    job_id = stack.api.submit(duration_s=5)["id"]
    wait_running_with_progress(stack, job_id)

    os.kill(stack.pool_child(), signal.SIGKILL)

    job = stack.api.wait_status(job_id, "succeeded", timeout=RECOVERY_S + 10, logs=stack.logs)
    assert job["attempt"] == 2
    events = stack.api.events(job_id)
    assert any(e["message"].startswith("worker lost") for e in events), events
    assert attempt_starts(stack, job_id)[-1].startswith("attempt 2 started")
    assert stack.worker.alive()


def test_job_completes_when_the_whole_worker_is_killed_and_restarted(stack: Stack) -> None:
    """SIGKILL the worker's main process and its pool child mid-probe, then start a new worker →
    Postgres' lease, not Redis, brings the job back, and it ends ``succeeded`` on attempt 2."""
    job_id = stack.api.submit(duration_s=5)["id"]
    wait_running_with_progress(stack, job_id)

    stack.kill_worker()
    assert stack.api.job(job_id)["status"] == "running"  # nobody knows yet
    stack.start_worker()

    job = stack.api.wait_status(job_id, "succeeded", timeout=RECOVERY_S + 10, logs=stack.logs)
    assert job["attempt"] == 2


def test_sigterm_sends_the_running_job_back_to_the_queue_without_costing_an_attempt(
    make_stack: StackFactory,
) -> None:
    """A deploy: SIGTERM the worker mid-probe (``max_attempts=1``) → the job stops at its next
    step and is queued again with one more attempt allowed, the worker exits promptly, and a new
    worker takes the job up as attempt 2 (then cancelled, to keep the test short)."""
    stack = make_stack(job_lease_seconds=LEASE_S, max_attempts=1)
    stack.start_api()
    stack.start_worker()
    job_id = stack.api.submit(duration_s=60)["id"]
    wait_running_with_progress(stack, job_id)

    os.kill(stack.worker.pid, signal.SIGTERM)

    queued = stack.api.wait_status(job_id, "queued", timeout=10, logs=stack.logs)
    assert (queued["attempt"], queued["max_attempts"]) == (1, 2)
    wait_for(
        lambda: not stack.worker.alive(), timeout=20, what="the worker to exit", logs=stack.logs
    )
    stack.start_worker()
    job = stack.api.wait_status(job_id, "running", timeout=20, logs=stack.logs)
    assert job["attempt"] == 2
    stack.api.cancel(job_id)
    assert stack.api.wait_status(job_id, "cancelled", timeout=10, logs=stack.logs)["attempt"] == 2


def test_job_fails_as_worker_lost_when_no_attempts_are_left(make_stack: StackFactory) -> None:
    """With ``max_attempts=1``, SIGKILL the pool child mid-probe → the reaper fails the job with
    ``job.worker_lost`` instead of re-queueing it; it is never left ``running``."""
    stack = make_stack(job_lease_seconds=LEASE_S, max_attempts=1)
    stack.start_api()
    stack.start_worker()
    job_id = stack.api.submit(duration_s=5)["id"]
    wait_running_with_progress(stack, job_id)

    killed = stack.pool_child()
    os.kill(killed, signal.SIGKILL)

    job = stack.api.wait_status(job_id, "failed", timeout=RECOVERY_S, logs=stack.logs)
    assert job["error"]["code"] == "job.worker_lost"
    assert job["attempt"] == 1
    assert job["max_attempts"] == 1
    # A re-spawned pool process and a later reaper pass change nothing.
    stack.pool_child(not_pid=killed)
    stack.reaper_pass()
    assert stack.api.job(job_id)["status"] == "failed"
    assert len(attempt_starts(stack, job_id)) == 1


def test_a_worker_that_stops_consuming_restarts_itself(
    stack: Stack, redis_server: RedisServer
) -> None:
    """A live, idle worker that no longer takes messages (here: told to cancel its consumer, as
    Celery's reconnect bug leaves it) while a job waits → its watchdog shuts it down within the
    deafness window; a restarted worker runs the job."""
    celery = create_celery(Settings(broker_url=redis_server.url))
    try:
        hostname = stack.worker_hostname()
        replies = celery.control.cancel_consumer("cpu", destination=[hostname], reply=True)
        assert replies, "the worker did not answer the remote-control call"
    finally:
        celery.close()
    job_id = stack.api.submit(duration_s=0.5)["id"]

    wait_for(
        lambda: not stack.worker.alive(),
        timeout=60,
        what="the deaf worker to exit",
        logs=stack.logs,
    )
    assert "not receiving from the broker" in stack.worker.log()
    assert stack.api.job(job_id)["status"] == "queued"
    stack.start_worker()
    stack.api.wait_status(job_id, "succeeded", timeout=30, logs=stack.logs)


# --- (c) Redis loses its data --------------------------------------------------------------------


@pytest.fixture
def restartable_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The module's Redis, brought back afterwards even if the test fails while it is down."""
    yield redis_server
    if not redis_server.ping():
        redis_server.start()


def test_queued_jobs_complete_after_redis_restarts_empty(
    make_stack: StackFactory, restartable_redis: RedisServer
) -> None:
    """3 jobs queued with no worker, then Redis ``SHUTDOWN NOSAVE`` and a restart (every message
    lost) → once a worker starts, the reaper re-sends each job from Postgres and all 3 succeed."""
    stack = make_stack(job_lease_seconds=LEASE_S)
    stack.start_api()
    job_ids = [stack.api.submit(duration_s=0.5)["id"] for _ in range(3)]
    broker = redis.Redis(port=restartable_redis.port)
    assert broker.llen("cpu") >= 3

    restartable_redis.crash()
    restartable_redis.start()
    assert broker.llen("cpu") == 0
    stack.start_worker()

    for job_id in job_ids:
        job = stack.api.wait_status(job_id, "succeeded", timeout=40, logs=stack.logs)
        assert job["attempt"] == 1
    broker.close()


def test_live_worker_finishes_its_job_and_keeps_consuming_after_redis_restarts_empty(
    stack: Stack, restartable_redis: RedisServer
) -> None:
    """Redis ``SHUTDOWN NOSAVE`` and a restart while the worker runs one job and two wait → the
    running job is not interrupted (attempt 1), and the lost queued jobs and a job submitted
    after the restart all succeed within 90 s. Celery sometimes stops consuming after such a
    reconnect (celery#8030); the worker's deafness watchdog then shuts it down, and the test
    restarts it the way a supervisor would."""
    running = stack.api.submit(duration_s=4)["id"]
    wait_running_with_progress(stack, running)
    waiting = [stack.api.submit(duration_s=0.5)["id"] for _ in range(2)]

    restartable_redis.crash()
    restartable_redis.start()
    later = stack.api.submit(duration_s=0.5)["id"]

    assert stack.api.wait_status(running, "succeeded", logs=stack.logs)["attempt"] == 1

    def supervised_status(job_id: str) -> bool:
        if not stack.worker.alive():
            stack.start_worker()
        return bool(stack.api.job(job_id)["status"] == "succeeded")

    for job_id in [*waiting, later]:
        wait_for(partial(supervised_status, job_id), timeout=90, what=job_id, logs=stack.logs)


# --- (d) Postgres goes away ----------------------------------------------------------------------


@pytest.fixture
def proxied_stack(make_stack: StackFactory, pg_proxy: TcpProxy) -> Stack:
    """API and worker that reach Postgres only through ``pg_proxy``; a lease long enough to ride
    out a 2 s outage."""
    stack = make_stack(job_lease_seconds=6, database_url=database_url(pg_proxy.port))
    stack.start_api()
    stack.start_worker()
    return stack


def test_ready_answers_503_while_postgres_is_unreachable_and_recovers(
    proxied_stack: Stack, pg_proxy: TcpProxy
) -> None:
    """Cut every connection to Postgres → ``/v1/ready`` answers 503 promptly (no hang, no crash)
    and the API stays up; restore it → 200 again and a new job succeeds."""
    stack = proxied_stack
    pg_proxy.cut()
    try:
        for _ in range(3):
            started = time.monotonic()
            response = stack.api.client.get("/v1/ready", timeout=scaled(15))
            assert time.monotonic() - started < scaled(10)
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "not_ready"
        assert stack.api_proc is not None and stack.api_proc.alive()
    finally:
        pg_proxy.restore()

    stack.api.wait_ready(timeout=15, logs=stack.logs)
    job_id = stack.api.submit(duration_s=0.5)["id"]
    stack.api.wait_status(job_id, "succeeded", timeout=30, logs=stack.logs)


def test_running_job_succeeds_through_a_short_postgres_outage(
    proxied_stack: Stack, pg_proxy: TcpProxy
) -> None:
    """Cut Postgres in the middle of a 5 s probe until the worker's heartbeat has failed on it →
    heartbeats and metric writes retry, the lease holds, and the job ends ``succeeded`` on its
    first attempt."""
    stack = proxied_stack
    job_id = stack.api.submit(duration_s=5)["id"]
    wait_running_with_progress(stack, job_id)
    failed_heartbeats = stack.worker.log().count(HEARTBEAT_FAILED)

    pg_proxy.cut()
    wait_for(
        lambda: stack.worker.log().count(HEARTBEAT_FAILED) > failed_heartbeats,
        timeout=10,
        interval=0.1,
        what="a heartbeat to fail on the outage",
        logs=stack.logs,
    )
    pg_proxy.restore()

    job = stack.api.wait_status(job_id, "succeeded", timeout=30, logs=stack.logs)
    assert job["attempt"] == 1
    assert stack.worker.alive()
    steps = [m["step"] for m in stack.api.metrics(job_id)]
    assert steps == list(range(1, len(steps) + 1))
