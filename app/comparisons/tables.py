from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Comparison(Base):
    """Two or more models answering the same prompts, for raters who do not know which is which.

    ``status``: generating (its ``compare`` job runs) → open (rating) → closed (no more votes;
    results stay) | failed. ``secret`` seals the tickets raters get (:mod:`app.ratings.pairing`).
    """

    __tablename__ = "comparison"
    __table_args__ = (Index("ix_comparison_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenant.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20))
    model_ids: Mapped[list[str]] = mapped_column(JSON)
    prompts: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    """The prompts (known once generated when they come from a dataset)."""
    dataset_id: Mapped[str | None] = mapped_column(String(40), default=None)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("job.id", ondelete="SET NULL"), default=None
    )
    secret: Mapped[str] = mapped_column(String(64))
    votes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Votes so far, counted as each is cast (in its transaction): no count over all votes."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ComparisonAnswer(Base):
    __tablename__ = "comparison_answer"
    __table_args__ = (UniqueConstraint("comparison_id", "prompt_index", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    comparison_id: Mapped[str] = mapped_column(
        ForeignKey("comparison.id", ondelete="CASCADE"), index=True
    )
    prompt_index: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(40))
    text: Mapped[str] = mapped_column(Text)


class ComparisonPair(Base):
    """A pair raters can be shown, with its round-0 vote count kept as votes are cast: the next
    pair is the first row of an index, not a tally over every vote.

    ``shuffle`` is a random number fixed at creation that orders pairs with the same count.
    """

    __tablename__ = "comparison_pair"
    __table_args__ = (
        UniqueConstraint("comparison_id", "prompt_index", "model_x", "model_y"),
        Index("ix_comparison_pair_next", "comparison_id", "votes", "shuffle"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    comparison_id: Mapped[str] = mapped_column(ForeignKey("comparison.id", ondelete="CASCADE"))
    prompt_index: Mapped[int] = mapped_column(Integer)
    model_x: Mapped[str] = mapped_column(String(40))
    model_y: Mapped[str] = mapped_column(String(40))
    votes: Mapped[int] = mapped_column(Integer, default=0)
    shuffle: Mapped[int] = mapped_column(Integer)


class Rater(Base):
    """A person invited by link; the link's token is kept only as its SHA-256. A revoked
    invite keeps its row (its votes name it) and its token is refused.

    A ``judge`` rater is a ``judge`` job's model or endpoint (named ``judge:<model>``; no token
    opens it): ``details`` holds its figures (position bias, pairs, the job's id)."""

    __tablename__ = "comparison_rater"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    comparison_id: Mapped[str] = mapped_column(
        ForeignKey("comparison.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    judge: Mapped[bool] = mapped_column(default=False, server_default=false())
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class ComparisonVote(Base):
    """One verdict. ``rater`` is an invited rater's id or ``key:<api key id>``; a pair is
    (prompt, model_x < model_y) and ``round`` 1 marks a control repeat, so a rater votes once
    per pair and round."""

    __tablename__ = "comparison_vote"
    __table_args__ = (
        UniqueConstraint(
            "comparison_id", "rater", "prompt_index", "model_x", "model_y", "round",
            name="uq_comparison_vote_pair",
        ),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    comparison_id: Mapped[str] = mapped_column(
        ForeignKey("comparison.id", ondelete="CASCADE"), index=True
    )
    rater: Mapped[str] = mapped_column(String(60))
    ticket: Mapped[str] = mapped_column(String(64))
    prompt_index: Mapped[int] = mapped_column(Integer)
    model_x: Mapped[str] = mapped_column(String(40))
    model_y: Mapped[str] = mapped_column(String(40))
    round: Mapped[int] = mapped_column(Integer, default=0)
    left_model: Mapped[str] = mapped_column(String(40))
    right_model: Mapped[str] = mapped_column(String(40))
    verdict: Mapped[str] = mapped_column(String(10))
    note: Mapped[str | None] = mapped_column(String(1000), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ComparisonResults(Base):
    """The figures (and chart) as last computed, for ``votes`` votes: a bootstrap over thousands
    of votes takes seconds, so it runs once per change of the votes, shared by every API process.
    Valid while ``votes`` equals :attr:`Comparison.votes` (votes are only ever added)."""

    __tablename__ = "comparison_results"

    comparison_id: Mapped[str] = mapped_column(
        ForeignKey("comparison.id", ondelete="CASCADE"), primary_key=True
    )
    votes: Mapped[int] = mapped_column(Integer)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    chart: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
