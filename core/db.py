"""Engines, sessions and the migration check every process runs before serving."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from core.dbguard import StallGuard
from core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


class _QuietSchemaCheck(logging.Filter):
    """Alembic logs which dialect it found each time a migration context opens: on every
    readiness probe's schema check, two lines that say nothing new."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl ", "Will assume "))


logging.getLogger("alembic.runtime.migration").addFilter(_QuietSchemaCheck())


class NotMigrated(RuntimeError):
    """The database schema is not at the revision this code expects."""


@dataclass(frozen=True)
class Timeouts:
    """Bounds on database waits, so that a database that stops answering turns into a 503
    within seconds instead of a request that hangs (defaults: Settings' db_* fields)."""

    connect: float = 3.0  # opening a connection (PostgreSQL: the whole start-up)
    pool: float = 3.0  # waiting for a free pooled connection
    statement: float = 4.0  # one statement, enforced by the server (PostgreSQL)
    socket: float = 4.0  # no acknowledgement of what was sent: the link is dead
    answer: float | None = 5.0  # acknowledged but no answer: the server is stuck (dbguard)
    idle_in_transaction: float = 60.0  # a client gone mid-transaction frees its locks


def make_engine(url: str, timeouts: Timeouts = Timeouts()) -> Engine:  # noqa: B008 - frozen
    postgres = url.startswith("postgresql")
    # PostgreSQL: the stall guard pings a pooled connection itself, with a deadline.
    kwargs: dict[str, Any] = {"pool_pre_ping": not (postgres and timeouts.answer is not None)}
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        # The API and the worker write one file: wait for the lock instead of failing at once.
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_timeout"] = timeouts.pool
        if postgres:
            kwargs["connect_args"] = _postgres_args(timeouts)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    if postgres and timeouts.answer is not None:
        StallGuard(timeouts.answer).install(engine)
    return engine


def engine_from_settings(settings: Settings) -> Engine:
    return make_engine(
        settings.db_url,
        Timeouts(
            connect=settings.db_connect_timeout,
            pool=settings.db_pool_timeout,
            statement=settings.db_statement_timeout,
            socket=settings.db_socket_timeout,
            answer=settings.db_answer_timeout,
        ),
    )


def _postgres_args(t: Timeouts) -> dict[str, Any]:
    """libpq parameters. A connection whose packets are dropped (no reset) is found dead by
    the kernel: unacknowledged data after `tcp_user_timeout`, silence while waiting for an
    answer by keep-alive probes; the server cancels a statement past `statement_timeout`, and
    ends the session of a client that went silent inside a transaction, freeing its locks. A
    server that acknowledges but never answers is core.dbguard's."""
    probe = max(1, int(t.socket // 4))
    return {
        "connect_timeout": max(2, math.ceil(t.connect)),  # libpq's least is 2 s
        "tcp_user_timeout": int(t.socket * 1000),
        "keepalives": 1,
        "keepalives_idle": probe,
        "keepalives_interval": probe,
        "keepalives_count": max(1, int(t.socket // probe) - 1),
        "options": f"-c statement_timeout={int(t.statement * 1000)} "
        f"-c idle_in_transaction_session_timeout={int(t.idle_in_transaction * 1000)}",
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # SET NULL / CASCADE need it
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# PostgreSQL's answers to transactions that collided with another one: deadlock detected,
# serialization failure, lock not available. Retrying the transaction is the remedy.
CONFLICT_CODES = frozenset({"40P01", "40001", "55P03"})
CONFLICT_RETRIES = 3

T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """Whether `exc` is a collision with a concurrent transaction (not the database down)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in CONFLICT_CODES


def retry_conflicts(session: Session, work: Callable[[], T]) -> T:
    """Run the transaction `work` (which commits), again after a rollback when it collided
    with a concurrent one, up to CONFLICT_RETRIES times; the last collision is raised (the
    API answers it with 409, never as the database being unavailable)."""
    for attempt in range(1, CONFLICT_RETRIES + 1):
        try:
            return work()
        except DBAPIError as exc:
            if not is_conflict(exc) or attempt == CONFLICT_RETRIES:
                raise
            session.rollback()
            log.warning("transaction collided with another (%s); retry %d", exc.orig, attempt)
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def check_migrated(engine: Engine) -> None:
    """Raise NotMigrated, naming the command that fixes it, unless the schema is at head."""
    heads = set(ScriptDirectory.from_config(alembic_config(str(engine.url))).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        where = engine.url.render_as_string(hide_password=True)
        have = ", ".join(sorted(current)) or "an empty schema"
        raise NotMigrated(
            f"The database {where} is at {have}, this code needs {', '.join(sorted(heads))}. "
            "Run `mifo migrate` (with the same MIFO_DATABASE_URL) and start again."
        )
