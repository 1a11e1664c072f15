"""Processes for end-to-end tests: real processes with their logs, a private Redis, a cuttable
TCP proxy and short ``gristmill`` commands. ``tests.e2e.stack`` builds Gristmill from them.

Every process a test starts is recorded here (``STARTED``) with its log file, so the e2e conftest
can attach log tails to a failing test's report and kill whatever a test left behind. Processes
run in sessions of their own (``start_new_session=True``): stopping one signals its whole process
group, and nothing else on the machine.

Timeouts here are seconds on the reference machine, stretched by ``GRISTMILL_TEST_TIMEOUT_FACTOR``
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.serving import free_port
from tests.timing import scaled, wait_for

GRISTMILL = str(Path(sys.executable).with_name("gristmill"))
REDIS_SERVER = shutil.which("redis-server") or "redis-server"
LOG_TAIL_LINES = 60


def clean_env(**settings: str | float | int) -> dict[str, str]:
    """This process's environment without any ``GRISTMILL_*`` variable, plus ``settings``.

    The top-level conftest puts the in-process test settings into ``os.environ``; child processes
    must see only what their test chose. ``settings`` keys are setting names (``database_url``).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRISTMILL_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"GRISTMILL_{k.upper()}": str(v) for k, v in settings.items()})
    return env


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
