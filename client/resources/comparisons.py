"""``/v1/comparisons``: blind side-by-side comparisons of models: create one, invite raters,
read its results, its ladder chart and every vote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.http import GristmillClient


class Comparisons:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Queue the ``compare`` job that generates every answer (the comparison's
        ``job_id``); rating opens when it succeeds."""
        return dict(self.client.request("POST", "/comparisons", json=dict(body)).json())

    def get(self, comparison_id: str) -> dict[str, Any]:
        return self.client.get(f"/comparisons/{comparison_id}")

    def invite(self, comparison_id: str, *, name: str | None = None) -> dict[str, Any]:
        """A rater's link (``url``, relative to the server) and token, shown once."""
        body = {"name": name} if name else {}
        response = self.client.request("POST", f"/comparisons/{comparison_id}/raters", json=body)
        return dict(response.json())

    def judge(self, comparison_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Queue a ``judge`` job (its ``job_id``): a model or an endpoint votes on every pair."""
        response = self.client.request("POST", f"/comparisons/{comparison_id}/judges",
                                       json=dict(body))  # fmt: skip
        return dict(response.json())

    def results(self, comparison_id: str) -> dict[str, Any]:
        """The ladder (Elo scale, 95% intervals), win rates, votes per model, left-position win
        rate and rater agreement."""
        return self.client.get(f"/comparisons/{comparison_id}/results")

    def chart_png(self, comparison_id: str) -> bytes:
        """The ladder as the server draws it."""
        return self.client.request("GET", f"/comparisons/{comparison_id}/chart.png").content

    def votes_jsonl(self, comparison_id: str) -> bytes:
        """Every vote, one JSON object a line, with the models' identities."""
        return self.client.request("GET", f"/comparisons/{comparison_id}/votes.jsonl").content
