"""Blind side-by-side comparisons: create, invite raters, rate, and read the results.

``GET …/next`` and ``POST …/votes`` take an API key of the comparison's tenant or an invite
token (``Authorization: Bearer gmr_…``, ``X-Rater-Token`` or ``?token=``); the edge gate lets
a token through without a key and the token is checked here. ``/rate/{token}`` is the page.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import HTMLResponse

from app.api.deps import (
    ComparisonDep,
    IdempotencyKey,
    SessionDep,
    SettingsDep,
    StoreDep,
    TenantDep,
)
from app.api.errors import ErrorResponse
from app.api.limits import FailureThrottle
from app.comparisons import ladder, service
from app.comparisons.schemas import (
    ComparisonCreate,
    ComparisonRead,
    RaterCreate,
    RaterRead,
    VoteCount,
    VoteCreate,
)
from app.comparisons.tables import Comparison
from app.errors import NotFound, Unauthorized, shown
from app.flows import comparisons as flow
from app.ratings.page import page_headers, render_page

router = APIRouter(
    prefix="/comparisons", tags=["comparisons"], responses={401: {"model": ErrorResponse}}
)
page = APIRouter(tags=["comparisons"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}
TokenQuery = Annotated[str | None, Query(max_length=100, description="An invite token.")]
TokenHeader = Annotated[str | None, Header(max_length=100, alias="X-Rater-Token")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ComparisonRead,
    responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Compare models side by side",
)
def create_comparison(
    body: ComparisonCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKey = None,
) -> ComparisonRead:
    """Queue a ``compare`` job that generates every answer; rating opens when it succeeds.
    Same Idempotency-Key and body, same comparison."""
    comparison, created = flow.create_comparison(
        session=session,
        settings=settings,
        store=store,
        tenant_id=tenant_id,
        body=body,
        idempotency_key=idempotency_key,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/comparisons/{comparison.id}"
    return ComparisonRead.model_validate(service.view(session, comparison))


@router.get(
    "/{comparison_id}", response_model=ComparisonRead, responses=NOT_FOUND,
    summary="Get a comparison",
)  # fmt: skip
def read_comparison(comparison: ComparisonDep, session: SessionDep) -> ComparisonRead:
    return ComparisonRead.model_validate(service.view(session, comparison))


@router.post(
    "/{comparison_id}/raters",
    status_code=status.HTTP_201_CREATED,
    response_model=RaterRead,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}},
    summary="Invite a rater by link",
)
def invite_rater(
    comparison: ComparisonDep, session: SessionDep, body: RaterCreate | None = None
) -> RaterRead:
    rater, token = service.add_rater(
        session=session, comparison=comparison, name=body.name if body else None
    )
    return RaterRead(id=rater.id, name=rater.name, url=f"/rate/{token}", token=token)


@router.delete(
    "/{comparison_id}/raters/{rater_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    summary="Revoke an invite link",
)
def revoke_rater(comparison: ComparisonDep, rater_id: str, session: SessionDep) -> None:
    """Its token is refused from now on (``/next``, ``/votes`` and the page); its votes stay."""
    service.revoke_rater(session=session, comparison=comparison, rater_id=rater_id)


@router.post(
    "/{comparison_id}/close",
    response_model=ComparisonRead,
    responses={**NOT_FOUND, 409: {"model": ErrorResponse}},
    summary="Close a comparison to votes",
)
def close_comparison(comparison: ComparisonDep, session: SessionDep) -> ComparisonRead:
    """No more votes (``409 comparison.closed``); results, chart and export stay readable."""
    service.close(session=session, comparison=comparison)
    return ComparisonRead.model_validate(service.view(session, comparison))


def _rater(
    request: Request,
    session: SessionDep,
    comparison_id: str,
    token: str | None,
    header: str | None,
) -> tuple[Comparison, str]:
    """The comparison and the rater's identity: an API key of its tenant, or an invite."""
    tenant_id: str | None = getattr(request.state, "tenant_id", None)
    if tenant_id is not None:
        comparison = service.get_comparison(
            session=session, tenant_id=tenant_id, comparison_id=comparison_id
        )
        return comparison, service.key_rater(request.state.key_id)
    scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
    value = header or token or (bearer.strip() if scheme.lower() == "bearer" else "")
    if not value:
        raise Unauthorized("Send an API key or a rater token.", code="unauthorized")
    rater = service.rater_by_token(session=session, token=value)
    if rater.comparison_id != comparison_id:
        raise NotFound(
            f"No comparison with id '{shown(comparison_id)}'.", code="comparison.not_found"
        )
    return session.get_one(Comparison, comparison_id), rater.id


