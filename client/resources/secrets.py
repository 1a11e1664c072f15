"""``/v1/secrets``: the tenant's named external endpoints (URL and key), for judge jobs. The
server never answers with the URL or the key: a name, a creation time and a masked hint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.http import GristmillClient


class Secrets:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def list(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.client.paginate("/secrets", limit=limit)

    def create(self, *, name: str, base_url: str, api_key: str) -> dict[str, Any]:
        body = {"name": name, "base_url": base_url, "api_key": api_key}
        return dict(self.client.request("POST", "/secrets", json=body).json())

    def delete(self, name: str) -> None:
        self.client.request("DELETE", f"/secrets/{name}")
