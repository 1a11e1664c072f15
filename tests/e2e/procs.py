"""Helpers for end-to-end tests: real processes, a private Redis, a cuttable TCP proxy, an HTTP
client, and ``Stack`` (an API plus workers sharing a database, a broker and a data directory).

Every process a test starts is recorded here (``STARTED``) with its log file, so the e2e conftest
can attach log tails to a failing test's report and kill whatever a test left behind. Processes
run in sessions of their own (``start_new_session=True``): stopping one signals its whole process
group, and nothing else on the machine.

Timeouts here are seconds on the reference machine; ``wait_for`` (and so ``Api.wait_status`` and
``Api.run_job``), ``run_cli`` and the HTTP client stretch them by ``GRISTMILL_TEST_TIMEOUT_FACTOR``
(see ``tests.timing``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from sqlalchemy import text

from app.db import make_engine
from app.jobs.states import FINAL_STATES as JOB_FINAL_STATES
from tests.conftest import PG_ADMIN_URL, RUN_ID
from tests.timing import scaled

GRISTMILL = str(Path(sys.executable).with_name("gristmill"))
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
FINAL_STATES = frozenset(status.value for status in JOB_FINAL_STATES)
LOG_TAIL_LINES = 60

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str | float | int) -> dict[str, str]:
    """This process's environment without any ``GRISTMILL_*`` variable, plus ``settings``.

    The top-level conftest puts the in-process test settings into ``os.environ``; child processes
    must see only what their test chose. ``settings`` keys are setting names (``database_url``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRISTMILL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"GRISTMILL_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    logs: Iterable[Proc] = (),
) -> T:
    """Call ``probe`` until it returns something truthy; fail with the processes' log tails.

    ``timeout`` is in seconds on the reference machine, stretched by the timeout factor.
    """
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            tails = "\n".join(proc.tail() for proc in logs)
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; last={last!r}\n{tails}"
            )
        time.sleep(interval)


@dataclass
class Proc:
    """A process started by a test, its output in ``log_path``."""

    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        body = "\n".join(self.log().splitlines()[-lines:])
        state = "running" if self.alive() else f"exited {self.popen.returncode}"
        return f"----- {self.name} (pid {self.pid}, {state}): {self.log_path} -----\n{body}\n"

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL it (and any straggling descendant)."""
        family = self.descendants()
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self.kill(family)

    def kill(self, family: list[psutil.Process] | None = None) -> None:
        """SIGKILL the process, its group and its descendants (those found now or passed in)."""
        family = (family or []) + self.descendants()
        self.signal_group(signal.SIGKILL)
        for child in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.popen.wait(timeout=scaled(10))
        psutil.wait_procs(family, timeout=scaled(5))


STARTED: list[Proc] = []
"""Processes started and not yet cleaned up, for log tails on failure and the final sweep."""


def start(
    name: str,
    args: list[str],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    cwd: Path | None = None,
) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{len(list(log_dir.glob(f'{name}*.log')))}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            args,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc = Proc(name=name, args=args, log_path=log_path, popen=popen)
    STARTED.append(proc)
    return proc


def stop_all(procs: Iterable[Proc]) -> None:
    for proc in list(procs):
        try:
            proc.stop(timeout=5)
        finally:
            if proc in STARTED:
                STARTED.remove(proc)


def run_cli(args: list[str], *, env: Mapping[str, str], timeout: float = 60) -> str:
    """Run a short ``gristmill`` command to completion and return its stdout."""
    done = subprocess.run(
        [GRISTMILL, *args], env=dict(env), capture_output=True, text=True, timeout=scaled(timeout)
    )
    if done.returncode != 0:
        raise AssertionError(f"gristmill {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


class RedisServer:
    """A private, non-persistent redis-server on a free port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--daemonize", "no", "--dir", str(self.log_dir)]
        self.proc = start("redis", args, env=clean_env(), log_dir=self.log_dir)
        wait_for(self.ping, timeout=10, what="redis to answer PING", logs=[self.proc])

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def crash(self) -> None:
        """``SHUTDOWN NOSAVE``: Redis exits and every queued message is gone."""
        assert self.proc is not None
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"SHUTDOWN NOSAVE\r\n")
                sock.recv(16)
        except OSError:
            pass
        self.proc.popen.wait(timeout=scaled(10))
        stop_all([self.proc])

    def stop(self) -> None:
        if self.proc is not None:
            stop_all([self.proc])


class TcpProxy:
    """A TCP proxy in a thread: 127.0.0.1:<port> → ``target``. ``cut()`` closes the listener and
    every connection (the server looks down: connects are refused, open sockets reset);
    ``restore()`` listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    restore = start

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        for sock in [s for s in (listener,) if s is not None] + list(sockets):
            _close(sock)

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client)
                    _close(upstream)
                    return
                self._sockets |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)
            with self._lock:
                self._sockets -= {src, dst}


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


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

    def ready_status(self) -> int | None:
        try:
            return self.client.get("/v1/ready").status_code
        except httpx.HTTPError:
            return None

    def submit(self, **params: Any) -> dict[str, Any]:
        body = {"type": "probe", "params": {"matmul_size": 64, **params}}
        response = self.client.post("/v1/jobs", json=body, headers=self.auth)
        assert response.status_code == 202, response.text
        return dict(response.json())

    def run_job(
        self,
        job_type: str,
        params: Mapping[str, Any],
        *,
        timeout: float = 90,
        logs: Iterable[Proc] = (),
    ) -> dict[str, Any]:
        """Submit a job and wait until it has ``succeeded``; return it (fail if it ends otherwise).

        The end-to-end twin of the ``run_job`` fixture, for jobs that real worker processes run.
        """
        body = {"type": job_type, "params": dict(params)}
        response = self.client.post("/v1/jobs", json=body, headers=self.auth)
        assert response.status_code == 202, response.text
        return self.wait_status(response.json()["id"], "succeeded", timeout=timeout, logs=logs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}", headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def cancel(self, job_id: str) -> dict[str, Any]:
        response = self.client.post(f"/v1/jobs/{job_id}/cancel", headers=self.auth)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        response = self.client.get(
            f"/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=self.auth
        )
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        response = self.client.get(f"/v1/jobs/{job_id}/metrics", headers=self.auth)
        assert response.status_code == 200, response.text
        return list(response.json()["data"])

    def wait_status(
        self,
        job_id: str,
        statuses: str | Iterable[str],
        *,
        timeout: float = 30,
        logs: Iterable[Proc] = (),
    ) -> dict[str, Any]:
        """Poll the job until its status is one of ``statuses``; return the job."""
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


def database_url(port: int = PG_PORT) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].rsplit("@", 1)[0]
    return f"{base}@{PG_HOST}:{port}/{E2E_DB}"


def truncate_jobs(url: str) -> None:
    """Forget every job, so a later test's reaper never picks up an earlier test's leftovers."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE job CASCADE"))  # and every table that refers to a job
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

    def pool_child(self, worker: Proc | None = None) -> int:
        """The pid of the worker's (single) prefork pool process."""
        worker = worker or self.worker
        children = wait_for(
            lambda: [p.pid for p in worker.descendants()],
            timeout=10,
            what="a pool child",
            logs=[worker],
        )
        assert len(children) == 1, children
        return int(children[0])

    def kill_worker(self, worker: Proc | None = None) -> None:
        """SIGKILL the worker's main process and every child: no chance to clean up."""
        worker = worker or self.worker
        family = worker.descendants()
        worker.signal_group(signal.SIGKILL)
        worker.kill(family)

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
