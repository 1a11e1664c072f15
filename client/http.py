"""A typed, synchronous client for the Gristmill HTTP API (the CLI's only way to the server).

It speaks HTTP and nothing else, so it works against a remote server and installs without the
worker stack. Requests the server may refuse for a moment (429, 503) are retried with
exponential backoff that honours ``Retry-After``; reads and idempotent writes are also retried
when the connection drops. Lists are followed page by page with the ``after`` cursor. Downloads
stream in chunks with a progress callback, are verified against the sha256 the server recorded
and land in place only when they match.

This module is the transport: the request loop, paging and verified downloads. What the API
offers lives in ``client.resources``, one module per collection, reached as attributes:
``client.jobs``, ``client.datasets``, ``client.models``, ``client.tokenizers``,
``client.comparisons``.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from client.resources.artifacts import Artifacts
from client.resources.comparisons import Comparisons
from client.resources.datasets import Datasets
from client.resources.jobs import Jobs
from client.resources.keys import Keys
from client.resources.secrets import Secrets
from client.transfers import CHUNK, ChecksumMismatch, ProgressFn, ProgressReader

RETRY_STATUSES = frozenset({429, 502, 503, 504})


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
        self.jobs = Jobs(self)
        self.datasets = Datasets(self)
        self.models = Artifacts(self, "models")
        self.tokenizers = Artifacts(self, "tokenizers")
        self.keys = Keys(self)
        self.comparisons = Comparisons(self)
        self.secrets = Secrets(self)

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

    def paginate(
        self, path: str, *, limit: int = 100, after: str | int | None = None, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Every item of a list endpoint after the id ``after``, following ``after=<last id>``
        while ``has_more``."""
        while True:
            page = self.get(path, limit=limit, after=after, **params)
            yield from page["data"]
            if not page["has_more"] or not page["data"]:
                return
            after = page["data"][-1]["id"]

    # --- streamed upload and download ------------------------------------------------------

    def upload(
        self,
        path: str,
        file: Path,
        *,
        data: Mapping[str, str] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> dict[str, Any]:
        """POST ``file`` as a multipart upload to ``path``, hashing it on the way out (one read
        of the file), and check the sha256 the server recorded against it. A mismatch deletes
        what was created (``path/<id>``) and raises :class:`ChecksumMismatch`.

        Only 429/503 answers are retried: a connection dropped mid-upload may have created the
        object already, and a blind retry would make a second one.
        """
        with file.open("rb") as raw:
            reader = ProgressReader(raw, on_progress)
            response = self.request(
                "POST",
                path,
                data=dict(data or {}),
                files={"file": (file.name, reader, "application/octet-stream")},
                retry_on_disconnect=False,
                rewind=reader.rewind,
                timeout=httpx.Timeout(self.timeout, write=None),
            )
        created = dict(response.json())
        if created["sha256"] != reader.sha256.hexdigest():
            self.request("DELETE", f"{path}/{created['id']}")
            raise ChecksumMismatch(
                f"the server stored sha256 {created['sha256']} for {file.name}, which hashed to "
                f"{reader.sha256.hexdigest()} here; the upload was deleted"
            )
        return created

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
