"""Drops a PostgreSQL connection whose server stopped answering while the kernel still
acknowledges (its process stuck, or a proxy on the way that stopped forwarding).

No libpq or psycopg timeout covers that case: keep-alives and `tcp_user_timeout` see a healthy
peer, `statement_timeout` needs the server to act, and psycopg has no client-side deadline for a
statement. So every call that waits on the server (a statement, a commit or rollback, the ping
when a pooled connection is taken) is armed with a deadline, and one watcher thread per engine
shuts down the socket of a connection still waiting past it. The waiting call then fails at once
as a lost connection, which SQLAlchemy discards instead of returning it to the pool, and the
request answers 503 (api.http.problems) instead of hanging for as long as the stall lasts.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError

log = logging.getLogger(__name__)

ACTIVE = 1  # libpq's PQTRANS_ACTIVE: a command is in progress on the connection
POLL_SECONDS = 0.25


class StallGuard:
    """Deadlines on the server's answers, for the connections of one engine."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._armed: dict[int, tuple[Any, float]] = {}  # id(connection) -> (it, deadline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="db-stall-guard")
        self._thread.start()

    def install(self, engine: Engine) -> None:
        """Arm every call that waits on the server; a pooled connection is pinged on checkout."""
        event.listen(engine, "before_cursor_execute", self._arm_cursor)
        event.listen(engine, "after_cursor_execute", self._disarm_cursor)
        event.listen(engine, "handle_error", self._disarm_error)
        event.listen(engine, "commit", self._arm_connection)
        event.listen(engine, "rollback", self._arm_connection)
        event.listen(engine.pool, "connect", self._fresh)
        event.listen(engine.pool, "checkout", self._ping)
        event.listen(engine.pool, "reset", self._arm_reset)
        for name in ("checkin", "close", "invalidate", "detach"):
            event.listen(engine.pool, name, self._forget)

    def arm(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._armed[id(dbapi_connection)] = (dbapi_connection, time.monotonic() + self.limit)

    def disarm(self, dbapi_connection: Any) -> None:
        with self._lock:
            self._armed.pop(id(dbapi_connection), None)

    def close(self) -> None:
        self._stop.set()

    # Event handlers: their signatures are SQLAlchemy's.
    def _arm_cursor(self, conn: Any, cursor: Any, *_: Any) -> None:
        self.arm(cursor.connection)

    def _disarm_cursor(self, conn: Any, cursor: Any, *_: Any) -> None:
        self.disarm(cursor.connection)

    def _disarm_error(self, context: Any) -> None:
        if context.connection is not None and not context.connection.closed:
            with contextlib.suppress(Exception):
                self.disarm(context.connection.connection.dbapi_connection)

    def _arm_connection(self, conn: Any) -> None:
        if not conn.invalidated:  # a lost connection's rollback sends nothing
            self.arm(conn.connection.dbapi_connection)

    def _arm_reset(self, dbapi_connection: Any, record: Any, *_: Any) -> None:
        self.arm(dbapi_connection)

    def _forget(self, dbapi_connection: Any, *_: Any) -> None:
        if dbapi_connection is not None:
            self.disarm(dbapi_connection)

    @staticmethod
    def _fresh(dbapi_connection: Any, record: Any) -> None:
        record.info["fresh"] = True  # just opened: answered moments ago, no ping needed

    def _ping(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        """The pool's pre-ping, armed like any other call: a stalled server's connection is
        discarded and the pool opens a new one (which fails fast: `connect_timeout`)."""
        if record.info.pop("fresh", False):
            return
        self.arm(dbapi_connection)
        try:
            dbapi_connection.autocommit = True  # idle in the pool: no transaction to end
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            dbapi_connection.autocommit = False
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc
        finally:
            self.disarm(dbapi_connection)

    def _watch(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            now = time.monotonic()
            with self._lock:  # held while a connection is looked at: pool closes wait
                for key, (connection, deadline) in list(self._armed.items()):
                    if now < deadline:
                        continue
                    del self._armed[key]
                    self._drop_if_waiting(connection)

    def _drop_if_waiting(self, connection: Any) -> None:
        try:
            if connection.closed or connection.pgconn.transaction_status != ACTIVE:
                return  # the call ended (a commit answered): nothing waits
            fd, port = connection.pgconn.socket, int(connection.info.port)
        except Exception:  # closed meanwhile
            return
        with contextlib.suppress(OSError):
            # A duplicate of the descriptor: shutting it down cuts the shared connection, so
            # the thread blocked on it wakes with an error; closing the duplicate frees only it.
            sock = socket.socket(fileno=socket.dup(fd))
            try:
                if self._still_waiting(connection, sock, port):
                    log.error(
                        "database: no answer for %.0f s on a connection; dropping it "
                        "(MIFO_DB_ANSWER_TIMEOUT)",
                        self.limit,
                    )
                    sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    @staticmethod
    def _still_waiting(connection: Any, sock: socket.socket, port: int) -> bool:
        """Checked again on the duplicate: libpq may have closed the descriptor meanwhile (the
        server reset it) and its number gone to another socket, which must be left alone."""
        try:
            if connection.closed or connection.pgconn.transaction_status != ACTIVE:
                return False
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return bool(sock.getpeername()[1] == port)
            return True
        except Exception:
            return False
