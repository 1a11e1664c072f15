from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import SessionDep, StoreDep
from app.api.errors import ErrorResponse, render
from app.broker import broker_reachable
from app.storage import Store
from app.store import StorageError

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Readiness: database, broker and artifact store reachable",
    responses={503: {"model": ErrorResponse}},
    response_model=None,
)
def ready(session: SessionDep, store: StoreDep) -> dict[str, Any] | JSONResponse:
    checks = {
        "database": _database_ok(session),
        "broker": broker_reachable(),
        "store": _store_ok(store),
    }
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


def _store_ok(store: Store) -> bool:
    """The store answers and can be written (the folder, or the bucket): ``store.check()``."""
    try:
        store.check()
    except StorageError as exc:
        log.warning("readiness: the artifact store fails its check: %s", exc)
        return False
    return True
