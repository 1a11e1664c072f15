"""The keys one API process has checked, so a request does not cost a database read.

The cache is per process. An entry lives ``auth_cache_seconds`` (``GRISTMILL_AUTH_CACHE_SECONDS``,
default 5 s), never past the moment the key stops working on its own (its expiry, a rotation's
grace period): so a key revoked in another process is refused here within that window, and a
revocation through this process's API drops the key from its cache at once.
"""

from __future__ import annotations

import time
from datetime import datetime

from app.db import utcnow
from app.tenants.service import Caller

AUTH_CACHE_ENTRIES = 10_000


class AuthCache:
    def __init__(self, seconds: float, *, entries: int = AUTH_CACHE_ENTRIES) -> None:
        self.seconds, self.entries = seconds, entries
        self._callers: dict[str, tuple[Caller, float]] = {}

    def get(self, digest: str) -> Caller | None:
        """The caller behind the key with this SHA-256, if it was checked recently enough."""
        cached = self._callers.get(digest)
        if cached is None or cached[1] <= time.monotonic():
            return None
        return cached[0]

    def put(self, digest: str, caller: Caller, *, now: datetime | None = None) -> None:
        ttl = self.seconds
        if caller.valid_until is not None:
            ttl = min(ttl, (caller.valid_until - (now or utcnow())).total_seconds())
        if ttl <= 0:
            return
        if len(self._callers) >= self.entries:
            self._callers.clear()
        self._callers[digest] = (caller, time.monotonic() + ttl)

    def drop(self, digest: str) -> None:
        """Forget a key (revoked or rotated through this process): the next request checks it."""
        self._callers.pop(digest, None)
