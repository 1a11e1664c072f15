"""A comparison's results: the figures cached per vote count, the ladder chart, the export."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.comparisons import chart as charts
from app.comparisons.judges import judge_raters
from app.comparisons.tables import Comparison, ComparisonResults, ComparisonVote, Rater
from app.db import utcnow
from app.ratings import bradley_terry, pairing
from app.ratings.bradley_terry import Vote
from app.ratings.judges import agreement_with_people


def _votes(session: Session, comparison: Comparison) -> list[ComparisonVote]:
    return list(
        session.scalars(
            select(ComparisonVote)
            .where(ComparisonVote.comparison_id == comparison.id)
            .order_by(ComparisonVote.id)
        )
    )


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
    left-position win rate and rater agreement on control repeats.

    Computed once per vote count and kept in ``comparison_results``: reads in between, from any
    API process, get the stored figures.
    """
    cached = session.get(ComparisonResults, comparison.id)
    if cached is not None and cached.votes == comparison.votes:
        return dict(cached.figures)
    votes = [_as_vote(v) for v in _votes(session, comparison)]
    figures = bradley_terry.results(votes, comparison.model_ids, rounds=rounds)
    raters = len({v.rater for v in votes})
    judges = judge_raters(session=session, comparison_id=comparison.id)
    people = [v for v in votes if v.rater not in {j.id for j in judges}]
    # A judge's votes show each pair both ways round, so only people's measure the left side.
    figures["left_win_rate"] = bradley_terry.left_win_rate(people)
    computed = {
        "comparison_id": comparison.id,
        "raters": raters,
        **figures,
        "judges": [_judge(judge, votes, people) for judge in judges],
    }
    _store(session, comparison.id, len(votes), figures=computed)
    return computed


def _judge(judge: Rater, votes: list[Vote], people: list[Vote]) -> dict[str, Any]:
    """A judge's figures: its votes, position bias and agreement with the people (every rater
    that is not a judge) on the pairs both voted on."""
    mine = [v for v in votes if v.rater == judge.id]
    details = judge.details or {}
    return {
        "rater": judge.id,
        "name": judge.name,
        "votes": len(mine),
        "ties": sum(v.outcome == "tie" for v in mine),
        "position_bias": details.get("position_bias"),
        "job_id": details.get("job_id"),
        "human_agreement": agreement_with_people(mine, people),
    }


def _store(session: Session, comparison_id: str, votes: int, **values: Any) -> None:
    """Keep figures computed over ``votes`` votes unless newer ones are there already (two
    processes may compute at once; the later vote count wins, and a lost race is harmless)."""
    try:
        if session.get(ComparisonResults, comparison_id) is None:
            session.add(
                ComparisonResults(comparison_id=comparison_id, votes=votes, chart=None, **values)
            )
        else:
            values.setdefault("chart", None)
            session.execute(
                update(ComparisonResults)
                .where(
                    ComparisonResults.comparison_id == comparison_id,
                    ComparisonResults.votes <= votes,
                )
                .values(votes=votes, computed_at=utcnow(), **values)
                .execution_options(synchronize_session=False)
            )
        session.commit()
    except IntegrityError:
        session.rollback()


def chart(*, session: Session, comparison: Comparison) -> bytes:
    """The ladder as a PNG, drawn once per vote count like the figures it shows."""
    figures = results(session=session, comparison=comparison)
    cached = session.get(ComparisonResults, comparison.id)
    if cached is not None:
        session.refresh(cached)
        if cached.chart is not None and cached.votes == figures["votes"]:
            return cached.chart
    png = charts.ladder_png(figures)
    _store(session, comparison.id, figures["votes"], figures=figures, chart=png)
    return png


def export_jsonl(*, session: Session, comparison: Comparison) -> str:
    return pairing.export_jsonl([_as_vote(v) for v in _votes(session, comparison)])
