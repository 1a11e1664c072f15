"""``/v1/jobs``: submit, read, list, cancel, pause and resume jobs; their events and metrics,
for polling."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.http import GristmillClient


class Jobs:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def submit(
        self, job_type: str, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST a job. An Idempotency-Key makes the retried POST return the same job, so a
        dropped connection never submits twice."""
        key = idempotency_key or f"cli-{uuid.uuid4()}"
        response = self.client.request(
            "POST",
            "/jobs",
            json={"type": job_type, "params": dict(params)},
            headers={"Idempotency-Key": key},
        )
        return dict(response.json())

    def get(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/jobs/{job_id}")

    def list(
        self, *, job_type: str | None = None, status: str | None = None, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        return self.client.paginate("/jobs", limit=limit, type=job_type, status=status)

    def compare(self, job_id: str, other_id: str, *, metric: str) -> dict[str, Any]:
        """``other_id`` minus ``job_id`` on a per-item task metric, paired over shared items."""
        return self.client.get(f"/jobs/{job_id}/compare/{other_id}", metric=metric)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{job_id}/cancel").json())

    def pause(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{job_id}/pause").json())

    def resume(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.request("POST", f"/jobs/{job_id}/resume").json())

    def events(self, job_id: str, *, after: int | None = None) -> Iterator[dict[str, Any]]:
        """Events after the id ``after``, oldest first (events are paged by their integer id)."""
        return self.client.paginate(f"/jobs/{job_id}/events", limit=1000, after=after)

    def metrics(
        self,
        job_id: str,
        *,
        name: str | None = None,
        after_step: int | None = None,
        limit: int = 5000,
    ) -> Iterator[dict[str, Any]]:
        """Metric points ordered by (step, name). Pages are cut by step: a page that ends in
        the middle of a step is trimmed to whole steps and the next page starts at that step."""
        while True:
            page = self.client.get(
                f"/jobs/{job_id}/metrics", name=name, after_step=after_step, limit=limit
            )
            rows: list[dict[str, Any]] = page["data"]
            if not page["has_more"] or not rows:
                yield from rows
                return
            last_step = rows[-1]["step"]
            # A page holding a single step cannot be split; take it whole.
            whole = [r for r in rows if r["step"] != last_step] or rows
            yield from whole
            after_step = whole[-1]["step"]
