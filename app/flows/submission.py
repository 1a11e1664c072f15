"""Submitting a job, written once: quota, inputs, capacity, pre-flight, write, commit, enqueue.

Every job goes through :func:`queue_job`: the ones users start (``POST /v1/jobs``, OpenAI's
fine-tuning jobs and comparisons, through :func:`submit_job`, which checks the tenant's job quotas
first) and the ones the service starts itself (``validate`` after a dataset upload,
``import_model`` after a model upload). So every job is checked against its kind's registry entry
the same way: its inputs tenant-checked and located, its queue and time limit from the kind, its
parameters checked against what that queue's workers offer.

Postgres is the ledger and the broker only the doorbell: the job is committed first and its id
sent after (:func:`commit_then_enqueue`); a lost message is re-sent by the reaper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import broker
from app.errors import InvalidInput, InvalidParameter, NotFound
from app.flows.inputs import Resolved, load_inputs
from app.flows.quotas import check_job_quotas
from app.jobs import idempotency, waiting
from app.jobs import service as jobs
from app.jobs.kinds import JobKind, check_threads, queue_capacity
from app.jobs.tables import Job
from app.settings import Settings
from app.storage import Store
from app.tenants import secrets
from pipeline.configs.base import ConfigError
from pipeline.configs.codec import encode

Enqueue = Callable[[str, str], bool]
"""Sends a job id to a queue (``app.broker.enqueue``); tests that run jobs themselves pass one
that sends nothing."""


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool  # False when an Idempotency-Key replayed an earlier submission


def submit_job(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    kind: JobKind,
    params: Any,
    max_runtime_s: float | None = None,
    idempotency_key: str | None = None,
    wait_for_inputs: bool = False,
    with_job: Callable[[Job], None] | None = None,
    enqueue: Enqueue = broker.enqueue,
) -> Submitted:
    """Start a job for a user: the tenant's job quotas first, then :func:`queue_job`.

    Raises:
        QuotaExceeded: the tenant is at its limit of active jobs or device-hours.
        InvalidInput: a tenant secret the parameters name (``secret``, ``grader_secret``) is
            unknown; see :func:`queue_job` for the rest.
        InvalidParameter: see :func:`queue_job`.
    """
    check_job_quotas(
        session=session, settings=settings, tenant_id=tenant_id, idempotency_key=idempotency_key
    )
    return queue_job(
        session=session,
        settings=settings,
        store=store,
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        max_runtime_s=max_runtime_s,
        idempotency_key=idempotency_key,
        wait_for_inputs=wait_for_inputs,
        with_job=with_job,
        enqueue=enqueue,
    )


def queue_job(
    *,
    session: Session,
    settings: Settings,
    store: Store,
    tenant_id: str,
    kind: JobKind,
    params: Any,
    max_runtime_s: float | None = None,
    idempotency_key: str | None = None,
    wait_for_inputs: bool = False,
    with_job: Callable[[Job], None] | None = None,
    enqueue: Enqueue = broker.enqueue,
    request: Mapping[str, Any] | None = None,
) -> Submitted:
    """Check the job's inputs and parameters, write it queued (with the ids of what it reads),
    commit, then send its id to its queue.

    ``with_job`` writes what goes with the job in the same commit (the comparison or the upload
    it belongs to). ``wait_for_inputs`` admits datasets still being validated: the job then waits
    queued, unsent, until they are ready (``app.flows.waiting``). ``request`` is what an
    Idempotency-Key stands for (default: the parameters and time limit); a caller whose
    parameters hold ids it made up (a comparison's) passes the request as the client sent it.

    Raises:
        InvalidInput: an input is unknown, foreign or not ready; or the Idempotency-Key was
            already used with a different request.
        InvalidParameter: the parameters ask for more than the queue's workers offer.
    """
    if request is None:
        request = {"params": encode(params), "max_runtime_s": max_runtime_s}
    digest = idempotency.request_hash(kind.name, dict(request))
    if idempotency_key is not None:
        earlier = _replay(session, tenant_id, idempotency_key, digest, expire=True)
        if earlier is not None:
            return Submitted(earlier, created=False)
    inputs = load_inputs(
        session=session,
        store=store,
        tenant_id=tenant_id,
        kind=kind,
        params=params,
        lock=True,
        pending=wait_for_inputs,
    )
    _preflight(settings, kind, params, inputs)
    _check_secrets(session, tenant_id, params)
    try:
        job = _write(
            session,
            settings,
            tenant_id,
            kind,
            params,
            inputs,
            max_runtime_s=max_runtime_s,
            idempotency_key=idempotency_key,
            digest=digest,
        )
        if with_job is not None:
            with_job(job)
        commit_then_enqueue(session, job, enqueue=None if waiting.is_waiting(job) else enqueue)
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        earlier = _replay(session, tenant_id, idempotency_key, digest) if idempotency_key else None
        if earlier is None:
            raise
        return Submitted(earlier, created=False)
    return Submitted(job, created=True)


def _write(
    session: Session,
    settings: Settings,
    tenant_id: str,
    kind: JobKind,
    params: Any,
    inputs: Mapping[str, Resolved],
    *,
    max_runtime_s: float | None,
    idempotency_key: str | None,
    digest: str,
) -> Job:
    """The queued job, its queue and time limit from its kind; one that reads a dataset still
    being validated waits (unsent), and says so in its events."""
    waiting_for = [resolved.id for resolved in inputs.values() if resolved.pending]
    job = jobs.add_job(
        session=session,
        tenant_id=tenant_id,
        job_type=kind.name,
        params=encode(params),
        queue=kind.queue_for(params),
        max_attempts=settings.max_attempts,
        time_limit_s=min(max_runtime_s or kind.time_limit_s, kind.time_limit_s),
        inputs=[resolved.id for resolved in inputs.values()],
        idempotency_key=idempotency_key,
        request_hash=digest,
        waiting=bool(waiting_for),
    )
    if waiting_for:
        jobs.add_event(
            session=session,
            job_id=job.id,
            attempt=0,
            message=f"validating files: {', '.join(waiting_for)}; the job is queued once they "
            "are processed",
            data={"waiting_for": waiting_for},
        )
    return job


def commit_then_enqueue(session: Session, job: Job, *, enqueue: Enqueue | None) -> None:
    """Commit, then ring the doorbell with the job's id: a worker never sees a job that is not
    in the ledger. ``enqueue=None`` commits only (the job waits, or a caller sends it later)."""
    job_id, queue = job.id, job.queue
    session.commit()
    if enqueue is not None:
        enqueue(job_id, queue)


def _replay(
    session: Session, tenant_id: str, key: str, digest: str, *, expire: bool = False
) -> Job | None:
    if expire:
        idempotency.expire_key(
            session=session, tenant_id=tenant_id, key=key, ttl_s=idempotency.IDEMPOTENCY_TTL_S
        )
    return idempotency.replay(session=session, tenant_id=tenant_id, key=key, digest=digest)


SECRET_PARAMS = ("secret", "grader_secret")
"""Parameters that name a tenant secret (the worker decrypts it): an unknown name is refused
before anything is queued."""


def _check_secrets(session: Session, tenant_id: str, params: Any) -> None:
    for name in SECRET_PARAMS:
        value = getattr(params, name, None)
        if value is None:
            continue
        try:
            secrets.get_secret(session=session, tenant_id=tenant_id, name=value)
        except NotFound as err:
            raise InvalidInput(err.message, code=err.code, param=f"params.{name}") from None


def _preflight(
    settings: Settings, kind: JobKind, params: Any, inputs: Mapping[str, Resolved]
) -> None:
    """The kind's checks against what one worker of its queue offers (devices, memory), and
    every kind's ``threads`` against its cores."""
    capacity = queue_capacity(settings, kind.queue_for(params))
    try:
        check_threads(params, capacity)
        if kind.preflight is not None:
            kind.preflight(params, capacity, inputs)
    except ConfigError as err:
        raise InvalidParameter(
            f"Invalid value for 'params.{err.field}': {err.message}",
            param=f"params.{err.field}",
        ) from None
