"""``/v1/models`` and ``/v1/tokenizers``: stored artifacts, each a folder of files listed in a
manifest whose sha256 is the artifact's own; downloads are checked file by file against it.
Models are also uploaded (an archive the server imports) and deleted."""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.transfers import ChecksumMismatch, ProgressFn, sha256_file

if TYPE_CHECKING:
    from client.http import GristmillClient

Manifest = builtins.list[dict[str, Any]]
"""Every file of an artifact: its ``path``, ``size_bytes`` and ``sha256``."""


class Artifacts:
    """One collection of artifacts: ``collection`` is ``models`` or ``tokenizers``."""

    def __init__(self, client: GristmillClient, collection: str) -> None:
        self.client, self.collection = client, collection

    def get(self, artifact_id: str) -> dict[str, Any]:
        return self.client.get(f"/{self.collection}/{artifact_id}")

    def list(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.client.paginate(f"/{self.collection}", limit=limit)

    def upload(
        self, archive: Path, *, name: str | None = None, on_progress: ProgressFn | None = None
    ) -> dict[str, Any]:
        """Stream a model archive (``.tar``, ``.tar.gz`` or ``.zip`` of a Hugging Face folder);
        the server imports it in the background (``validating`` → ``ready`` or ``failed``)."""
        data = {"name": name} if name else {}
        return self.client.upload(
            f"/{self.collection}", archive, data=data, on_progress=on_progress
        )

    def delete(self, artifact_id: str) -> dict[str, Any]:
        """Refused while a job uses it."""
        return dict(self.client.request("DELETE", f"/{self.collection}/{artifact_id}").json())

    def files(self, artifact_id: str) -> Manifest:
        """The manifest: every file's path, size and sha256, checked against the artifact's own
        sha256 (the hash of its manifest), so a file list cannot be swapped either."""
        artifact = self.get(artifact_id)
        files = self.client.get(f"/{self.collection}/{artifact_id}/files")["data"]
        entries = [{k: f[k] for k in ("path", "size_bytes", "sha256")} for f in files]
        text = json.dumps(entries, indent=1, sort_keys=True)
        if hashlib.sha256(text.encode()).hexdigest() != artifact["sha256"]:
            raise ChecksumMismatch(f"the file list of {artifact_id} does not match its sha256")
        return entries

    def download(
        self,
        artifact_id: str,
        folder: Path,
        *,
        files: Manifest | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Path:
        """Download every file into ``folder/<id>/``, each verified against the manifest
        (``files``, from :meth:`files`, fetched here when not given).

        Files already there with the right sha256 are kept, so an interrupted download resumes.
        """
        root = folder / artifact_id
        for entry in files if files is not None else self.files(artifact_id):
            target = root / entry["path"]
            if not target.resolve().is_relative_to(root.resolve()):
                raise ChecksumMismatch(f"refusing a path outside the folder: {entry['path']}")
            if target.is_file() and sha256_file(target) == entry["sha256"]:
                if on_progress is not None:
                    on_progress(entry["size_bytes"])
                continue
            path = f"/{self.collection}/{artifact_id}/files/{entry['path']}"
            self.client.download(path, target, sha256=entry["sha256"], on_progress=on_progress)
        return root
