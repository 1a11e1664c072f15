"""Gristmill as real processes, for end-to-end tests: ``Stack`` (an API and workers sharing a
database, a broker and a data directory), ``start_serve`` (the embedded all-in-one server) and
``Api``, a small HTTP client for either.

Waits here are seconds on the reference machine, stretched by ``GRISTMILL_TEST_TIMEOUT_FACTOR``
(see ``tests.timing``). Checks that something does *not* happen wait for a sign that it would
have happened by now: ``Stack.reaper_pass`` (a reaper made a pass) and ``Stack.wait_idle`` (the
worker has no task left).
"""

from __future__ import annotations

import io
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.broker import create_celery
from app.db import make_engine, make_session_factory, utcnow
from app.jobs.states import FINAL_STATES as JOB_FINAL_STATES
from app.jobs.tables import Job
from app.settings import Settings
from app.tenants.service import authenticate
from tests.conftest import PG_ADMIN_URL, RUN_ID
from tests.e2e.procs import GRISTMILL, Proc, clean_env, start, stop_all
from tests.factories import make_job
from tests.serving import free_port, free_port_pair
from tests.timing import scaled, wait_for

FINAL_STATES = frozenset(status.value for status in JOB_FINAL_STATES)
"""A job in one of these statuses changes no more (the API's names for them)."""


