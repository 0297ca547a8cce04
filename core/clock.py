"""The one clock of a fleet: the database's.

A lease, and every other time of a job's lifecycle, is stamped and compared by PostgreSQL
(`statement_timestamp()` in the SQL that writes or reads it); hosts send durations only. So a
worker or API host whose clock is minutes off neither loses a live job nor keeps a dead one.
SQLite serves the embedded mode, where the API and the worker share one host and so one clock:
there the host's clock is used (SQLite's own `now` writes another text format than the one
stored, so comparing the two would be wrong).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import DateTime, Interval, extract, func, literal
from sqlalchemy.orm import Session

from core.models import utcnow


def on_server(session: Session) -> bool:
    """Whether the database keeps the time (PostgreSQL) rather than this host (SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def now(session: Session) -> Any:
    """The current time: a SQL expression evaluated by the server, or this host's time."""
    if on_server(session):
        return func.statement_timestamp(type_=DateTime(timezone=True))
    return utcnow()


def after(session: Session, seconds: float) -> Any:
    """`seconds` from now, on the database's clock."""
    if on_server(session):
        return now(session) + _span(seconds)
    return utcnow() + timedelta(seconds=seconds)


def before(session: Session, seconds: float) -> Any:
    """`seconds` ago, on the database's clock."""
    if on_server(session):
        return now(session) - _span(seconds)
    return utcnow() - timedelta(seconds=seconds)


def _span(seconds: float) -> Any:
    return literal(timedelta(seconds=seconds), Interval())


def seconds_since(session: Session, column: Any, value: Any) -> Any:
    """Seconds from `column` (whose current value, read by the caller, is `value`) to now."""
    if on_server(session):
        return extract("epoch", now(session) - column)
    return None if value is None else (utcnow() - value).total_seconds()
