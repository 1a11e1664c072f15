"""``gristmill``: serve (embedded all-in-one), api, worker, inference, migrate, keys create."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app.db import make_engine, make_session_factory, session_scope
from app.logging import setup_logging
from app.settings import Settings, get_settings
from app.tenants.service import DEFAULT_TENANT, create_api_key, tenant_has_keys

log = logging.getLogger("gristmill")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gristmill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "embedded: migrate, API and one worker"),
        ("api", "HTTP API"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--host", default="127.0.0.1")
        cmd.add_argument("--port", type=int, default=8000)
    worker = sub.add_parser("worker", help="a Celery worker running jobs")
    worker.add_argument("--queues", default="cpu,gpu")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument(
        "--max-tasks-per-child", type=int, default=0, help="1 on GPU workers: fresh CUDA per job"
    )
    inference = sub.add_parser("inference", help="the inference service (loads models)")
    inference.add_argument("--host", default="127.0.0.1")
    inference.add_argument("--port", type=int, default=8001)
    sub.add_parser("migrate", help="upgrade the database schema")
    keys = sub.add_parser("keys", help="API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--tenant", required=True)

    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(fmt=settings.log_format, level=settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "keys":
        print(create_key(settings, args.tenant).key)
    elif args.command == "api":
        run_api(settings, args.host, args.port)
    elif args.command == "worker":
        run_worker(args.queues, args.concurrency, args.max_tasks_per_child)
    elif args.command == "serve":
        serve(settings, args.host, args.port)
    elif args.command == "inference":
        run_inference(args.host, args.port)


def migrate(settings: Settings) -> None:
    from app.migrate import upgrade

    upgrade(settings.resolved_database_url)


def create_key(settings: Settings, tenant: str):  # type: ignore[no-untyped-def]
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with session_scope(factory) as session:
        return create_api_key(session=session, tenant_name=tenant)


def run_api(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from app.main import create_app

    uvicorn.run(create_app(settings), host=host, port=port, log_config=None, access_log=False)


def run_worker(queues: str, concurrency: int, max_tasks_per_child: int) -> None:
    from workers import tasks
    from workers.celery_app import get_celery

    tasks.CONSUMED_QUEUES = [q.strip() for q in queues.split(",") if q.strip()]
    app = get_celery()
    tasks.register(app)
    argv = [
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        "--hostname=gristmill@%h-" + str(os.getpid()),
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    app.worker_main(argv)


def run_inference(host: str, port: int) -> None:
    """The inference service; its settings come from ``GRISTMILL_INFERENCE_*``."""
    from workers.inference.server import serve as serve_inference
    from workers.inference.settings import InferenceSettings

    serve_inference(InferenceSettings(), host, port)


def ensure_default_key(settings: Settings) -> None:
    """First start of the embedded profile: make a key, print it once, keep it in a 0600 file."""
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with session_scope(factory) as session:
        if tenant_has_keys(session=session, tenant_name=DEFAULT_TENANT):
            return
        created = create_api_key(session=session, tenant_name=DEFAULT_TENANT)
    path = settings.data_dir / "api-key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.key + "\n")
    print(f"\nYour API key (also saved in {path.resolve()}):\n\n    {created.key}\n", flush=True)


class WorkerSupervisor:
    """Keeps one worker subprocess alive beside the embedded API; restarts it if it dies."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._spawn()
        threading.Thread(target=self._watch, name="worker-supervisor", daemon=True).start()

    def _spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--queues",
            "cpu,gpu",
            "--concurrency",
            "1",
        ]
        self.process = subprocess.Popen(cmd, start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.wait(2):
            if self.process is not None and self.process.poll() is not None:
                log.warning("worker exited with %s; restarting it", self.process.returncode)
                self._spawn()

    def stop(self) -> None:
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def serve(settings: Settings, host: str, port: int) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown: exit via SystemExit, so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    migrate(settings)
    ensure_default_key(settings)
    supervisor = WorkerSupervisor()
    supervisor.start()
    try:
        print(
            f"Gristmill on http://{host}:{port} (docs at /docs); "
            f"data in {Path(settings.data_dir).resolve()}"
        )
        run_api(settings, host, port)
    finally:
        supervisor.stop()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
