"""Per-key rate limits (the ``limits`` library), throttles on failed key and rater-token lookups
per client address, and per-tenant caps on concurrent streams.

Rate-limit counters live in Redis in production, so every API process counts against the same
budget; the embedded profile (one process) keeps them in memory. Stream slots are per process:
they protect this process's event loop, threads and database pool from one tenant's slow
uploads and downloads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from app.errors import RateLimited


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the window that decided resets

    def headers(self) -> list[tuple[bytes, bytes]]:
        """IETF draft ``RateLimit-*`` fields, plus ``Retry-After`` when refused."""
        fields = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_s).encode()),
        ]
        if not self.allowed:
            fields.append((b"retry-after", str(max(1, self.reset_s)).encode()))
        return fields

    def error(self, subject: str = "this API key") -> RateLimited:
        return RateLimited(
            f"Too many requests for {subject} (limit {self.limit} per window); "
            f"retry in {max(1, self.reset_s)} s.",
            retry_after=max(1, self.reset_s),
        )


class KeyRateLimiter:
    """``hit(key_id)`` counts one request against every configured window of that key.

    A moving window (each request expires on its own, one period after it was made): with fixed
    windows a key could spend its whole budget at the end of one window and again at the start of
    the next, twice the limit in a moment."""

    def __init__(self, spec: str, storage_url: str) -> None:
        self.items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_url))
        self.needs_thread = not storage_url.startswith("memory")

    @property
    def enabled(self) -> bool:
        return bool(self.items)

    def hit(self, key_id: str) -> RateDecision:
        """The decision of the tightest window (the one with the fewest requests left)."""
        now = time.time()
        tightest: RateDecision | None = None
        for item in self.items:
            allowed = self.limiter.hit(item, "key", key_id)
            stats = self.limiter.get_window_stats(item, "key", key_id)
            decision = RateDecision(
                allowed=allowed,
                limit=item.amount,
                remaining=max(0, stats.remaining),
                reset_s=min(item.get_expiry(), max(0, math.ceil(stats.reset_time - now))),
            )
            if not allowed:
                return decision
            if tightest is None or decision.remaining < tightest.remaining:
                tightest = decision
        assert tightest is not None
        return tightest


class FailureThrottle:
    """Failed credential lookups (API keys, rater tokens) per client address: once an address
    has used up ``spec`` over the moving window, its lookups are refused (429) without touching
    the database until old failures age out, so guessing is slow; lookups that succeed cost
    nothing here. ``what`` names the credential in the refusal's code, ``label`` in its text."""

    def __init__(
        self, spec: str, storage_url: str, *, what: str = "rater_tokens", label: str = ""
    ) -> None:
        self.items: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_url))
        self.what, self.label = what, label or what.replace("_", " ")

    def check(self, address: str) -> None:
        """Raises: RateLimited while ``address`` has no failures left."""
        for item in self.items:
            if not self.limiter.test(item, self.what, "failures", address):
                stats = self.limiter.get_window_stats(item, self.what, "failures", address)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"Too many unknown {self.label} from this address; retry in {retry} s.",
                    retry_after=retry,
                    code=f"rate_limited.{self.what}",
                )

    def failed(self, address: str) -> None:
        for item in self.items:
            self.limiter.hit(item, self.what, "failures", address)


class StreamSlots:
    """At most ``limit`` uploads or downloads per tenant in flight in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active: dict[str, int] = {}

    def try_acquire(self, tenant_id: str) -> bool:
        current = self.active.get(tenant_id, 0)
        if current >= self.limit:
            return False
        self.active[tenant_id] = current + 1
        return True

    def release(self, tenant_id: str) -> None:
        left = self.active.get(tenant_id, 1) - 1
        if left > 0:
            self.active[tenant_id] = left
        else:
            self.active.pop(tenant_id, None)