@router.get(
    "/{comparison_id}/next",
    responses={**NOT_FOUND, 409: {"model": ErrorResponse}},
    summary="The next pair to rate",
)
def next_pair(
    comparison_id: str,
    request: Request,
    session: SessionDep,
    token: TokenQuery = None,
    x_rater_token: TokenHeader = None,
) -> dict[str, Any]:
    """``{"ticket", "prompt", "a", "b"}`` with sides at random and no model names, or
    ``{"done": true}`` when this rater has voted on every pair."""
    comparison, rater = _rater(request, session, comparison_id, token, x_rater_token)
    return service.next_for(session=session, comparison=comparison, rater=rater)


@router.post(
    "/{comparison_id}/votes",
    status_code=status.HTTP_201_CREATED,
    response_model=VoteCount,
    responses={**NOT_FOUND, 400: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    summary="Vote on a pair",
)
def vote(
    comparison_id: str,
    body: VoteCreate,
    request: Request,
    session: SessionDep,
    token: TokenQuery = None,
    x_rater_token: TokenHeader = None,
) -> VoteCount:
    """``a`` (left), ``b`` (right), ``tie`` or ``both_bad``; once per rater and pair (409)."""
    comparison, rater = _rater(request, session, comparison_id, token, x_rater_token)
    count = service.cast_vote(
        session=session,
        comparison=comparison,
        rater=rater,
        ticket=body.ticket,
        choice=body.choice,
        note=body.note,
    )
    return VoteCount(votes=count)


@router.get("/{comparison_id}/results", responses=NOT_FOUND, summary="Ratings and figures")
def read_results(comparison: ComparisonDep, session: SessionDep) -> dict[str, Any]:
    """Bradley–Terry ladder (Elo scale, 95% bootstrap intervals), win-rate matrix, votes per
    model, left-position win rate, rater agreement on control repeats; computed once per new
    vote and shared by every API process."""
    return ladder.results(session=session, comparison=comparison)


@router.get(
    "/{comparison_id}/chart.png",
    responses={**NOT_FOUND, 200: {"content": {"image/png": {"schema": {"type": "string"}}}}},
    summary="The rating ladder as a chart",
)
def read_chart(comparison: ComparisonDep, session: SessionDep) -> Response:
    return Response(ladder.chart(session=session, comparison=comparison), media_type="image/png")


@router.get(
    "/{comparison_id}/votes.jsonl",
    responses={
        **NOT_FOUND,
        200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
    },
    summary="Every vote, with model identities",
)
def export_votes(comparison: ComparisonDep, session: SessionDep) -> Response:
    text = ladder.export_jsonl(session=session, comparison=comparison)
    return Response(text, media_type="application/x-ndjson")


@page.get("/rate/{token}", response_class=HTMLResponse, include_in_schema=False)
def rater_page(token: str, request: Request, session: SessionDep) -> HTMLResponse:
    """The rater page for an invite (plain HTML and JS, nothing from a CDN). Unknown and revoked
    links count against the client address, like failed tokens at the edge gate."""
    failures: FailureThrottle = request.app.state.rater_failures
    address = request.client.host if request.client else "unknown"
    failures.check(address)
    try:
        rater = service.rater_by_token(session=session, token=token)
    except Unauthorized as refused:
        failures.failed(address)
        if refused.code == "rater.revoked":
            return HTMLResponse("<!doctype html><title>Gone</title><p>This link was revoked.", 410)
        return HTMLResponse("<!doctype html><title>Not found</title><p>Unknown link.", 404)
    return HTMLResponse(render_page(rater.comparison_id, token), headers=page_headers())
