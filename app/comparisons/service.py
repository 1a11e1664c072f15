"""Comparisons: create one with its ``compare`` job, invite raters, pair, vote, and rate.

Pairing and the ratings maths are :mod:`app.ratings`; this module keeps them fed from the
database. A rater is an invited person (``rtr_…``, by token) or one of the tenant's API keys
(``key:<key id>``); model identities appear only in results and the export.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.comparisons.schemas import ComparisonCreate
from app.comparisons.tables import Comparison, ComparisonAnswer, ComparisonVote, Rater
from app.errors import Conflict, InvalidInput, NotFound, Unauthorized
from app.ids import new_id
from app.jobs import service as jobs
from app.jobs.kinds import Capacity, CompareParams, get_kind
from app.jobs.states import JobStatus
from app.jobs.tables import Job
from app.ratings import bradley_terry, pairing
from app.ratings.bradley_terry import Vote
from app.storage import LocalStore
from workers.pipeline.configs.base import ConfigError

RATER_TOKEN_PREFIX = "gmr_"


@dataclass(frozen=True)
class ComparisonAnswers:
    """A ``compare`` job's output: stored with the job's success, which opens rating."""

    comparison_id: str
    prompts: list[str]
    answers: Mapping[str, Sequence[str]]
    """Model id → its answer to each prompt, in prompt order."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_comparison(
    *,
    session: Session,
    store: LocalStore,
    tenant_id: str,
    body: ComparisonCreate,
    max_attempts: int,
    capacity: Capacity | None = None,
) -> tuple[Comparison, Job]:
    """Write the comparison and its queued ``compare`` job (committed); the caller enqueues.

    Raises:
        InvalidInput: a model or the dataset is unknown, another tenant's or not ready
            (``param`` names ``models.<i>`` or ``dataset_id``).
    """
    comparison_id = new_id("cmp")
    try:
        params = CompareParams(
            comparison_id=comparison_id,
            model_ids=tuple(body.models),
            dataset_id=body.dataset_id,
            prompts=tuple(body.prompts or ()),
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            seed=body.seed,
        )
    except ConfigError as err:
        raise InvalidInput(err.message, code="invalid_parameter", param=err.field) from None
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
    try:
        submitted = jobs.submit_job(
            session=session,
            store=store,
            tenant_id=tenant_id,
            kind=get_kind("compare"),
            params=params,
            max_attempts=max_attempts,
            capacity=capacity,
        )
    except InvalidInput as err:
        session.rollback()
        if err.param:  # params.model_ids.1 → models.1
            err.param = err.param.replace("params.model_ids", "models").replace("params.", "")
        raise
    comparison.job_id = submitted.job.id
    session.commit()
    return comparison, submitted.job


def get_comparison(*, session: Session, tenant_id: str, comparison_id: str) -> Comparison:
    """The tenant's comparison: another tenant's looks exactly like a missing one."""
    comparison = session.get(Comparison, comparison_id)
    if comparison is None or comparison.tenant_id != tenant_id:
        raise NotFound(f"No comparison with id '{comparison_id}'.", code="comparison.not_found")
    return comparison


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


def record_answers(*, session: Session, answers: ComparisonAnswers) -> None:
    """Store a ``compare`` job's answers and open the comparison (in the job's final commit)."""
    comparison = session.get_one(Comparison, answers.comparison_id)
    comparison.prompts = list(answers.prompts)
    for model_id, texts in answers.answers.items():
        for index, text in enumerate(texts):
            session.add(
                ComparisonAnswer(
                    comparison_id=comparison.id, prompt_index=index, model_id=model_id, text=text
                )
            )
    comparison.status = "open"


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


def comparison_for_rater(*, session: Session, token: str, comparison_id: str) -> Comparison:
    """The comparison an invite token rates: a token works only for its own comparison.

    Raises:
        Unauthorized: unknown token. NotFound: the token belongs to another comparison.
    """
    rater = rater_by_token(session=session, token=token)
    if rater.comparison_id != comparison_id:
        raise NotFound(f"No comparison with id '{comparison_id}'.", code="comparison.not_found")
    return session.get_one(Comparison, comparison_id)


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
