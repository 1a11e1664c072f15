"""Which store the settings open: GRISTMILL_STORAGE_URL, the older GRISTMILL_STORAGE_DIR, or the
data folder; credentials only from the AWS chain."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from app.store.config import S3Options, StoreConfig, open_store
from app.store.errors import StorageConfigError
from app.store.local import LocalStore
from app.store.s3 import S3Store


def settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Settings:
    for name in ("GRISTMILL_STORAGE_URL", "GRISTMILL_STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GRISTMILL_DATA_DIR", str(tmp_path / "data"))
    for name, value in env.items():
        monkeypatch.setenv(f"GRISTMILL_{name}", value)
    return Settings()


def test_the_embedded_default_is_the_data_folders_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = settings(monkeypatch, tmp_path).resolved_store
    assert config.url == (tmp_path / "data" / "store").resolve().as_uri()
    store = open_store(config)
    assert isinstance(store, LocalStore) and store.root == (tmp_path / "data" / "store").resolve()


def test_the_older_storage_dir_setting_keeps_working(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = settings(monkeypatch, tmp_path, STORAGE_DIR=str(tmp_path / "shared"))
    assert s.resolved_storage_dir == (tmp_path / "shared").resolve()
    assert s.resolved_store.local_root == (tmp_path / "shared").resolve()


def test_a_file_url_names_a_local_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    folder = tmp_path / "with space"
    s = settings(monkeypatch, tmp_path, STORAGE_URL=folder.as_uri())
    assert s.resolved_storage_dir == folder
    assert isinstance(open_store(s.resolved_store), LocalStore)


def test_an_s3_url_with_its_client_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = settings(
        monkeypatch,
        tmp_path,
        STORAGE_URL="s3://gristmill/prod",
        STORAGE_ENDPOINT_URL="http://minio:9000",
        STORAGE_REGION="us-east-1",
        STORAGE_ADDRESSING_STYLE="path",
        STORAGE_MAX_ATTEMPTS="4",
    )
    config = s.resolved_store
    assert (config.bucket, config.prefix) == ("gristmill", "prod/")
    assert config.s3.endpoint_url == "http://minio:9000" and config.s3.max_attempts == 4
    store = open_store(config)
    assert isinstance(store, S3Store) and store.url == "s3://gristmill/prod/"
    assert store.client.meta.endpoint_url == "http://minio:9000"
    assert store.client.meta.config.s3 == {"addressing_style": "path"}
    with pytest.raises(ValueError, match="object storage"):  # nothing silently writes locally
        _ = s.resolved_storage_dir


def test_one_store_setting_at_a_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = settings(monkeypatch, tmp_path, STORAGE_URL="s3://b", STORAGE_DIR=str(tmp_path))
    with pytest.raises(StorageConfigError, match="not both"):
        _ = s.resolved_store


@pytest.mark.parametrize(
    "url",
    [
        "s3://AKIA:secret@bucket/prefix",  # credentials come from the AWS chain only
        "gs://bucket",
        "s3:///prefix-without-bucket",
        "s3://bucket?region=x",
        "file://host/path",
        "relative/folder",
        "file:relative/folder",
    ],
)
def test_urls_that_cannot_work_are_refused(url: str) -> None:
    with pytest.raises(StorageConfigError):
        StoreConfig(url)


@pytest.mark.parametrize(
    "options",
    [
        {"endpoint_url": "http://key:secret@minio:9000"},
        {"endpoint_url": "minio:9000"},
        {"part_size": 1024},
        {"concurrency": 0},
        {"max_attempts": 0},
    ],
)
def test_client_settings_that_cannot_work_are_refused(options: dict[str, object]) -> None:
    with pytest.raises(StorageConfigError):
        S3Options(**options)  # type: ignore[arg-type]
