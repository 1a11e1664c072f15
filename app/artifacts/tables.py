from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Artifact(Base):
    """A stored file or directory a job produced (a tokenizer, a model): checked by sha256.

    ``uri`` is the store key of its folder; ``sha256`` hashes the folder's manifest (every file's
    path and sha256), so any change to any file changes it. ``lineage`` names what it came from.
    """

    __tablename__ = "artifact"
    __table_args__ = (Index("ix_artifact_tenant_id_category_id", "tenant_id", "category", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("job.id", ondelete="SET NULL"), index=True, default=None
    )
    category: Mapped[str] = mapped_column(String(40))  # tokenizer | model
    name: Mapped[str] = mapped_column(String(255), default="")
    uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(40))  # huggingface | peft-adapter | gguf | ...
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="ready")  # validating | ready | failed
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(default=None)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