@dataclass
class Api:
    """A small client for one running API, authenticated with ``key``."""

    base_url: str
    key: str = ""
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=scaled(15))

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str) -> dict[str, Any]:
        response = self.client.get(path, headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def post(self, path: str, *, status: int = 202, **kwargs: Any) -> dict[str, Any]:
        """POST and check the answer has ``status`` (202: accepted work; 200 for actions)."""
        response = self.client.post(path, headers=self.auth, **kwargs)
        assert response.status_code == status, response.text
        return dict(response.json())

    def ready_status(self) -> int | None:
        try:
            return self.client.get("/v1/ready").status_code
        except httpx.HTTPError:
            return None

    def upload(
        self,
        collection: str,
        filename: str,
        content: bytes,
        *,
        timeout: float = 90,
        logs: Iterable[Proc] = (),
    ) -> dict[str, Any]:
        """Upload a file to ``collection`` (``/v1/datasets``, ``/v1/models``) and wait until its
        check has run; return the object, which must be ``ready``."""
        created = self.post(collection, files={"file": (filename, io.BytesIO(content))})
        path = f"{collection}/{created['id']}"
        checked = wait_for(
            lambda: (item := self.get(path))["status"] != "validating" and item,
            timeout=timeout,
            what=f"{path} to be checked",
            logs=logs,
        )
        assert checked["status"] == "ready", checked
        return checked

    def submit(self, **params: Any) -> dict[str, Any]:
        """A probe job with ``params``."""
        return self.post(
            "/v1/jobs", json={"type": "probe", "params": {"matmul_size": 64, **params}}
        )

    def run_job(
        self,
        job_type: str,
        params: Mapping[str, Any],
        *,
        timeout: float = 90,
        logs: Iterable[Proc] = (),
    ) -> dict[str, Any]:
        """Submit a job and wait until it has ``succeeded``; return it (fail if it ends otherwise).

        The end-to-end twin of the ``run_job`` fixture (``tests.conftest.RunJob``), for jobs that
        real worker processes run.
        """
        job = self.post("/v1/jobs", json={"type": job_type, "params": dict(params)})
        return self.wait_status(job["id"], "succeeded", timeout=timeout, logs=logs)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/cancel", status=200)

    def pause(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/pause", status=200)

    def resume(self, job_id: str) -> dict[str, Any]:
        return self.post(f"/v1/jobs/{job_id}/resume", status=200)

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/jobs/{job_id}/events?limit=1000")["data"])

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/v1/jobs/{job_id}/metrics")["data"])

    def wait_status(
        self,
        job_id: str,
        statuses: str | Iterable[str],
        *,
        timeout: float = 30,
        logs: Iterable[Proc] = (),
    ) -> dict[str, Any]:
        """Poll the job until its status is one of ``statuses``; return the job. A job that
        ends in another status fails at once."""
        wanted = {statuses} if isinstance(statuses, str) else set(statuses)

        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["status"] in wanted:
                return job
            if job["status"] in FINAL_STATES:
                raise AssertionError(f"job {job_id} ended {job['status']}, wanted {wanted}: {job}")
            return None

        return wait_for(
            reached, timeout=timeout, interval=0.25, what=f"{job_id} {wanted}", logs=logs
        )

    def wait_ready(self, *, timeout: float = 30, logs: Iterable[Proc] = ()) -> None:
        wait_for(
            lambda: self.ready_status() == 200, timeout=timeout, what="/v1/ready 200", logs=logs
        )

    def close(self) -> None:
        self.client.close()


def start_serve(cwd: Path, *, log_dir: Path, **settings: Any) -> tuple[Proc, Api]:
    """``gristmill serve`` in ``cwd`` with no GRISTMILL_* variable but ``settings``; returns once
    the API answers ready and its worker subprocess is ready too (the key is the caller's)."""
    port = free_port_pair()  # the API, and its inference service on the next port
    args = [GRISTMILL, "serve", "--port", str(port)]
    proc = start("serve", args, env=clean_env(**settings), log_dir=log_dir, cwd=cwd)
    api = Api(f"http://127.0.0.1:{port}")
    api.wait_ready(timeout=60, logs=[proc])
    # The worker subprocess writes to the same output; "ready." means its pool process is up too.
    wait_for(
        lambda: " ready." in proc.log(), timeout=60, what="the worker to be ready", logs=[proc]
    )
    return proc, api


# --- A stack: an API and workers on the e2e database and a private Redis ----------------------

E2E_DB = f"gristmill_e2e_{RUN_ID}"
PG_HOST, PG_PORT = "127.0.0.1", 5432

# Short timings, so faults are detected and recovered from within seconds.
FAST_TIMINGS: dict[str, Any] = {
    "job_lease_seconds": 4,
    "reaper_interval_seconds": 1,
    "requeue_after_seconds": 2,
    "metrics_flush_seconds": 0.5,
    "broker_visibility_timeout_seconds": 3600,
}
SENTINEL_QUEUE = "e2e-sentinel"
"""A queue no worker consumes: a job on it is only ever touched by the reaper."""


def database_url(port: int = PG_PORT) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].rsplit("@", 1)[0]
    return f"{base}@{PG_HOST}:{port}/{E2E_DB}"


def truncate_jobs(url: str) -> None:
    """Forget every job, so a later test's reaper never picks up an earlier test's leftovers."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE job CASCADE")  # and every table that refers to a job
    engine.dispose()


@contextmanager
def _ledger(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@dataclass
class Stack:
    """An API and any number of workers sharing one database, broker and data directory."""

    root: Path
    settings: dict[str, Any]
    key: str
    api_port: int = field(default_factory=free_port)
    api_proc: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    started: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = Api(f"http://127.0.0.1:{self.api_port}", self.key)

    @property
    def worker(self) -> Proc:
        assert self.workers, "no worker started"
        return self.workers[-1]

    @property
    def logs(self) -> list[Proc]:
        return list(self.started)

    def env(self) -> dict[str, str]:
        return clean_env(data_dir=self.root / "data", **self.settings)

    def start_api(self) -> Proc:
        args = [GRISTMILL, "api", "--host", "127.0.0.1", "--port", str(self.api_port)]
        self.api_proc = self._start("api", args)
        self.api.wait_ready(logs=self.logs)
        return self.api_proc

    def start_worker(self, queues: str = "cpu,gpu") -> Proc:
        """Start a worker (concurrency 1) and wait until Celery says it is ready."""
        proc = self._start(
            "worker", [GRISTMILL, "worker", "--queues", queues, "--concurrency", "1"]
        )
        self.workers.append(proc)
        wait_for(
            lambda: " ready." in proc.log() or not proc.alive(),
            timeout=60,
            what="worker ready",
            logs=[proc],
        )
        assert proc.alive(), proc.tail()
        return proc

    def worker_hostname(self, worker: Proc | None = None) -> str:
        """The Celery node name ``gristmill worker`` gives itself (``app.cli``)."""
        return f"gristmill@{socket.gethostname()}-{(worker or self.worker).pid}"

    def pool_child(self, worker: Proc | None = None, *, not_pid: int | None = None) -> int:
        """The pid of the worker's (single) live prefork pool process; with ``not_pid``, wait for
        one other than that (the pool's replacement for a killed process)."""
        worker = worker or self.worker

        def children() -> list[int]:
            alive = []
            for child in worker.descendants():
                try:
                    if child.status() != psutil.STATUS_ZOMBIE and child.pid != not_pid:
                        alive.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
            return alive

        found = wait_for(children, timeout=10, what="a pool child", logs=[worker])
        assert len(found) == 1, found
        return found[0]

    def kill_worker(self, worker: Proc | None = None) -> None:
        """SIGKILL the worker's main process and every child: no chance to clean up."""
        worker = worker or self.worker
        family = worker.descendants()
        worker.signal_group(signal.SIGKILL)
        worker.kill(family)

    def wait_idle(self, worker: Proc | None = None, *, timeout: float = 15) -> None:
        """Wait until the worker runs no task (Celery's remote control says so): whatever its
        last job's attempt was going to write, it has written."""
        worker = worker or self.worker
        hostname = self.worker_hostname(worker)
        celery = create_celery(Settings(broker_url=self.settings["broker_url"]))

        def idle() -> bool:
            inspect = celery.control.inspect(destination=[hostname], timeout=scaled(2), limit=1)
            replies = inspect.active() or {}
            return replies.get(hostname) == []

        try:
            wait_for(idle, timeout=timeout, what=f"{hostname} to be idle", logs=[worker])
        finally:
            celery.close()

    def reaper_pass(self, *, like: str | None = None, timeout: float = 15) -> None:
        """Wait until a reaper (the API's or a worker's) has made a pass that would re-send job
        ``like``'s message if that job were still queued (without ``like``: any pass from now).

        A sentinel job on a queue no worker consumes, with the same ``enqueued_at``, is re-sent
        by that pass: its ``enqueued_at`` moves on. The sentinel is deleted afterwards.
        """
        with _ledger(self.settings["database_url"]) as factory:
            with factory() as session:
                tenant_id = authenticate(session=session, key=self.key)
                since = like and session.scalar(select(Job.enqueued_at).where(Job.id == like))
            if since is None:  # no job to mimic: stale already, so the next pass re-sends it
                requeue_after = timedelta(seconds=self.settings["requeue_after_seconds"])
                since = utcnow() - requeue_after - timedelta(seconds=1)
            sentinel = make_job(factory, tenant_id).id
            with factory() as session:
                row = session.get_one(Job, sentinel)
                row.queue, row.enqueued_at = SENTINEL_QUEUE, since
                session.commit()

            def resent() -> bool:
                with factory() as session:
                    at = session.scalar(select(Job.enqueued_at).where(Job.id == sentinel))
                return at is not None and at > since

            try:
                wait_for(resent, timeout=timeout, what="a reaper pass", logs=self.logs)
            finally:
                with factory() as session:
                    session.execute(delete(Job).where(Job.id == sentinel))
                    session.commit()

    def _start(self, name: str, args: list[str]) -> Proc:
        proc = start(name, args, env=self.env(), log_dir=self.root / "logs")
        self.started.append(proc)
        return proc

    def close(self) -> None:
        self.api.close()
        stop_all(self.started)


StackFactory = Callable[..., Stack]


def build_stack(root: Path, key: str, **settings: Any) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    return Stack(root=root, settings={**FAST_TIMINGS, **settings}, key=key)
