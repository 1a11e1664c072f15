"""What users read about a job's failures and events: stable words, no internals.

Workers record what happened in their own terms (exception text, launcher logs, the host and pid
of the worker); those details stay in the worker's log, which carries the job id. The API shows:

* for ``internal_error``: one stable sentence with the job id to quote;
* for other errors and for events: the message with server paths replaced by ``<path>``, the
  worker's ``host:pid`` dropped, exception-looking text after ``job failed:`` replaced, and a
  length cap; event ``data`` without the worker, host, pid or log fields.
"""

from __future__ import annotations

import re
from typing import Any

INTERNAL_ERROR = "The job stopped on an internal error; quote job id {job_id} when reporting it."
MAX_MESSAGE = 500
PRIVATE_DATA_KEYS = frozenset({"worker", "host", "hostname", "pid", "log", "stderr", "traceback"})

_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"()<>,;]+/)+[^\s/:'\"()<>,;]*")
_STARTED_ON = re.compile(r"^(attempt \d+ started) on \S+$")
_EXCEPTION = re.compile(r"^(job failed): [A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*", re.S)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\).*", re.S)


def scrub(message: str) -> str:
    """``message`` without server paths or tracebacks, at most ``MAX_MESSAGE`` characters."""
    text = _TRACEBACK.sub("(details in the server log)", message)
    text = _PATH.sub("<path>", text)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1] + "…"
    return text


def public_error(code: str, message: str, job_id: str) -> str:
    if code == "internal_error":
        return INTERNAL_ERROR.format(job_id=job_id)
    return scrub(message)


def public_event(
    message: str, data: dict[str, Any] | None, job_id: str
) -> tuple[str, dict[str, Any] | None]:
    started = _STARTED_ON.match(message)
    if started:
        message = started.group(1)
    exception = _EXCEPTION.match(message)
    if exception:
        message = f"{exception.group(1)}: {INTERNAL_ERROR.format(job_id=job_id)}"
    if data:
        data = {k: v for k, v in data.items() if k not in PRIVATE_DATA_KEYS} or None
    return scrub(message), data
