"""What can go wrong in the store, as a few typed errors with stable codes.

The store sits under the API, the job layer, the pipeline and the inference service, so its errors
do not derive from ``app.errors`` (the inference service may not import the API package). The
API maps :class:`StorageUnavailable` to 503 with ``Retry-After``; the job layer treats it as
retryable (another attempt, on its attempt budget).
"""

from __future__ import annotations


class StorageError(Exception):
    """A store operation failed for a reason another try would not fix (bad key, refused)."""

    code = "storage.error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class StorageUnavailable(StorageError):
    """The storage endpoint could not be reached, timed out or answered 5xx after the client's
    bounded retries. Retryable: nothing was stored (a write in flight was aborted)."""

    code = "storage.unavailable"
    retry_after_s = 5


class ObjectNotFound(StorageError, FileNotFoundError):
    """No object under the key (a subclass of ``FileNotFoundError``, which local callers catch)."""

    code = "storage.not_found"


class FolderIncomplete(ObjectNotFound):
    """A folder prefix without its manifest: still being written, or abandoned half way."""

    code = "storage.incomplete"


class IntegrityError(StorageError):
    """Bytes read back do not match the size or sha256 they were recorded with."""

    code = "storage.integrity"


class InvalidKey(StorageError, ValueError):
    """A key that is not a clean relative path (``..``, a leading slash, an empty part)."""

    code = "storage.invalid_key"


class StorageConfigError(StorageError, ValueError):
    """The storage settings cannot work (an unknown URL scheme, credentials in a URL, no
    credentials found for S3)."""

    code = "storage.config"


def is_retryable(exc: BaseException) -> bool:
    """Whether a job that failed on ``exc`` should get another attempt (the job layer's test)."""
    return isinstance(exc, StorageUnavailable)
