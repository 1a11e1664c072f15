"""Uploads honour an Idempotency-Key as job submissions do: a retried upload (same key, same
bytes and fields) answers with the first upload's dataset, file or model and keeps nothing of
its own; different bytes under the same key are refused."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts.tables import Artifact
from app.datasets.tables import Dataset
from app.jobs.tables import Job
from app.settings import Settings
from tests.api.test_errors_and_auth import assert_error

ROWS = b"".join(b'{"text": "record %d is long enough to keep"}\n' % i for i in range(30))


def _count(
    factory: sessionmaker[Session], table: type[Dataset] | type[Artifact] | type[Job]
) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(table)) or 0)


def _folders(settings: Settings, kind: str) -> set[str]:
    root = settings.resolved_storage_dir / kind
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.mark.parametrize(
    ("path", "data", "table", "folder"),
    [
        ("/v1/datasets", {}, Dataset, "datasets"),
        ("/v1/files", {"purpose": "fine-tune"}, Dataset, "datasets"),
        ("/v1/models", {}, Artifact, "models"),
    ],
)
def test_a_retried_upload_makes_one_object(
    client: TestClient,
    auth: dict[str, str],
    factory: sessionmaker[Session],
    settings: Settings,
    path: str,
    data: dict[str, str],
    table: type[Dataset] | type[Artifact],
    folder: str,
) -> None:
    headers = {**auth, "Idempotency-Key": f"upload-{folder}"}
    before = _folders(settings, folder)

    def upload(content: bytes) -> object:
        files = {"file": ("d.jsonl" if folder == "datasets" else "m.tar", io.BytesIO(content))}
        return client.post(path, files=files, data=data, headers=headers)

    first, again = upload(ROWS), upload(ROWS)
    assert first.status_code == again.status_code, again.text  # type: ignore[attr-defined]
    assert first.status_code in (200, 202), first.text  # type: ignore[attr-defined]
    assert again.headers["Idempotent-Replayed"] == "true"  # type: ignore[attr-defined]
    assert again.json()["id"] == first.json()["id"]  # type: ignore[attr-defined]
    assert (_count(factory, table), _count(factory, Job)) == (1, 1)
    made = {first.json()["id"]}  # type: ignore[attr-defined]
    assert _folders(settings, folder) - before == made  # the retry's bytes are gone

    other = upload(ROWS + b'{"text": "one more"}\n')
    assert_error(other, 400, "idempotency_key.reused")
    assert (_count(factory, table), _count(factory, Job)) == (1, 1)
    assert _folders(settings, folder) - before == made
