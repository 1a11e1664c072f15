"""Structured logging: every line carries the request or job it belongs to.

``bind(job_id=…, attempt=…)`` sets context variables that a filter copies onto each record, so
lines written deep in the pipeline still say which job they came from. ``GRISTMILL_LOG_FORMAT=json``
prints one JSON object per line for log shippers. A few messages that third-party libraries log
while being imported, and that say nothing about Gristmill or its jobs, are dropped at their
loggers (``IMPORT_NOISE``); everything else those loggers say still shows.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("log_context", default={})  # noqa: B039


@contextmanager
def bind(**values: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **values})
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context.get()
        return True


IMPORT_NOISE: dict[str, tuple[str, ...]] = {
    # torchao (imported by transformers and peft whenever it is installed) tries to load its CUDA
    # kernels (_C_mxfp8, _C_cutlass_90a) on every import, and says so when torch is a CPU or
    # other build they were not made for.
    "torchao": ("Failed to load ", "Skipping import of cpp extensions"),
    "torchao.kernel.intmm": ("Detected no triton",),  # Triton is CUDA's; CPU workers have none
    # torch 2.13 deprecates register_constant() on Enum subclasses, which torchao still calls
    # for its own enums while it is imported.
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),
}


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message contains any of ``needles``."""

    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(needle in message for needle in self.needles)


def quiet_import_noise() -> None:
    """Attach the ``IMPORT_NOISE`` filters to their loggers (once; forked children inherit
    them, so a worker's pool processes import the ML stack quietly too)."""
    for name, needles in IMPORT_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(needles))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "context", {}),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = getattr(record, "context", {})
        if context:
            base += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return base


def setup_logging(*, fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_import_noise()
