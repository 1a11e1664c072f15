"""The ``gristmill`` command: serve (embedded all-in-one), api, worker, inference, migrate and the
operator's ``keys create --tenant``; and the HTTP client's datasets, jobs, models, tokenizers,
comparisons and keys commands, chat and complete."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from app.db import make_engine, make_session_factory, session_scope, utcnow
from app.logging import setup_logging
from app.settings import Settings, get_settings
from app.tenants.service import DEFAULT_TENANT, CreatedKey, create_api_key, tenant_has_keys
from client.config import KEY_FILE
from client.parser import CLIENT_COMMANDS, add_client_parsers

log = logging.getLogger("gristmill")
# What --help prints is plain text (no reStructuredText markup from the docstrings).
DESCRIPTION = (
    "Gristmill: serve (the embedded all-in-one), api, worker, inference and migrate; and the "
    "HTTP client's datasets, jobs, models, tokenizers, comparisons and keys commands, chat and "
    "complete (keys create --tenant is the operator's, straight in the database)."
)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["keys", "create"] and any(a.split("=")[0] == "--tenant" for a in argv[2:]):
        # The operator's key, in the database: before the client's `keys` group loads, so it
        # works where the client extra (rich) is not installed.
        operator_key(argv[2:])
        return
    parser = argparse.ArgumentParser(prog="gristmill", description=DESCRIPTION)
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
    worker.add_argument(
        "--quiet",
        action="store_true",
        help="no start-up banner or warnings (as gristmill serve runs it)",
    )
    inference = sub.add_parser("inference", help="the inference service (loads models)")
    inference.add_argument("--host", default="127.0.0.1")
    inference.add_argument("--port", type=int, default=8001)
    inference.add_argument(
        "--quiet", action="store_true", help="warnings only (as gristmill serve runs it)"
    )
    sub.add_parser("migrate", help="upgrade the database schema")
    add_client_parsers(sub, argv)  # a client group's actions load only when it is named

    args = parser.parse_args(argv)
    if args.command in CLIENT_COMMANDS:
        # The client talks to a server over HTTP only: no settings, logging or data folder here.
        from client.commands import main as client_main

        client_main(args)
        return
    settings = server_settings()
    if args.command == "migrate":
        migrate(settings)
    elif args.command == "api":
        run_api(settings, args.host, args.port)
    elif args.command == "worker":
        run_worker(args.queues, args.concurrency, args.max_tasks_per_child, quiet=args.quiet)
    elif args.command == "serve":
        serve(settings, args.host, args.port)
    elif args.command == "inference":
        run_inference(args.host, args.port, quiet=args.quiet)


def server_settings() -> Settings:
    """The settings of a server-side command, with logging set up and the data folder made."""
    # Jobs' data, keys and the embedded database: files this process and its children create
    # are the service user's alone (0600 files, 0700 folders).
    os.umask(0o077)
    settings = get_settings()
    setup_logging(fmt=settings.log_format, level=settings.log_level)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def operator_key(argv: list[str]) -> None:
    """``gristmill keys create --tenant NAME``: print a new admin key for the tenant once."""
    parser = argparse.ArgumentParser(
        prog="gristmill keys create",
        description="Operator, on the server's machine: make an admin key for a tenant (made if "
        "new) directly in the database, and print it once.",
    )
    parser.add_argument("--tenant", required=True, metavar="NAME")
    parser.add_argument("--label", help="what the key is for")
    parser.add_argument("--expires-in-days", type=int, metavar="DAYS")
    parser.add_argument("--admin", action="store_true", help="(implied: operator keys are admin)")
    args = parser.parse_args(argv)
    expires_at = None
    if args.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=args.expires_in_days)
    settings = server_settings()
    print(create_key(settings, args.tenant, label=args.label, expires_at=expires_at).key)


def migrate(settings: Settings) -> None:
    from app.migrate import upgrade

    upgrade(settings.resolved_database_url)


def create_key(
    settings: Settings,
    tenant: str,
    *,
    label: str | None = None,
    expires_at: datetime | None = None,
) -> CreatedKey:
    """An admin key for ``tenant`` (made if new), straight in the database: how a tenant gets
    its first key; its admin key then manages the others over the API."""
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with session_scope(factory) as session:
        return create_api_key(
            session=session, tenant_name=tenant, label=label, expires_at=expires_at
        )


def run_api(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    from app.api.serving import uvicorn_options
    from app.main import create_app

    options = uvicorn_options(settings.send_timeout_seconds)
    uvicorn.run(create_app(settings), host=host, port=port, **options)


def run_worker(
    queues: str, concurrency: int, max_tasks_per_child: int, *, quiet: bool = False
) -> None:
    import warnings

    from app.broker import get_celery
    from workers import tasks

    tasks.CONSUMED_QUEUES = [q.strip() for q in queues.split(",") if q.strip()]
    app = get_celery()
    tasks.register(app)
    argv = [
        *(["--quiet"] if quiet else []),
        "worker",
        f"--queues={queues}",
        f"--concurrency={concurrency}",
        "--hostname=gristmill@%h-" + str(os.getpid()),
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]
    if quiet:
        # The embedded worker of `serve` (often root in a container): no banner, no
        # superuser lecture, no "No hostname was supplied" for the filesystem broker.
        warnings.filterwarnings("ignore", message=".*superuser privileges.*")
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    app.worker_main(argv)


def run_inference(host: str, port: int, *, quiet: bool = False) -> None:
    """The inference service; its settings come from ``GRISTMILL_INFERENCE_*``."""
    if quiet:  # beside `serve`, whose first screen is the newcomer's (import noise: app.logging)
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    from inference.server import serve as serve_inference
    from inference.settings import InferenceSettings

    # Unless GRISTMILL_INFERENCE_MODEL_ROOT says otherwise, the store the API names keys in:
    # its folder, or the bucket read through <data_dir>/store-cache.
    app_settings = get_settings()
    serve_inference(
        InferenceSettings(), host, port, storage=app_settings, data_dir=app_settings.data_dir
    )


def ensure_default_key(settings: Settings) -> tuple[str, bool]:
    """First start of the embedded profile: make a key and keep it in a 0600 file.

    Returns the key and whether it was made now (it is then shown once more only on screen).
    """
    path = settings.data_dir / KEY_FILE
    factory = make_session_factory(make_engine(settings.resolved_database_url))
    with session_scope(factory) as session:
        if tenant_has_keys(session=session, tenant_name=DEFAULT_TENANT):
            return (path.read_text().strip() if path.exists() else ""), False
        created = create_api_key(session=session, tenant_name=DEFAULT_TENANT)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(created.key + "\n")
    return created.key, True


def first_screen(settings: Settings, host: str, port: int, key: str, new_key: bool) -> str:
    """What a newcomer sees after `make run`: where it is, the key, and one command to try."""
    url = f"http://{host}:{port}"
    key_file = (settings.data_dir / "api-key").resolve()
    lines = [
        "",
        f"  Gristmill is running at {url}   (API docs: {url}/docs)",
        "",
    ]
    if new_key:  # shown once; later starts point at the file
        lines += [f"  Your API key, saved in {key_file}:", f"      {key}"]
    elif key:
        lines += [f"  Your API key is in {key_file}"]
    else:
        lines += ["  Make an API key with:  gristmill keys create --tenant NAME"]
    lines += [
        "",
        "  Try it: a 5-second diagnostic job, then read it back:",
        f'      KEY=$(cat {key_file}); curl -s -X POST {url}/v1/jobs -H "Authorization: Bearer'
        ' $KEY" -H \'Content-Type: application/json\' -d \'{"type": "probe"}\'',
        f'      curl -s {url}/v1/jobs -H "Authorization: Bearer $KEY"',
        "",
        f"  Data in {Path(settings.data_dir).resolve()}. Stop with Ctrl+C.",
        "",
    ]
    return "\n".join(lines)


class Supervisor:
    """Keeps one subprocess alive beside the embedded API (the worker, the inference service);
    restarts it if it dies."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name, self.args = name, args
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        self._spawn()
        threading.Thread(target=self._watch, name=f"{self.name}-supervisor", daemon=True).start()

    def _spawn(self) -> None:
        cmd = [sys.executable, "-m", "app.cli", *self.args]
        self.process = subprocess.Popen(cmd, start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.wait(2):
            if self.process is not None and self.process.poll() is not None:
                log.warning("%s exited with %s; restarting it", self.name, self.process.returncode)
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


def embedded_processes(settings: Settings, host: str, port: int) -> list[Supervisor]:
    """A worker for every queue, and an inference service on the next port unless
    ``GRISTMILL_INFERENCE_URL`` points at one elsewhere."""
    worker = ["worker", "--queues", "cpu,gpu", "--concurrency", "1", "--quiet"]
    processes = [Supervisor("worker", worker)]
    if "inference_url" not in settings.model_fields_set:
        # Loopback whatever the API binds: only the API beside it calls the service.
        inference = ["inference", "--host", "127.0.0.1", "--port", str(port + 1), "--quiet"]
        processes.append(Supervisor("inference", inference))
    return processes


def serve(settings: Settings, host: str, port: int) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown: exit via SystemExit, so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    # The first screen is for the newcomer: no migration or server start-up chatter.
    for name in ("alembic", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.WARNING)
    migrate(settings)
    key, new_key = ensure_default_key(settings)
    if settings.inference_token is None:
        # One secret for this run, shared with the children through their environment.
        token = secrets.token_urlsafe(32)
        os.environ["GRISTMILL_INFERENCE_TOKEN"] = token
        settings = settings.model_copy(update={"inference_token": token})
    processes = embedded_processes(settings, host, port)
    if "inference_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"inference_url": f"http://127.0.0.1:{port + 1}"})
    for process in processes:
        process.start()
    try:
        print(first_screen(settings, host, port, key, new_key), flush=True)
        run_api(settings, host, port)
    finally:
        for process in processes:
            process.stop()
        time.sleep(0.1)


if __name__ == "__main__":
    main()
