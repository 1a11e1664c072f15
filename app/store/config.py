"""Which store to open: a URL (``file:///…`` or ``s3://bucket/prefix``) and the S3 client's knobs.

Stdlib only, so every process can build one. Credentials are never part of it: the S3 backend
takes them from the standard AWS chain (environment, shared config and credentials files,
SSO, web identity, container and instance roles), which keeps them out of settings files, the
database and logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from app.store.base import Store
from app.store.errors import StorageConfigError

MiB = 1024 * 1024
AddressingStyle = Literal["auto", "virtual", "path"]


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None
    """None for AWS; ``http://minio:9000``, ``https://<account>.r2.cloudflarestorage.com``,
    ``https://storage.googleapis.com`` for the others."""
    region: str | None = None
    """None: the AWS chain's (``AWS_REGION``, the profile); R2 and GCS take ``auto``."""
    addressing_style: AddressingStyle = "auto"
    """``path`` (``endpoint/bucket/key``) for MinIO; ``virtual`` (``bucket.endpoint/key``)."""
    part_size: int = 8 * MiB
    """Multipart part size, and the byte range of each concurrent download request."""
    concurrency: int = 4
    """Parts one transfer sends or fetches at once (memory: about ``part_size`` × this + 2)."""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 3
    """Tries per request, the first included, with exponential backoff and jitter (botocore's
    ``standard`` retry mode, whose retry quota stops retrying when most requests fail)."""
    presign_expires_s: int = 300

    def __post_init__(self) -> None:
        if not 5 * MiB <= self.part_size <= 5 * 1024 * MiB:
            raise StorageConfigError("the S3 part size must be between 5 MiB and 5 GiB")
        if not 1 <= self.concurrency <= 64:
            raise StorageConfigError("the S3 transfer concurrency must be between 1 and 64")
        if self.max_attempts < 1:
            raise StorageConfigError("the S3 client needs at least one attempt per request")
        if self.endpoint_url is not None:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise StorageConfigError("the S3 endpoint must be an http:// or https:// URL")
            if parts.username or parts.password:
                raise StorageConfigError(
                    "credentials do not belong in the endpoint URL: use the AWS chain"
                )


@dataclass(frozen=True)
class StoreConfig:
    url: str
    """``file:///absolute/folder`` or ``s3://bucket`` or ``s3://bucket/prefix``."""
    s3: S3Options = field(default_factory=S3Options)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("file", "s3"):
            raise StorageConfigError(
                f"unknown storage URL scheme {parts.scheme!r}: file:// or s3://"
            )
        if parts.username or parts.password or "@" in parts.netloc:
            raise StorageConfigError(
                "credentials do not belong in the storage URL: use the AWS chain"
            )
        if parts.query or parts.fragment:
            raise StorageConfigError("the storage URL takes no query or fragment")
        if parts.scheme == "s3" and not parts.netloc:
            raise StorageConfigError("an s3:// storage URL names a bucket: s3://bucket/prefix")
        local = parts.netloc in ("", "localhost") and parts.path.startswith("/")
        if parts.scheme == "file" and not local:
            raise StorageConfigError("a file:// storage URL names a local folder: file:///path")

    @property
    def is_local(self) -> bool:
        return self.url.startswith("file:")

    @property
    def local_root(self) -> Path:
        return Path(unquote(urlsplit(self.url).path))

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        """The key prefix inside the bucket, ``""`` or ending in ``/``."""
        path = urlsplit(self.url).path.strip("/")
        return f"{path}/" if path else ""


def open_store(config: StoreConfig) -> Store:
    """The store ``config`` names. boto3 is imported only for S3."""
    if config.is_local:
        from app.store.local import LocalStore

        return LocalStore(config.local_root)
    from app.store.s3 import S3Store

    return S3Store(config.bucket, config.prefix, config.s3)
