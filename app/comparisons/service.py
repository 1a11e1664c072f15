"""Comparisons: the row (its ``compare`` job is a flow), invite raters, pair, vote, and rate.

Pairing and the ratings maths are :mod:`app.ratings`; this module keeps them fed from the
database. A rater is an invited person (``rtr_…``, by token) or one of the tenant's API keys
(``key:<key id>``); model identities appear only in results and the export.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.comparisons.schemas import ComparisonCreate
from app.comparisons.tables import Comparison, ComparisonAnswer, ComparisonVote, Rater
from app.db import get_owned
from app.errors import Conflict, InvalidInput, NotFound, Unauthorized, shown
from app.ids import new_id
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.ratings import bradley_terry, pairing
from app.ratings.bradley_terry import Vote

RATER_TOKEN_PREFIX = "gmr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def add_comparison(
    *, session: Session, comparison_id: str, tenant_id: str, body: ComparisonCreate
) -> Comparison:
    """Add a comparison (not committed): its ``compare`` job is queued with it, in one commit."""
    comparison = Comparison(
        id=comparison_id,
        tenant_id=tenant_id,
        status="generating",
        model_ids=list(body.models),
        prompts=list(body.prompts) if body.prompts is not None else None,
        dataset_id=body.dataset_id,
        settings={"max_tokens": body.max_tokens, "temperature": body.temperature,
                  "seed": body.seed},
        secret=secrets.token_hex(32),
    )  # fmt: skip
    session.add(comparison)
    return comparison


def new_comparison_id() -> str:
    return new_id("cmp")


def get_comparison(*, session: Session, tenant_id: str, comparison_id: str) -> Comparison:
    """The tenant's comparison: another tenant's looks exactly like a missing one.

    Raises:
        NotFound: no such comparison for this tenant.
    """
    return get_owned(
        session,
        Comparison,
        comparison_id,
        tenant_id=tenant_id,
        missing=NotFound(
            f"No comparison with id '{shown(comparison_id)}'.", code="comparison.not_found"
        ),
    )


def status_of(session: Session, comparison: Comparison) -> str:
    """``failed`` when its job ended without answers; the stored status otherwise."""
    if comparison.status == "generating" and comparison.job_id is not None:
        job = session.get(Job, comparison.job_id)
        if job is not None and job.status in (JobStatus.failed, JobStatus.cancelled):
            return "failed"
    return comparison.status


def view(session: Session, comparison: Comparison) -> dict[str, Any]:
    votes = session.scalar(
        select(func.count()).where(ComparisonVote.comparison_id == comparison.id)
    )
    return {
        "id": comparison.id,
        "status": status_of(session, comparison),
        "models": list(comparison.model_ids),
        "prompts": len(comparison.prompts) if comparison.prompts is not None else None,
        "dataset_id": comparison.dataset_id,
        "settings": dict(comparison.settings),
        "job_id": comparison.job_id,
        "votes": votes or 0,
        "created_at": comparison.created_at,
    }


# --- raters ---------------------------------------------------------------------------------


def add_rater(*, session: Session, comparison: Comparison, name: str | None) -> tuple[Rater, str]:
    """An invite: the token is returned once and kept only as its SHA-256."""
    token = RATER_TOKEN_PREFIX + secrets.token_urlsafe(24)
    rater = Rater(
        id=new_id("rtr"), comparison_id=comparison.id, token_hash=hash_token(token), name=name
    )
    session.add(rater)
    session.commit()
    return rater, token


def rater_by_token(*, session: Session, token: str) -> Rater:
    """Raises: Unauthorized for a token that is no invite."""
    rater = session.scalar(select(Rater).where(Rater.token_hash == hash_token(token)))
    if rater is None:
        raise Unauthorized("Unknown rater token.", code="rater.invalid_token")
    return rater


def key_rater(key_id: str) -> str:
    return f"key:{key_id}"


# --- pairing and votes ------------------------------------------------------------------------


def _answers(session: Session, comparison: Comparison) -> dict[str, dict[str, str]]:
    rows = session.scalars(
        select(ComparisonAnswer).where(ComparisonAnswer.comparison_id == comparison.id)
    )
    answers: dict[str, dict[str, str]] = {}
    for row in rows:
        answers.setdefault(str(row.prompt_index), {})[row.model_id] = row.text
    return answers


def _prompts(comparison: Comparison) -> dict[str, str]:
    return {str(i): p for i, p in enumerate(comparison.prompts or ())}


def _votes(session: Session, comparison: Comparison) -> list[ComparisonVote]:
    return list(
        session.scalars(
            select(ComparisonVote)
            .where(ComparisonVote.comparison_id == comparison.id)
            .order_by(ComparisonVote.id)
        )
    )


def _key(v: ComparisonVote) -> pairing.PairKey:
    return pairing.PairKey(str(v.prompt_index), v.model_x, v.model_y, v.round)


def _check_open(session: Session, comparison: Comparison) -> None:
    status = status_of(session, comparison)
    if status != "open":
        raise Conflict(
            f"Comparison '{comparison.id}' is {status}; rating opens once its answers are "
            "generated.",
            code="comparison.not_open",
        )


def next_for(*, session: Session, comparison: Comparison, rater: str) -> dict[str, Any]:
    """``GET …/next``'s body: a ticket, the prompt and two answers, or ``{"done": true}``."""
    _check_open(session, comparison)
    votes = _votes(session, comparison)
    mine = [_key(v) for v in votes if v.rater == rater]
    counts = Counter(_key(v) for v in votes if v.round == 0)
    answers = _answers(session, comparison)
    showing = pairing.next_pair(
        answers, rater, mine, secret=comparison.secret.encode(), counts=counts
    )
    if showing is None:
        return {"done": True}
    return showing.public(_prompts(comparison), answers)


