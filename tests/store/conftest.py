"""Fixtures for the store's tests: every contract test runs on the local folder and on S3 (a real
moto server on loopback, one bucket per test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.store.base import Store
from app.store.local import LocalStore
from app.store.s3 import S3Store
from tests.s3server import SECRET, MotoServer, s3_options

__all__ = ["SECRET", "pending_uploads", "s3_options"]


@pytest.fixture(autouse=True)
def _aws(aws_env: None) -> None:
    """Every store test runs with the test credentials (``aws_env``)."""


@pytest.fixture
def s3_store(moto_server: MotoServer, bucket: str) -> S3Store:
    return S3Store(bucket, "gristmill/", s3_options(moto_server.url))


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    s3: S3Store = request.getfixturevalue("s3_store")
    return s3


def pending_uploads(store: S3Store) -> list[str]:
    answer = store.client.list_multipart_uploads(Bucket=store.bucket)
    return [upload["Key"] for upload in answer.get("Uploads", [])]
