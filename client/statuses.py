"""The API's status vocabulary, as the client needs it.

Statuses are part of the HTTP contract: every job and dataset the API returns names one, and a
client decides with them whether to keep watching. So the client carries the few names it needs
instead of importing the server's state machine (``app.jobs.states``): it stays a plain HTTP
client, importable without the server's modules, and works against a server of another release
as long as the contract holds. ``tests/client/test_config_and_params.py`` checks these names
against the server's, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

JOB_FINAL = frozenset({"succeeded", "failed", "cancelled"})
"""A job in one of these statuses changes no more: watching it is over."""

JOB_STATUSES = frozenset({"queued", "running", "cancelling", "pausing", "paused", *JOB_FINAL})
"""Every status a job can have."""

DATASET_STATUSES = frozenset({"validating", "ready", "failed"})
"""Every status a dataset (or an uploaded model) can have."""

COMPARISON_STATUSES = frozenset({"generating", "open", "failed"})
"""Every status a comparison can have: its answers being written, open for rating, or failed."""