def cast_vote(
    *,
    session: Session,
    comparison: Comparison,
    rater: str,
    ticket: str,
    choice: str,
    note: str | None,
) -> int:
    """Record a vote on the pair a ticket stands for; returns this rater's vote count.

    Raises:
        InvalidInput: a ticket that is not this rater's for this comparison.
        Conflict: this rater already voted on that pair (and round).
    """
    _check_open(session, comparison)
    showing = pairing.resolve_ticket(
        _answers(session, comparison), rater, ticket, secret=comparison.secret.encode()
    )
    if showing is None:
        raise InvalidInput("Unknown ticket; ask for the next pair.", code="vote.bad_ticket",
                           param="ticket")  # fmt: skip
    vote = pairing.vote_for(showing, rater, choice, note or None)
    session.add(
        ComparisonVote(
            comparison_id=comparison.id,
            rater=rater,
            ticket=ticket,
            prompt_index=int(showing.key.prompt_id),
            model_x=showing.key.model_x,
            model_y=showing.key.model_y,
            round=showing.key.round,
            left_model=vote.model_a,
            right_model=vote.model_b,
            verdict=vote.outcome,
            note=vote.note,
        )
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict("You already voted on this pair.", code="vote.duplicate") from None
    count = session.scalar(
        select(func.count()).where(
            ComparisonVote.comparison_id == comparison.id, ComparisonVote.rater == rater
        )
    )
    return int(count or 0)


# --- results ------------------------------------------------------------------------------


def _as_vote(v: ComparisonVote) -> Vote:
    return Vote(
        rater=v.rater,
        prompt_id=str(v.prompt_index),
        model_a=v.left_model,
        model_b=v.right_model,
        outcome=v.verdict,  # type: ignore[arg-type]
        round=v.round,
        note=v.note,
    )


def results(*, session: Session, comparison: Comparison, rounds: int = 1000) -> dict[str, Any]:
    """The ladder (Elo scale, 95% bootstrap intervals), win rates, votes per model, the
    left-position win rate and rater agreement on control repeats."""
    votes = [_as_vote(v) for v in _votes(session, comparison)]
    figures = bradley_terry.results(votes, comparison.model_ids, rounds=rounds)
    raters = len({v.rater for v in votes})
    return {"comparison_id": comparison.id, "raters": raters, **figures}


def export_jsonl(*, session: Session, comparison: Comparison) -> str:
    return pairing.export_jsonl([_as_vote(v) for v in _votes(session, comparison)])
