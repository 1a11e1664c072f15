"""Invites: a rater's link (its token kept only as a hash), replays of an invite by
Idempotency-Key, revocation, and the token lookups the rater page and the edge gate make."""

from __future__ import annotations

import hashlib
import json
import secrets

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.comparisons.tables import Comparison, ComparisonVote, Rater
from app.db import utcnow
from app.errors import Conflict, NotFound, Unauthorized, shown
from app.ids import new_id
from app.jobs.idempotency import earlier_row

RATER_TOKEN_PREFIX = "gmr_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def add_rater(
    *,
    session: Session,
    comparison: Comparison,
    name: str | None,
    idempotency_key: str | None = None,
) -> tuple[Rater, str, bool]:
    """An invite: the token is returned once and kept only as its SHA-256; the invite, its
    token, and False when an Idempotency-Key replayed an earlier one.

    A replay answers with the same invite and a fresh token (only the hash of the one sent
    before was kept, and it stops working), as long as nobody has voted through it.

    Raises:
        InvalidInput: the Idempotency-Key was used with another request.
        Conflict: the replayed invite has votes or was revoked since; its link is gone.
    """
    digest = hashlib.sha256(json.dumps({"name": name}).encode()).hexdigest()
    if idempotency_key is not None:
        earlier = _invited(session, comparison, idempotency_key, digest)
        if earlier is not None:
            return _reissue(session, earlier)
    token = RATER_TOKEN_PREFIX + secrets.token_urlsafe(24)
    rater = Rater(
        id=new_id("rtr"), comparison_id=comparison.id, token_hash=hash_token(token), name=name,
        idempotency_key=idempotency_key, request_hash=digest if idempotency_key else None,
    )  # fmt: skip
    session.add(rater)
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key made the invite first.
        session.rollback()
        earlier = (
            _invited(session, comparison, idempotency_key, digest) if idempotency_key else None
        )
        if earlier is None:
            raise
        return _reissue(session, earlier)
    return rater, token, True


def _invited(session: Session, comparison: Comparison, key: str, digest: str) -> Rater | None:
    row = session.scalar(
        select(Rater).where(Rater.comparison_id == comparison.id, Rater.idempotency_key == key)
    )
    return earlier_row(session, row, digest)


def _reissue(session: Session, rater: Rater) -> tuple[Rater, str, bool]:
    voted = session.scalar(select(exists().where(ComparisonVote.rater == rater.id)))
    if voted or rater.revoked_at is not None:
        raise Conflict(
            "The invite this Idempotency-Key made has been used or revoked since; its link "
            "cannot be shown again.",
            code="idempotency_key.replay_gone",
        )
    token = RATER_TOKEN_PREFIX + secrets.token_urlsafe(24)
    rater.token_hash = hash_token(token)
    session.commit()
    return rater, token, False


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
