"""The ``GRISTMILL_STORAGE_*`` settings, declared once for every process that opens the store.

``app.settings.Settings`` inherits them (so the API, workers and the CLI read them with the rest
of their settings); the inference service, which may not import the API package, can read them
with ``StorageSettings()`` on its own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.store.config import AddressingStyle, MiB, S3Options, StoreConfig
from app.store.errors import StorageConfigError


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRISTMILL_", extra="ignore")

    storage_url: str | None = None
    """``file:///folder`` or ``s3://bucket/prefix``; default ``file://<storage_dir>``."""
    storage_dir: Path | None = None
    """The local store's folder (the older setting; the same as ``file://`` + this folder);
    default ``<data_dir>/store``."""
    storage_endpoint_url: str | None = None
    """S3: the endpoint of a service other than AWS (MinIO, R2, GCS)."""
    storage_region: str | None = None
    """S3: the region to sign for; default the AWS chain's (``AWS_REGION``, the profile)."""
    storage_addressing_style: AddressingStyle = "auto"
    """S3: ``path`` (``endpoint/bucket/key``, MinIO) or ``virtual`` (``bucket.endpoint/key``)."""
    storage_part_size_bytes: int = Field(8 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    """S3: multipart part size, and the byte range of each parallel download request."""
    storage_transfer_concurrency: int = Field(4, ge=1, le=64)
    """S3: parts one upload or download moves at once (its memory: about this + 2 parts)."""
    storage_connect_timeout_seconds: float = Field(5.0, gt=0)
    storage_read_timeout_seconds: float = Field(60.0, gt=0)
    storage_max_attempts: int = Field(3, ge=1, le=10)
    """S3: tries per request (the first included), with exponential backoff and jitter; past
    them the operation fails with ``storage.unavailable``."""
    storage_presign_seconds: int = Field(300, ge=1, le=7 * 24 * 3600)
    """S3: how long a presigned download URL works."""
    storage_cache_dir: Path | None = None
    """Workers' and the inference service's local copies of stored objects; default
    ``<data_dir>/store-cache``."""
    storage_cache_max_bytes: int = Field(50 * 1024**3, gt=0)
    """The cache's size; least recently used objects not in use are evicted beyond it."""

    def store_config(self, *, default_root: Path) -> StoreConfig:
        """The store these settings name; ``default_root`` is the local folder when none is set."""
        if self.storage_url and self.storage_dir:
            raise StorageConfigError("set GRISTMILL_STORAGE_URL or GRISTMILL_STORAGE_DIR, not both")
        url = self.storage_url or (self.storage_dir or default_root).resolve().as_uri()
        options = S3Options(
            endpoint_url=self.storage_endpoint_url,
            region=self.storage_region,
            addressing_style=self.storage_addressing_style,
            part_size=self.storage_part_size_bytes,
            concurrency=self.storage_transfer_concurrency,
            connect_timeout_s=self.storage_connect_timeout_seconds,
            read_timeout_s=self.storage_read_timeout_seconds,
            max_attempts=self.storage_max_attempts,
            presign_expires_s=self.storage_presign_seconds,
        )
        return StoreConfig(url, options)

    def cache_dir(self, *, default: Path) -> Path:
        return (self.storage_cache_dir or default).resolve()
