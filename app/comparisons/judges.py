"""Judges of a comparison: what a ``judge`` job reads (the pairs with their answers) and what it
hands back (:class:`JudgeVotes`, a rater row marked as a judge and one vote per pair).

A judge's vote goes into the same ladder as people's. It does not move the pairs' counters,
which order the pairs shown to people (a judge should not make a pair look already rated).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.comparisons.tables import (
    Comparison,
    ComparisonAnswer,
    ComparisonPair,
    ComparisonVote,
    Rater,
)
from app.ids import new_id
from app.storage import Store

JUDGE_TICKET = "judge"
"""The ticket a judge's votes carry (they are not cast through a ticket)."""


@dataclass(frozen=True)
class PairToJudge:
    prompt_index: int
    model_x: str
    model_y: str
    question: str
    answer_x: str
    answer_y: str


def pairs_to_judge(*, session: Session, comparison: Comparison, limit: int) -> list[PairToJudge]:
    """The comparison's first ``limit`` pairs in prompt order, with the question and answers."""
    prompts = comparison.prompts or []
    rows = session.scalars(
        select(ComparisonPair)
        .where(ComparisonPair.comparison_id == comparison.id)
        .order_by(ComparisonPair.prompt_index, ComparisonPair.model_x, ComparisonPair.model_y)
        .limit(limit)
    ).all()
    if not rows:
        return []
    last = rows[-1].prompt_index
    answers = {
        (a.prompt_index, a.model_id): a.text
        for a in session.scalars(
            select(ComparisonAnswer).where(
                ComparisonAnswer.comparison_id == comparison.id,
                ComparisonAnswer.prompt_index <= last,
            )
        )
    }
    return [
        PairToJudge(
            p.prompt_index, p.model_x, p.model_y, prompts[p.prompt_index],
            answers[(p.prompt_index, p.model_x)], answers[(p.prompt_index, p.model_y)],
        )
        for p in rows
    ]  # fmt: skip


@dataclass(frozen=True)
class JudgeVote:
    prompt_index: int
    model_x: str
    model_y: str
    winner: str
    """``model_x``, ``model_y`` or ``tie``."""


@dataclass(frozen=True)
class JudgeVotes:
    """A ``judge`` job's output: a judge rater and its votes, recorded with the job's success."""

    comparison_id: str
    name: str
    """``judge:<model id>`` or ``judge:<secret>/<endpoint model>``."""
    details: dict[str, Any]
    votes: Sequence[JudgeVote]

    def place(self, *, store: Store, tenant_id: str, job_id: str | None) -> JudgeVotes:
        """Votes are rows only: placed as they are."""
        return self

    def record(self, *, session: Session) -> None:
        """The rater row, its votes (each pair once, x shown on the left) and the comparison's
        vote counter, which also makes the cached results stale."""
        rater = Rater(
            id=new_id("rtr"),
            comparison_id=self.comparison_id,
            # No token opens a judge: the hash of a secret nobody keeps.
            token_hash=hashlib.sha256(secrets.token_bytes(32)).hexdigest(),
            name=self.name[:255],
            judge=True,
            details=dict(self.details),
        )
        session.add(rater)
        for v in self.votes:
            verdict = {v.model_x: "a", v.model_y: "b"}.get(v.winner, "tie")
            session.add(
                ComparisonVote(
                    comparison_id=self.comparison_id, rater=rater.id, ticket=JUDGE_TICKET,
                    prompt_index=v.prompt_index, model_x=v.model_x, model_y=v.model_y, round=0,
                    left_model=v.model_x, right_model=v.model_y, verdict=verdict,
                )
            )  # fmt: skip
        session.execute(
            update(Comparison)
            .where(Comparison.id == self.comparison_id)
            .values(votes=Comparison.votes + len(self.votes))
            .execution_options(synchronize_session=False)
        )

    def discard(self, *, store: Store) -> None:
        """Nothing was placed."""


def judge_raters(*, session: Session, comparison_id: str) -> list[Rater]:
    return list(
        session.scalars(
            select(Rater)
            .where(Rater.comparison_id == comparison_id, Rater.judge.is_(True))
            .order_by(Rater.created_at, Rater.id)
        )
    )
