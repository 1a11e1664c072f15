"""Comparisons: the row (its ``compare`` job is a flow), invite raters, pair, vote, and rate.

Pairing and the ratings maths are :mod:`app.ratings`; this module keeps them fed from the
database. A rater is an invited person (``rtr_…``, by token) or one of the tenant's API keys
(``key:<key id>``); model identities appear only in results and the export.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from typing import Any

from sqlalchemy import ColumnElement, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app.comparisons.schemas import ComparisonCreate
from app.comparisons.tables import (
    Comparison,
    ComparisonAnswer,
    ComparisonPair,
    ComparisonVote,
    Rater,
)
from app.db import get_owned, utcnow
from app.errors import Conflict, InvalidInput, NotFound, Unauthorized, shown
from app.ids import new_id
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.ratings import pairing

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


def comparison_of_job(*, session: Session, job_id: str) -> Comparison:
    """The comparison a ``compare`` job generates answers for."""
    return session.scalars(select(Comparison).where(Comparison.job_id == job_id)).one()


def status_of(session: Session, comparison: Comparison) -> str:
    """``failed`` when its job ended without answers; the stored status otherwise."""
    if comparison.status == "generating" and comparison.job_id is not None:
        job = session.get(Job, comparison.job_id)
        if job is not None and job.status in (JobStatus.failed, JobStatus.cancelled):
            return "failed"
    return comparison.status


def view(session: Session, comparison: Comparison) -> dict[str, Any]:
    return {
        "id": comparison.id,
        "status": status_of(session, comparison),
        "models": list(comparison.model_ids),
        "prompts": len(comparison.prompts) if comparison.prompts is not None else None,
        "dataset_id": comparison.dataset_id,
        "settings": dict(comparison.settings),
        "job_id": comparison.job_id,
        "votes": comparison.votes,
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
    """Raises: Unauthorized for a token that is no invite, or a revoked one."""
    rater = session.scalar(select(Rater).where(Rater.token_hash == hash_token(token)))
    if rater is None:
        raise Unauthorized("Unknown rater token.", code="rater.invalid_token")
    if rater.revoked_at is not None:
        raise Unauthorized("This invite link was revoked.", code="rater.revoked")
    return rater


def rater_comparison(*, session: Session, token: str) -> str:
    """The comparison an invite token is for (the edge gate's check, one index lookup).

    Raises:
        Unauthorized: for a token that is no invite, or a revoked one.
    """
    return rater_by_token(session=session, token=token).comparison_id


def revoke_rater(*, session: Session, comparison: Comparison, rater_id: str) -> None:
    """Refuse the invite's token from now on (again: no change); its votes stay counted.

    Raises:
        NotFound: no such invite for this comparison.
    """
    rater = session.get(Rater, rater_id)
    if rater is None or rater.comparison_id != comparison.id:
        raise NotFound(f"No rater with id '{shown(rater_id)}'.", code="rater.not_found")
    if rater.revoked_at is None:
        rater.revoked_at = utcnow()
        session.commit()


def close(*, session: Session, comparison: Comparison) -> Comparison:
    """Stop the voting for good; results stay readable. Closing a closed one changes nothing.

    Raises:
        Conflict: the comparison is not open (still generating, or failed).
    """
    status = status_of(session, comparison)
    if status == "closed":
        return comparison
    if status != "open":
        raise Conflict(
            f"Comparison '{comparison.id}' is {status}; only an open comparison can be closed.",
            code="comparison.not_open",
        )
    comparison.status = "closed"
    session.commit()
    return comparison


def key_rater(key_id: str) -> str:
    return f"key:{key_id}"


# --- pairing and votes ------------------------------------------------------------------------


CONTROL_EVERY = 10
"""Every tenth showing to a rater repeats a pair they voted on (see :mod:`app.ratings.pairing`)."""


def _closed(comparison: Comparison) -> Conflict:
    return Conflict(
        f"Comparison '{comparison.id}' is closed: it takes no more votes (its results stay "
        "readable).",
        code="comparison.closed",
    )


def _check_open(session: Session, comparison: Comparison) -> None:
    status = status_of(session, comparison)
    if status == "closed":
        raise _closed(comparison)
    if status != "open":
        raise Conflict(
            f"Comparison '{comparison.id}' is {status}; rating opens once its answers are "
            "generated.",
            code="comparison.not_open",
        )


def _rater_votes(session: Session, comparison: Comparison, rater: str) -> int:
    """Counted on the unique (comparison, rater, pair, round) index: this rater's rows only."""
    count = session.scalar(
        select(func.count()).where(
            ComparisonVote.comparison_id == comparison.id, ComparisonVote.rater == rater
        )
    )
    return int(count or 0)


def _voted(rater: str, prompt_index: Any, model_x: Any, model_y: Any, round: int) -> Any:
    """``rater`` has a vote on this pair and round (an index lookup)."""
    return exists().where(
        ComparisonVote.comparison_id == ComparisonPair.comparison_id,
        ComparisonVote.rater == rater,
        ComparisonVote.prompt_index == prompt_index,
        ComparisonVote.model_x == model_x,
        ComparisonVote.model_y == model_y,
        ComparisonVote.round == round,
    )


def _control(session: Session, comparison: Comparison, rater: str) -> pairing.PairKey | None:
    """The oldest pair this rater voted on and has not seen again."""
    again = aliased(ComparisonVote)
    first = session.scalar(
        select(ComparisonVote)
        .where(
            ComparisonVote.comparison_id == comparison.id,
            ComparisonVote.rater == rater,
            ComparisonVote.round == 0,
            ~exists().where(
                again.comparison_id == ComparisonVote.comparison_id,
                again.rater == rater,
                again.prompt_index == ComparisonVote.prompt_index,
                again.model_x == ComparisonVote.model_x,
                again.model_y == ComparisonVote.model_y,
                again.round == 1,
            ),
        )
        .order_by(ComparisonVote.id)
        .limit(1)
    )
    if first is None:
        return None
    return pairing.PairKey(str(first.prompt_index), first.model_x, first.model_y, 1)


def _fresh(
    session: Session, comparison: Comparison, rater: str, rng: random.Random
) -> pairing.PairKey | None:
    """A least-voted pair this rater has not voted on, at a random point among those tied.

    Two short index scans on (comparison, votes, shuffle): the lowest count this rater can
    still vote on, then the first tied pair at or after a random ``shuffle`` (wrapping).
    """
    unvoted: ColumnElement[bool] = ~_voted(
        rater, ComparisonPair.prompt_index, ComparisonPair.model_x, ComparisonPair.model_y, 0
    )
    mine = select(ComparisonPair).where(ComparisonPair.comparison_id == comparison.id, unvoted)
    least = session.scalar(mine.order_by(ComparisonPair.votes, ComparisonPair.shuffle).limit(1))
    if least is None:
        return None
    start = rng.randrange(2**31)
    pick = session.scalar(
        mine.where(ComparisonPair.votes == least.votes, ComparisonPair.shuffle >= start)
        .order_by(ComparisonPair.shuffle)
        .limit(1)
    )
    pair = pick or least
    return pairing.PairKey(str(pair.prompt_index), pair.model_x, pair.model_y)


def next_for(*, session: Session, comparison: Comparison, rater: str) -> dict[str, Any]:
    """``GET …/next``'s body: a ticket, the prompt and two answers, or ``{"done": true}``.

    A few indexed queries whatever the number of votes and pairs, in the order of the
    pure-Python :func:`app.ratings.pairing.next_pair` (least-rated first, ties at random per
    rater), except that a control repeats the rater's oldest pair not yet repeated.
    """
    _check_open(session, comparison)
    count = _rater_votes(session, comparison, rater)
    rng = random.Random(f"{rater}\x1f{count}")
    key = None
    if (count + 1) % CONTROL_EVERY == 0:
        key = _control(session, comparison, rater)
    key = key or _fresh(session, comparison, rater, rng)
    if key is None:
        return {"done": True}
    models = sorted(comparison.model_ids)
    showing = pairing.show(comparison.secret.encode(), rater, key, models, rng)
    index = int(key.prompt_id)
    rows = session.scalars(
        select(ComparisonAnswer).where(
            ComparisonAnswer.comparison_id == comparison.id,
            ComparisonAnswer.prompt_index == index,
            ComparisonAnswer.model_id.in_((key.model_x, key.model_y)),
        )
    )
    answers = {key.prompt_id: {row.model_id: row.text for row in rows}}
    prompts = {key.prompt_id: (comparison.prompts or [])[index]}
    return showing.public(prompts, answers)


def _resolve(comparison: Comparison, rater: str, ticket: str) -> pairing.Showing | None:
    sealed = pairing.open_ticket(comparison.secret.encode(), rater, ticket)
    if sealed is None or not sealed.prompt_id.isdigit():
        return None
    if int(sealed.prompt_id) >= len(comparison.prompts or ()):
        return None
    return sealed.showing(sorted(comparison.model_ids), ticket)


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

    The pair's and the comparison's counters move in the vote's transaction (row updates, so
    concurrent votes add up): a vote costs the same at the first vote and the ten-thousandth.

    Raises:
        InvalidInput: a ticket that is not this rater's for this comparison.
        Conflict: this rater already voted on that pair (and round).
    """
    _check_open(session, comparison)
    showing = _resolve(comparison, rater, ticket)
    if showing is None:
        raise InvalidInput("Unknown ticket; ask for the next pair.", code="vote.bad_ticket",
                           param="ticket")  # fmt: skip
    vote = pairing.vote_for(showing, rater, choice, note or None)
    key = showing.key
    session.add(
        ComparisonVote(
            comparison_id=comparison.id,
            rater=rater,
            ticket=ticket,
            prompt_index=int(key.prompt_id),
            model_x=key.model_x,
            model_y=key.model_y,
            round=key.round,
            left_model=vote.model_a,
            right_model=vote.model_b,
            verdict=vote.outcome,
            note=vote.note,
        )
    )
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("You already voted on this pair.", code="vote.duplicate") from None
    if key.round == 0:
        session.execute(
            update(ComparisonPair)
            .where(
                ComparisonPair.comparison_id == comparison.id,
                ComparisonPair.prompt_index == int(key.prompt_id),
                ComparisonPair.model_x == key.model_x,
                ComparisonPair.model_y == key.model_y,
            )
            .values(votes=ComparisonPair.votes + 1)
        )
    # Only while open: a vote racing a close either lands before it or is refused.
    counted = session.execute(
        update(Comparison)
        .where(Comparison.id == comparison.id, Comparison.status == "open")
        .values(votes=Comparison.votes + 1)
        .execution_options(synchronize_session=False)
    )
    if counted.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise _closed(comparison)
    session.commit()
    return _rater_votes(session, comparison, rater)
