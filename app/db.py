"""Database plumbing: the declarative base (with constraint naming), engines and sessions.

SQLite (embedded profile) and Postgres (production) run the same code; SQLite gets WAL, foreign
keys and a busy timeout so the API and a worker process can share the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from sqlalchemy import JSON, DateTime, Engine, MetaData, Select, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.errors import NotFound

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[dict[str, Any]]: JSON(),
    }


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 10, pool_timeout: float = 30.0
) -> Engine:
    """``pool_timeout``: how long a checkout waits for a free connection before raising
    ``sqlalchemy.exc.TimeoutError`` (the API answers that with 503 and ``Retry-After``)."""
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_deserializer=load_json,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        connect_args={"connect_timeout": 5},
        json_deserializer=load_json,
    )


def load_json(text: str | bytes) -> Any:
    """``json.loads`` for JSON columns, with lone surrogates (``"\\udc80"``) made U+FFFD.

    JSON text may escape a lone surrogate, and such a string can neither be encoded as UTF-8
    nor sent in a response: one bad row would break every list that includes it.
    """
    value = json.loads(text)
    raw = text if isinstance(text, str) else text.decode("utf-8", "replace")
    if "\\ud" in raw or "\\uD" in raw:
        return _scrub(value)
    return value


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _private_sqlite_file(url: str) -> None:
    """The embedded database holds key hashes and every tenant's jobs: owner-only (0600).

    SQLite gives its ``-wal`` and ``-shm`` files the main file's mode, so creating that file
    first with 0600 covers all three.
    """
    raw = url.split("///", 1)[-1] if "///" in url else ""
    if not raw or raw.startswith(":memory:") or "mode=memory" in url:
        return
    path = Path(raw.split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


R = TypeVar("R")


def paginate(session: Session, stmt: Select[R], *, limit: int) -> tuple[list[R], bool]:
    """Run a list query for one page: the rows, and whether more follow."""
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


class Owned(Protocol):
    """A row that belongs to one tenant (jobs, datasets, artifacts, comparisons)."""

    @property
    def tenant_id(self) -> str: ...


OwnedT = TypeVar("OwnedT", bound=Owned)
LOCKS: dict[str | None, Any] = {None: None, "read": {"read": True}, "write": True}


def find_owned(
    session: Session,
    table: type[OwnedT],
    object_id: str,
    *,
    tenant_id: str,
    where: Callable[[OwnedT], bool] | None = None,
    lock: Literal["read", "write"] | None = None,
) -> OwnedT | None:
    """The tenant's row with this id (that also satisfies ``where``), or None.

    Another tenant's row looks exactly like a missing one, so ids cannot be probed across
    tenants. ``lock`` holds a shared (``read``) or exclusive (``write``) row lock until commit,
    and reads the row as it is once locked: a copy loaded earlier in the session (before a
    concurrent delete hid it) must not pass for the locked row.
    """
    row = session.get(
        table, object_id, with_for_update=LOCKS[lock], populate_existing=lock is not None
    )
    if row is None or row.tenant_id != tenant_id or (where is not None and not where(row)):
        return None
    return row


def get_owned(
    session: Session,
    table: type[OwnedT],
    object_id: str,
    *,
    tenant_id: str,
    missing: NotFound,
    where: Callable[[OwnedT], bool] | None = None,
    lock: Literal["read", "write"] | None = None,
) -> OwnedT:
    """Load-or-404, written once: the tenant's row with this id, or ``missing`` raised.

    Raises:
        NotFound: ``missing``, when there is no such row for this tenant.
    """
    row = find_owned(session, table, object_id, tenant_id=tenant_id, where=where, lock=lock)
    if row is None:
        raise missing
    return row
