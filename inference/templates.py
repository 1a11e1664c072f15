"""Chat templates are tenant input: rendered in a sandbox, in a child process, on a budget.

A model's chat template is Jinja2 written by whoever trained or uploaded the model. It is
rendered as transformers renders it (``ImmutableSandboxedEnvironment``, ``trim_blocks``,
``lstrip_blocks``, ``loopcontrols``, its ``tojson``, ``raise_exception``, ``strftime_now``,
``dict``, hardened ``namespace``) but never in the service's process, where a nested loop or a
500 MB string could not be stopped. Each render goes to one of a few child processes
(``python -m inference.templates``) over a pipe, JSON both ways, and costs:

- at most ``timeout`` seconds of wall clock: past it the child is killed (SIGKILL) and a new one
  starts at the next render; ``RLIMIT_CPU`` also ends a child whose parent went away mid-render;
- at most ``max_chars`` of output, counted as ``Template.generate`` streams it, and no sequence
  repeated (``'x' * n``) past that size;
- at most ``memory_bytes`` of address space beyond what the child holds when idle
  (``RLIMIT_AS``): a string built in a loop fails with ``MemoryError`` in the child alone.

The service renders before a request takes a generation slot (:func:`render_chat`), one render
at a time per tenant, so a bad template costs its own request and one child for ``timeout``
seconds, never a slot, and other tenants still find a child free. The child inherits no
environment but ``PATH`` and ``PYTHONPATH``: no token or key is in reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import queue
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inference.engine import ChatTemplate, Engine, GenerationRequest, InferenceError, ModelRef
from inference.scheduler import RequestTimeout

log = logging.getLogger("gristmill.inference")


class TemplateFailed(InferenceError):
    """The model's chat template raised (its own ``raise_exception`` too) or does not compile."""

    status = 422
    code = "template.error"


class TemplateTimeout(TemplateFailed):
    code = "template.timeout"


class TemplateTooLarge(TemplateFailed):
    code = "template.too_large"


# --- the child: python -m inference.templates MAX_CHARS MEMORY_BYTES --------------------------


class _TooLarge(Exception):
    pass


