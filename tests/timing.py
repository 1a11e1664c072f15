"""How long tests wait, one factor that stretches every wait on a slow or busy machine, and the
one way a test waits for something to happen.

Each wait in the suite is written as the seconds it needs on the reference machine (two cores)
with headroom for another process keeping both cores busy. ``GRISTMILL_TEST_TIMEOUT_FACTOR``
(default 1) multiplies all of them: ``wait_for`` (and so ``Api.wait_status``, ``Api.run_job``),
subprocess timeouts, "within N seconds" checks and pytest-timeout's limit per test.

A test never sleeps a fixed time to let something happen: it waits for the condition that
shows it has happened (a row, a log line, a process state), polling with ``wait_for`` until a
deadline. A check that something does *not* happen waits for a positive sign that it would have
happened by then (a reaper pass, the worker going idle) and then looks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


def _factor() -> float:
    raw = os.environ.get("GRISTMILL_TEST_TIMEOUT_FACTOR", "1")
    try:
        factor = float(raw)
    except ValueError:
        factor = 0.0
    if not factor > 0:
        raise ValueError(f"GRISTMILL_TEST_TIMEOUT_FACTOR must be a positive number, not {raw!r}")
    return factor


TIMEOUT_FACTOR = _factor()


def scaled(seconds: float) -> float:
    """``seconds`` (a limit on the reference machine) times the timeout factor."""
    return seconds * TIMEOUT_FACTOR


class Logged(Protocol):
    """Something whose recent output explains a failed wait (a process the test started)."""

    def tail(self) -> str: ...


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    logs: Iterable[Logged] = (),
) -> T:
    """Call ``probe`` until it returns something truthy and return that; fail after ``timeout``
    seconds on the reference machine (stretched by the timeout factor), with ``logs``' tails.

    ``probe`` is called once more after the deadline, so a slow last poll still counts.
    """
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            tails = "\n".join(log.tail() for log in logs)
            raise AssertionError(
                f"timed out after {limit:g}s waiting for {what}; last={last!r}\n{tails}"
            )
        time.sleep(interval)
