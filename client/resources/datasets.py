"""``/v1/datasets``: streamed uploads checked against the server's sha256, reads, lists and
verified downloads."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from client.transfers import ChecksumMismatch, ProgressFn, ProgressReader

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
        """Stream ``path`` as a multipart upload, hashing it on the way out (one read of the
        file), and check the sha256 the server recorded against it. A mismatch deletes the
        dataset and raises :class:`ChecksumMismatch`.

        Only 429/503 answers are retried: a connection dropped mid-upload may have created the
        dataset already, and a blind retry would make a second one.
        """
        data = {**({"name": name} if name else {}), **(options or {})}
        with path.open("rb") as raw:
            reader = ProgressReader(raw, on_progress)
            response = self.client.request(
                "POST",
                "/datasets",
                data=data,
                files={"file": (path.name, reader, "application/octet-stream")},
                retry_on_disconnect=False,
                rewind=reader.rewind,
                timeout=httpx.Timeout(self.client.timeout, write=None),
            )
        dataset = dict(response.json())
        if dataset["sha256"] != reader.sha256.hexdigest():
            self.client.request("DELETE", f"/datasets/{dataset['id']}")
            raise ChecksumMismatch(
                f"the server stored sha256 {dataset['sha256']} for {path.name}, which hashed to "
                f"{reader.sha256.hexdigest()} here; the upload was deleted"
            )
        return dataset

    def get(self, dataset_id: str) -> dict[str, Any]:
        return self.client.get(f"/datasets/{dataset_id}")

    def list(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.client.paginate("/datasets", limit=limit)

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
