"""How long tests wait, and one factor that stretches every wait on a slow or busy machine.

Each wait in the suite is written as the seconds it needs on the reference machine (two cores)
with headroom for another process keeping both cores busy. ``GRISTMILL_TEST_TIMEOUT_FACTOR``
(default 1) multiplies all of them: end-to-end waits (``wait_for``, ``Api.wait_status``,
``Api.run_job``), subprocess timeouts, "within N seconds" checks and pytest-timeout's limit per
test. Waits that prove something does *not* happen (``time.sleep`` before a check) are not
scaled: a longer sleep would only make them slower, not more likely to pass.
"""

from __future__ import annotations

import os


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
