"""What the API shows of a key: never its secret (only once, when it is made) nor its hash."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

LABEL_PATTERN = r"^[^\u0000]*\S[^\u0000]*$"  # something besides spaces, and no NUL
MAX_GRACE_SECONDS = 24 * 3600


class KeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["api_key"] = "api_key"
    label: str | None
    prefix: str
    """The first characters of the secret, to tell keys apart."""
    admin: bool
    """An admin key may create, revoke and rotate its tenant's keys."""
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    """When an API process last checked the key (to within a minute)."""
    revoked_at: datetime | None
    """When the key stopped (or, after a rotation with a grace period, stops) working."""


class KeyCreated(KeyRead):
    key: str
    """The secret, shown this once: only its SHA-256 is kept."""


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: str | None = Field(None, min_length=1, max_length=200, pattern=LABEL_PATTERN)
    """What the key is for (``ci``, ``alice's laptop``)."""
    expires_at: datetime | None = None
    """When the key stops working; with a time zone."""
    expires_in_days: int | None = Field(None, ge=1, le=3650)
    """Or: how many days from now it stops working."""
    admin: bool = False
    """Whether the new key may manage keys itself."""

    @model_validator(mode="after")
    def _one_expiry(self) -> KeyCreate:
        if self.expires_at is not None and self.expires_in_days is not None:
            raise ValueError("give expires_at or expires_in_days, not both")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a time zone (2027-01-31T00:00:00Z)")
        return self


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(0, ge=0, le=MAX_GRACE_SECONDS)
    """How long the old secret keeps working beside the new one (0: it stops at once)."""


SECRET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class SecretCreate(BaseModel):
    """An external OpenAI-compatible endpoint a job may call: kept encrypted, never shown."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=SECRET_NAME_PATTERN, description="How jobs name it.")
    base_url: str = Field(
        pattern=r"^https?://\S+$", max_length=2000,
        description="The endpoint's base URL, e.g. https://api.openai.com/v1.",
    )  # fmt: skip
    api_key: str = Field(min_length=1, max_length=4000, description="Sent as a bearer token.")


class SecretRead(BaseModel):
    """A secret as the API shows it: its name and a masked hint, never the URL or key."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    object: Literal["secret"] = "secret"
    name: str
    hint: str
    """``…`` and the key's last four characters (long keys only)."""
    created_at: datetime
