"""Fixtures for the store's tests: every contract test runs on the local folder and on S3 (a real
moto server on loopback, one bucket per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from app.store.base import Store
from app.store.config import MiB, S3Options
from app.store.local import LocalStore
from app.store.s3 import S3Store
from tests.store.s3server import MotoServer

REGION = "us-east-1"
SECRET = "test-secret-that-never-leaves"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials through the AWS chain's environment; nothing from the host's files or
    an instance's metadata service."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


def s3_options(endpoint: str, **overrides: object) -> S3Options:
    settings: dict[str, object] = {
        "endpoint_url": endpoint,
        "region": REGION,
        "addressing_style": "path",
        "part_size": 5 * MiB,
        "concurrency": 2,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 10.0,
        "max_attempts": 2,
    }
    return S3Options(**{**settings, **overrides})  # type: ignore[arg-type]


def new_bucket(endpoint: str) -> str:
    name = f"gm-{uuid.uuid4().hex[:16]}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(moto_server: MotoServer, _aws_env: None) -> str:
    return new_bucket(moto_server.url)


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
