from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Dataset(Base):
    """An uploaded or prepared dataset. Its bytes live in the store under ``storage_key``."""

    __tablename__ = "dataset"
    __table_args__ = (
        Index("ix_dataset_tenant_id_id", "tenant_id", "id"),
        Index("ix_dataset_deleted_at", "deleted_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(20))  # validating | ready | failed
    filename: Mapped[str | None] = mapped_column(String(255), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    storage_key: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(20), default=None)
    compression: Mapped[str | None] = mapped_column(String(20), default=None)
    record_type: Mapped[str | None] = mapped_column(String(40), default=None)  # text | chat | ...
    records: Mapped[int | None] = mapped_column(BigInteger, default=None)
    text_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(default=None)
    report_key: Mapped[str | None] = mapped_column(Text, default=None)
    parent_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset.id", ondelete="SET NULL"), default=None
    )
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("job.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    """Deleted while a job read it (OpenAI's files API allows it): hidden from then on; the row
    and the bytes go when the last job reading it ends (``app.flows.deletion``)."""