def _environment(max_chars: int) -> Any:
    """transformers' chat-template environment, plus a size check on ``*`` (intercepted binary
    operators are also kept out of Jinja2's compile-time constant folding)."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > max_chars:
                    raise _TooLarge
            return super().call_binop(context, operator, left, right)

    class Generation(Extension):
        """``{% generation %}`` marks assistant text for transformers' masks: its body, as is."""

        tags = {"generation"}  # noqa: RUF012 (Jinja2's own attribute)

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    class TemplateDict:  # dict() and dict.fromkeys(), not the class itself
        __call__: Any = staticmethod(dict)
        fromkeys: Any = staticmethod(dict.fromkeys)

    def check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} refused")

    class TemplateNamespace(Namespace):
        """Jinja's namespace refusing underscore names (no route to CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            attrs = dict(*args[1:], **kwargs)
            for name in attrs:
                check(name)
            Namespace.__init__(args[0], attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            check(name)
            Namespace.__setitem__(self, name, value)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **kw: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(fmt)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(
        raise_exception=raise_exception,
        strftime_now=strftime_now,
        dict=TemplateDict(),
        namespace=TemplateNamespace,
    )
    return env


def _limit(kind: int, extra: int) -> None:
    """Soft limit ``kind`` to what the child uses now plus ``extra`` (bytes, or CPU seconds)."""
    if kind == resource.RLIMIT_CPU:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = math.ceil(usage.ru_utime + usage.ru_stime)
    else:  # address space, as Linux counts it
        with open("/proc/self/statm") as statm:
            used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    hard = resource.getrlimit(kind)[1]
    soft = used + extra if hard == resource.RLIM_INFINITY else min(used + extra, hard)
    resource.setrlimit(kind, (soft, hard))


def _render(env: Any, compiled: dict[str, Any], job: dict[str, Any], max_chars: int) -> str:
    source = job["source"]
    if source not in compiled:
        if len(compiled) >= 16:
            compiled.clear()
        compiled[source] = env.from_string(source)
    pieces, size = [], 0
    variables = {**job["variables"], "messages": job["messages"], "add_generation_prompt": True}
    for piece in compiled[source].generate(**variables):
        size += len(piece)
        if size > max_chars:
            raise _TooLarge
        pieces.append(piece)
    return "".join(pieces)


def _child(max_chars: int, memory_bytes: int) -> None:
    env = _environment(max_chars)
    compiled: dict[str, Any] = {}
    _limit(resource.RLIMIT_AS, memory_bytes)
    reader, writer = sys.stdin.buffer, sys.stdout.buffer
    writer.write(b'{"ready": true}\n')
    writer.flush()
    for line in reader:  # ends when the service closes the pipe or exits
        job = json.loads(line)
        _limit(resource.RLIMIT_CPU, job["cpu_seconds"])
        try:
            reply: dict[str, Any] = {"text": _render(env, compiled, job, max_chars)}
        except _TooLarge:
            reply = {"error": "too_large"}
        except MemoryError:  # the heap may be fragmented past the cap: this child retires
            reply = {"error": "too_large", "retire": True}
        except RecursionError:
            reply = {"error": "error", "message": "the chat template recursed too deeply"}
        except Exception as exc:  # the template's own errors: syntax, undefined, raise_exception
            reply = {"error": "error", "message": f"{type(exc).__name__}: {exc}"[:300]}
        writer.write(json.dumps(reply).encode() + b"\n")
        writer.flush()
        if reply.get("retire"):
            return


# --- the service's side -----------------------------------------------------------------------


class _Worker:
    """One child and its pipes (JSON lines both ways; the service never unpickles its output)."""

    def __init__(self, max_chars: int, memory_bytes: int) -> None:
        package_root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inference.templates", str(max_chars), str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": path},
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self._pending = bytearray()

    def read(self, timeout: float) -> dict[str, Any] | None:
        """The child's next line as JSON; None once ``timeout`` passes; EOFError if it died."""
        fd = self.stdout.fileno()
        deadline = time.monotonic() + timeout
        while (end := self._pending.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError
            self._pending += chunk
        line = bytes(self._pending[:end])
        del self._pending[: end + 1]
        return dict(json.loads(line))

    def ask(self, job: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        self.stdin.write(json.dumps(job).encode() + b"\n")
        self.stdin.flush()
        return self.read(timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.stdin.close()
        self.stdout.close()


class TemplateRenderer:
    """A pool of ``workers`` render children, started on first use and replaced when killed."""

    def __init__(
        self,
        *,
        workers: int,
        timeout_seconds: float,
        max_chars: int,
        memory_bytes: int,
        threads: int = 8,
    ) -> None:
        """``threads``: requests rendering or waiting to (the service's admission limit), each
        on a thread of this pool, so their waits starve nothing else."""
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="chat-template")
        self.timeout = timeout_seconds
        self.max_chars = max_chars
        self.memory_bytes = memory_bytes
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(workers):
            self._idle.put(None)  # a place whose child starts when first needed
        self._turns = threading.Condition()
        self._rendering: set[str] = set()
        """Tenants with a render under way: one each, so a tenant's loops hold one child."""
        self.killed = 0
        """Children killed for running past the timeout (for /health and tests)."""

    def render(
        self,
        template: ChatTemplate,
        messages: Sequence[dict[str, Any]],
        deadline: float,
        tenant: str | None = None,
    ) -> str:
        """``template`` with ``messages`` and ``add_generation_prompt``. Waits until ``deadline``
        (then :class:`RequestTimeout`) for the tenant's previous render to end and for a child.

        Raises:
            TemplateTimeout, TemplateTooLarge, TemplateFailed: the request's own answer.
        """
        with self._turns:
            while tenant in self._rendering:
                if not self._turns.wait(max(0.0, deadline - time.monotonic())):
                    raise RequestTimeout
            if tenant is not None:
                self._rendering.add(tenant)
        try:
            return self._render(template, messages, deadline)
        finally:
            with self._turns:
                self._rendering.discard(tenant)
                self._turns.notify_all()

    def _render(
        self, template: ChatTemplate, messages: Sequence[dict[str, Any]], deadline: float
    ) -> str:
        try:
            worker = self._idle.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise RequestTimeout from None
        job = {
            "source": template.source,
            "variables": dict(template.variables),
            "messages": list(messages),
            "cpu_seconds": math.ceil(self.timeout) + 1,
        }
        reply = None
        try:
            if worker is None or worker.proc.poll() is not None:  # new, or retired itself
                if worker is not None:
                    worker.kill()
                worker = _Worker(self.max_chars, self.memory_bytes)
                if worker.read(max(30.0, self.timeout)) is None:  # start: on no one's budget
                    raise EOFError
            reply = worker.ask(job, self.timeout)
        except (OSError, EOFError, ValueError) as exc:
            log.warning("a chat template render child died: %r", exc)
            raise TemplateFailed("the chat template could not be rendered", param="model") from None
        finally:
            if worker is not None and (reply is None or reply.get("retire")):
                worker.kill()  # timed out, died, or out of memory
                worker = None
            self._idle.put(worker)
        if reply is None:
            self.killed += 1
            raise TemplateTimeout(
                f"the model's chat template ran past its {self.timeout:g} s budget", param="model"
            )
        if reply.get("error") == "too_large":
            raise TemplateTooLarge(
                f"the model's chat template built more than {self.max_chars} characters",
                param="model",
            )
        if "text" not in reply:
            message = f"the chat template rejected the messages: {reply.get('message', '')}"
            raise TemplateFailed(message, param="messages")
        return str(reply["text"])

    def close(self) -> None:
        """Kill the idle children (the service is stopping; one mid-render ends within its
        budget, and with the service's pipe); a later render starts new ones."""
        places = []
        with contextlib.suppress(queue.Empty):
            while True:
                places.append(self._idle.get_nowait())
        for worker in places:
            if worker is not None:
                worker.kill()
            self._idle.put(None)


async def render_chat(
    engine: Engine,
    renderer: TemplateRenderer,
    model: ModelRef,
    request: GenerationRequest,
    deadline: float,
    tenant: str | None,
) -> GenerationRequest:
    """``request`` with its messages rendered (``chat_prompt``), before it takes a slot."""
    loop = asyncio.get_running_loop()
    template = await loop.run_in_executor(renderer.threads, engine.chat_template, model)
    if template is None:
        raise InferenceError("this model has no chat template; use /v1/completions", param="model")
    messages = request.messages or ()
    text = await loop.run_in_executor(
        renderer.threads, renderer.render, template, messages, deadline, tenant
    )
    return dataclasses.replace(request, chat_prompt=text)


if __name__ == "__main__":
    _child(int(sys.argv[1]), int(sys.argv[2]))
