"""A typed, synchronous client for the Gristmill HTTP API (the CLI's only way to the server).

It speaks HTTP and nothing else, so it works against a remote server and installs without the
worker stack. Requests the server may refuse for a moment (429, 503) are retried with
exponential backoff that honours ``Retry-After``; reads and idempotent writes are also retried
when the connection drops. Lists are followed page by page with the ``after`` cursor. Uploads
and downloads stream in chunks with a progress callback; downloads are verified against the
sha256 the server recorded and land in place only when they match.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

ProgressFn = Callable[[int], None]
"""Called with the number of bytes just sent or received."""

RETRY_STATUSES = frozenset({429, 502, 503, 504})
CHUNK = 1024 * 1024
ARTIFACT_KINDS = {"model": "models", "tokenizer": "tokenizers"}


class ApiError(Exception):
    """The server answered with an error envelope (or something that is not one)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, param: str | None = None
    ):
        super().__init__(f"{status} {code or 'error'}: {message}")
        self.status, self.message, self.code, self.param = status, message, code, param

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()["error"]
            return cls(response.status_code, body["message"], body.get("code"), body.get("param"))
        except (ValueError, KeyError, TypeError):
            text = response.text[:200] or response.reason_phrase
            return cls(response.status_code, text)


class _RetryableStatus(Exception):
    def __init__(self, error: ApiError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


class ChecksumMismatch(Exception):
    """A downloaded file's sha256 is not the one the server recorded; nothing was kept."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. Attempt ``n`` waits ``base_s * 2**n`` with jitter,
    or the server's ``Retry-After`` when that is longer; never more than ``max_s``."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = min(self.max_s, self.base_s * 2.0**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            return min(self.max_s, max(retry_after, backoff))
        return backoff


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: either a number of seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class GristmillClient:
    """One API key on one server. ``transport`` and ``sleep`` are seams for tests."""

    base_url: str
    api_key: str | None
    timeout: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    transport: httpx.BaseTransport | None = None
    sleep: Callable[[float], None] = time.sleep
    on_retry: Callable[[str, float], None] | None = None
    """Told why and for how long the client waits before a retry (the CLI prints it)."""

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.http = httpx.Client(
            base_url=self.base_url.rstrip("/") + "/v1",
            headers={**headers, "User-Agent": "gristmill-cli"},
            timeout=self.timeout,
            transport=self.transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> GristmillClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the request loop --------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        retry_on_disconnect: bool = True,
        rewind: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request, retrying 429/502/503/504 (and, when ``retry_on_disconnect``, a
        dropped connection); raise :class:`ApiError` for any other error status."""
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            if rewind is not None:
                rewind()
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last or not retry_on_disconnect:
                    raise
                self._wait(f"{type(exc).__name__}: {exc}", self.retry.delay(attempt))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                after = parse_retry_after(response.headers.get("Retry-After"))
                self._wait(f"HTTP {response.status_code}", self.retry.delay(attempt, after))
                continue
            if response.status_code >= 400:
                raise ApiError.from_response(response)
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait(self, reason: str, seconds: float) -> None:
        if self.on_retry is not None:
            self.on_retry(reason, seconds)
        self.sleep(seconds)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        clean = {k: v for k, v in params.items() if v is not None}
        return dict(self.request("GET", path, params=clean).json())

    def paginate(self, path: str, *, limit: int = 100, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint, following ``after=<last id>`` while ``has_more``."""
        after: str | None = None
        while True:
            page = self.get(path, limit=limit, after=after, **params)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            after = page["data"][-1]["id"]

    # --- jobs ---------------------------------------------------------------------------------

    def submit_job(
        self, job_type: str, params: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST a job. An Idempotency-Key makes the retried POST return the same job, so a
        dropped connection never submits twice."""
        key = idempotency_key or f"cli-{uuid.uuid4()}"
        response = self.request(
            "POST",
            "/jobs",
            json={"type": job_type, "params": dict(params)},
            headers={"Idempotency-Key": key},
        )
        return dict(response.json())

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/jobs/{job_id}")

    def list_jobs(
        self, *, job_type: str | None = None, status: str | None = None, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        return self.paginate("/jobs", limit=limit, type=job_type, status=status)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/jobs/{job_id}/cancel").json())

    def job_events(self, job_id: str, *, after: int | None = None) -> Iterator[dict[str, Any]]:
        """Events after the id ``after``, oldest first (events are paged by their integer id)."""
        while True:
            page = self.get(f"/jobs/{job_id}/events", after=after, limit=1000)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            after = page["data"][-1]["id"]

    def job_metrics(
        self,
        job_id: str,
        *,
        name: str | None = None,
        after_step: int | None = None,
        limit: int = 5000,
    ) -> Iterator[dict[str, Any]]:
        """Metric points ordered by (step, name). Pages are cut by step: a page that ends in
        the middle of a step is trimmed to whole steps and the next page starts at that step."""
        while True:
            page = self.get(
                f"/jobs/{job_id}/metrics", name=name, after_step=after_step, limit=limit
            )
            rows: list[dict[str, Any]] = page["data"]
            if not page["has_more"] or not rows:
                yield from rows
                return
            last_step = rows[-1]["step"]
            # A page holding a single step cannot be split; take it whole.
            whole = [r for r in rows if r["step"] != last_step] or rows
            yield from whole
            after_step = whole[-1]["step"]

    # --- datasets -----------------------------------------------------------------------------

    def upload_dataset(
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
            response = self.request(
                "POST",
                "/datasets",
                data=data,
                files={"file": (path.name, reader, "application/octet-stream")},
                retry_on_disconnect=False,
                rewind=reader.rewind,
                timeout=httpx.Timeout(self.timeout, write=None),
            )
        dataset = dict(response.json())
        if dataset["sha256"] != reader.sha256.hexdigest():
            self.request("DELETE", f"/datasets/{dataset['id']}")
            raise ChecksumMismatch(
                f"the server stored sha256 {dataset['sha256']} for {path.name}, which hashed to "
                f"{reader.sha256.hexdigest()} here; the upload was deleted"
            )
        return dataset

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self.get(f"/datasets/{dataset_id}")

    def list_datasets(self, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.paginate("/datasets", limit=limit)

    def download_dataset(
        self, dataset_id: str, folder: Path, *, on_progress: ProgressFn | None = None
    ) -> Path:
        dataset = self.get_dataset(dataset_id)
        target = folder / (dataset["filename"] or f"{dataset_id}.bin")
        self.download(
            f"/datasets/{dataset_id}/content",
            target,
            sha256=dataset["sha256"],
            on_progress=on_progress,
        )
        return target

    # --- tokenizers and models ----------------------------------------------------------------

    def get_artifact(self, kind: str, artifact_id: str) -> dict[str, Any]:
        return self.get(f"/{ARTIFACT_KINDS[kind]}/{artifact_id}")

    def list_artifacts(self, kind: str, *, limit: int = 100) -> Iterator[dict[str, Any]]:
        return self.paginate(f"/{ARTIFACT_KINDS[kind]}", limit=limit)

    def artifact_files(self, kind: str, artifact_id: str) -> list[dict[str, Any]]:
        """The manifest: every file's path, size and sha256, checked against the artifact's own
        sha256 (the hash of its manifest), so a file list cannot be swapped either."""
        artifact = self.get_artifact(kind, artifact_id)
        files = self.get(f"/{ARTIFACT_KINDS[kind]}/{artifact_id}/files")["data"]
        entries = [{k: f[k] for k in ("path", "size_bytes", "sha256")} for f in files]
        text = json.dumps(entries, indent=1, sort_keys=True)
        if hashlib.sha256(text.encode()).hexdigest() != artifact["sha256"]:
            raise ChecksumMismatch(f"the file list of {artifact_id} does not match its sha256")
        return entries

    def download_artifact(
        self,
        kind: str,
        artifact_id: str,
        folder: Path,
        *,
        files: list[dict[str, Any]] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Path:
        """Download every file into ``folder/<id>/``, each verified against the manifest
        (``files``, from :meth:`artifact_files`, fetched here when not given).

        Files already there with the right sha256 are kept, so an interrupted download resumes.
        """
        root = folder / artifact_id
        for entry in files if files is not None else self.artifact_files(kind, artifact_id):
            target = root / entry["path"]
            if not target.resolve().is_relative_to(root.resolve()):
                raise ChecksumMismatch(f"refusing a path outside the folder: {entry['path']}")
            if target.is_file() and sha256_file(target) == entry["sha256"]:
                if on_progress is not None:
                    on_progress(entry["size_bytes"])
                continue
            path = f"/{ARTIFACT_KINDS[kind]}/{artifact_id}/files/{entry['path']}"
            self.download(path, target, sha256=entry["sha256"], on_progress=on_progress)
        return root

    # --- streamed download --------------------------------------------------------------------

    def download(
        self, path: str, target: Path, *, sha256: str, on_progress: ProgressFn | None = None
    ) -> None:
        """Stream ``path`` into ``target.part``, hashing on the way; rename it into place only
        if the sha256 matches. A dropped connection restarts the file (with backoff)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = ""
        for attempt in range(self.retry.attempts):
            counter = [0]
            try:
                digest = self._stream_to(path, partial, on_progress, counter)
            except (httpx.TransportError, _RetryableStatus) as exc:
                if on_progress is not None and counter[0]:
                    on_progress(-counter[0])  # the bar goes back: the file starts over
                if attempt == self.retry.attempts - 1:
                    partial.unlink(missing_ok=True)
                    if isinstance(exc, _RetryableStatus):
                        raise exc.error from None
                    raise
                after = exc.retry_after if isinstance(exc, _RetryableStatus) else None
                self._wait(f"download interrupted: {exc}", self.retry.delay(attempt, after))
                continue
            break
        if digest != sha256:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{target.name}: sha256 {digest}, expected {sha256}")
        os.replace(partial, target)

    def _stream_to(
        self, path: str, partial: Path, on_progress: ProgressFn | None, counter: list[int]
    ) -> str:
        digest = hashlib.sha256()
        with self.http.stream("GET", path) as response:
            if response.status_code >= 400:
                response.read()
                error = ApiError.from_response(response)
                if response.status_code in RETRY_STATUSES:
                    after = parse_retry_after(response.headers.get("Retry-After"))
                    raise _RetryableStatus(error, after)
                raise error
            with partial.open("wb") as out:
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    counter[0] += len(chunk)
                    if on_progress is not None:
                        on_progress(len(chunk))
        return digest.hexdigest()


class ProgressReader(io.RawIOBase):
    """A binary file that hashes and reports each chunk read from it: httpx's multipart encoder
    reads the file in chunks as it sends them, so this counts bytes as they go out. ``fileno``
    lets httpx size the body up front (a Content-Length, not chunked encoding)."""

    def __init__(self, raw: IO[bytes], on_progress: ProgressFn | None) -> None:
        super().__init__()
        self.raw, self.on_progress, self.sent = raw, on_progress, 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.raw.read(size)
        self.sent += len(chunk)
        self.sha256.update(chunk)
        if self.on_progress is not None and chunk:
            self.on_progress(len(chunk))
        return chunk

    def fileno(self) -> int:
        return self.raw.fileno()

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) == (0, os.SEEK_SET):
            self.rewind()
            return 0
        raise io.UnsupportedOperation("an upload is read from its start only")

    def tell(self) -> int:
        return self.sent

    def rewind(self) -> None:
        """Back to the start (httpx does it before sending; we before a retry): the hash starts
        over and the progress bar goes back to zero."""
        if self.sent and self.on_progress is not None:
            self.on_progress(-self.sent)
        self.sent, self.sha256 = 0, hashlib.sha256()
        self.raw.seek(0)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
