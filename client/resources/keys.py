"""``/v1/keys``: the tenant's API keys. Any key lists them; an admin key creates, rotates and
revokes them. A secret comes back once, in the answer that makes it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from client.http import GristmillClient


class Keys:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def list(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.client.paginate("/keys", limit=limit)

    def create(
        self,
        *,
        label: str | None = None,
        expires_in_days: int | None = None,
        admin: bool = False,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """POST a key. An Idempotency-Key makes a retried POST answer with the same key (and a
        fresh secret for it), so a dropped connection never leaves a second key behind."""
        body: dict[str, Any] = {"admin": admin}
        if label is not None:
            body["label"] = label
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        key = idempotency_key or f"cli-{uuid.uuid4()}"
        response = self.client.request("POST", "/keys", json=body, headers={"Idempotency-Key": key})
        return dict(response.json())

    def revoke(self, key_id: str) -> dict[str, Any]:
        return dict(self.client.request("DELETE", f"/keys/{key_id}").json())

    def rotate(self, key_id: str, *, grace_seconds: int = 0) -> dict[str, Any]:
        """A new secret with the same settings. Not retried on a dropped connection: a second
        rotation would revoke the key the first one made."""
        response = self.client.request(
            "POST",
            f"/keys/{key_id}/rotate",
            json={"grace_seconds": grace_seconds},
            retry_on_disconnect=False,
        )
        return dict(response.json())
