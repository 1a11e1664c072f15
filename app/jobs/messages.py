"""What users read about a job's failures and events: stable words, no internals.

Workers record what happened in their own terms (exception text, launcher logs, the host and pid
of the worker); those details stay in the worker's log, which carries the job id. The API shows:

* for ``internal_error``: one stable sentence with the job id to quote;
* for other errors and for events: the message under ``app.errors.public_message`` (no server
  paths or tracebacks, a length cap), the worker's ``host:pid`` dropped, exception-looking text
  after ``job failed:`` replaced; event ``data`` without the worker, host, pid or log fields.
"""

from __future__ import annotations

import re
from typing import Any

from app.errors import internal_error, public_message

PRIVATE_DATA_KEYS = frozenset({"worker", "host", "hostname", "pid", "log", "stderr", "traceback"})

_STARTED_ON = re.compile(r"^(attempt \d+ started) on \S+$")
_EXCEPTION = re.compile(r"^(job failed): [A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", re.S)


def public_error(code: str, message: str, job_id: str) -> str:
    if code == "internal_error":
        return internal_error(f"job id {job_id}").message
    return public_message(message)


def public_event(
    message: str, data: dict[str, Any] | None, job_id: str
) -> tuple[str, dict[str, Any] | None]:
    started = _STARTED_ON.match(message)
    if started:
        message = started.group(1)
    exception = _EXCEPTION.match(message)
    if exception:
        message = f"{exception.group(1)}: {internal_error(f'job id {job_id}').message}"
    if data:
        data = {k: v for k, v in data.items() if k not in PRIVATE_DATA_KEYS} or None
    return public_message(message), data
