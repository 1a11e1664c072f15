"""``/v1/datasets``: streamed uploads checked against the server's sha256, reads, lists,
deletes and verified downloads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.transfers import ProgressFn

if TYPE_CHECKING:
    from client.http import GristmillClient


class Datasets:
    def __init__(self, client: GristmillClient) -> None:
        self.client = client

    def upload(
        self,
        path: Path,
        *,
        name: str | None = None,
        options: Mapping[str, str] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """Stream ``path`` (see :meth:`GristmillClient.upload`): validated in the background."""
        data = {**({"name": name} if name else {}), **(options or {})}
        return self.client.upload("/datasets", path, data=data, on_progress=on_progress)

    def get(self, dataset_id: str) -> dict[str, Any]:
        return self.client.get(f"/datasets/{dataset_id}")

    def list(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.client.paginate("/datasets", limit=limit)

    def delete(self, dataset_id: str) -> None:
        """Refused (409) while a queued or running job reads it."""
        self.client.request("DELETE", f"/datasets/{dataset_id}")

    def download(
        self, dataset_id: str, folder: Path, *, on_progress: ProgressFn | None = None
    ) -> Path:
        dataset = self.get(dataset_id)
        target = folder / (dataset["filename"] or f"{dataset_id}.bin")
        self.client.download(
            f"/datasets/{dataset_id}/content",
            target,
            sha256=dataset["sha256"],
            on_progress=on_progress,
        )
        return target
