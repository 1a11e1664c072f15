from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep
from app.api.errors import ErrorResponse, render
from app.broker import broker_reachable

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database and broker reachable",
    responses={503: {"model": ErrorResponse}},
    response_model=None,
)
def ready(session: SessionDep) -> dict[str, Any] | JSONResponse:
    checks = {"database": _database_ok(session), "broker": broker_reachable()}
    if all(checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(name for name, ok in checks.items() if not ok)
    return render(503, f"Not ready: {failing} unreachable.", code="not_ready")


def _database_ok(session: SessionDep) -> bool:
    try:
        session.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
