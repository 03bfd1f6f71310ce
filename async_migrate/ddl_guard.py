"""Migrations against a live database must not stall its traffic.

On PostgreSQL an ``ALTER TABLE`` waits for an ACCESS EXCLUSIVE lock; while it waits, every later query on
that table queues behind it. With ``lock_timeout`` set on the migration session only, a blocked revision
gives up quickly (its transaction rolls back entirely) and is retried after a pause, while a watcher on a
second connection records which sessions blocked it (``pg_blocking_pids``), for the log and the final error.

MySQL/MariaDB behave alike with their metadata locks (``lock_wait_timeout``); there DDL commits as it runs,
so a revision is retried only when none of its statements had run yet, and the watcher can only name the
sessions with open transactions (the usual holders of metadata locks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .database import close_when_connected
from .errors import exception_chain

log = logging.getLogger("async_migrate")

#: SQLSTATE ``lock_not_available``: what a ``lock_timeout`` raises.
LOCK_NOT_AVAILABLE = "55P03"

#: MySQL's ER_LOCK_WAIT_TIMEOUT: what a ``lock_wait_timeout`` raises.
MYSQL_LOCK_WAIT_TIMEOUT = 1205

#: ``ddl_lock_timeout`` when none is given: seconds on PostgreSQL; off elsewhere.
DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT = 5.0

MYSQL_DIALECTS = ("mysql", "mariadb")


@dataclass(frozen=True)
class DDLGuard:
    """How a migration session behaves towards the live database's locks.

    :param lock_timeout: seconds a statement may wait for a table lock (``SET lock_timeout``); None: forever.
    :param attempts: how many times a revision that hit the lock timeout is tried in all.
    :param backoff: seconds before the second attempt; doubled for each further one.
    :param statement_timeout: seconds any one statement may run (``SET statement_timeout``); None: forever.
    """

    lock_timeout: float | None = DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT
    attempts: int = 5
    backoff: float = 2.0
    statement_timeout: float | None = None

    @property
    def active(self) -> bool:
        return self.lock_timeout is not None or self.statement_timeout is not None

    def pause(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(60.0, self.backoff * 2 ** (attempt - 1)))


async def session_id(connection: AsyncConnection) -> int:
    """The server's id of this session (PostgreSQL backend pid, MySQL connection id)."""
    query = (
        "SELECT CONNECTION_ID()"
        if connection.dialect.name in MYSQL_DIALECTS
        else ("SELECT pg_backend_pid()")
    )
    found = int((await connection.execute(text(query))).scalar_one())
    await connection.commit()
    return found


async def set_session_timeouts(connection: AsyncConnection, guard: DDLGuard) -> None:
    """Set the timeouts on this session only; :func:`reset_session_timeouts` undoes them."""
    if connection.dialect.name in MYSQL_DIALECTS:
        if guard.lock_timeout is not None:
            # Whole seconds, at least one: the server's unit.
            whole = max(1, round(guard.lock_timeout))
            await connection.execute(text(f"SET SESSION lock_wait_timeout = {whole}"))
        await connection.commit()
        return
    for name, seconds in (
        ("lock_timeout", guard.lock_timeout),
        ("statement_timeout", guard.statement_timeout),
    ):
        if seconds is not None:
            await connection.execute(text(f"SET {name} = {int(seconds * 1000)}"))
    await connection.commit()


async def reset_session_timeouts(connection: AsyncConnection) -> None:
    """Give the session back as the pool lent it: the app's connections keep their own timeouts."""
    await connection.rollback()
    if connection.dialect.name in MYSQL_DIALECTS:
        await connection.execute(text("SET SESSION lock_wait_timeout = DEFAULT"))
    else:
        await connection.execute(text("RESET lock_timeout"))
        await connection.execute(text("RESET statement_timeout"))
    await connection.commit()


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is (or was caused by) a lock timeout of PostgreSQL or MySQL/MariaDB."""
    for candidate in exception_chain(exc):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if state == LOCK_NOT_AVAILABLE:
            return True
        args = getattr(candidate, "args", ())
        if args and args[0] == MYSQL_LOCK_WAIT_TIMEOUT:
            return True
    return False


@dataclass
class BlockerWatcher:
    """Polls, on its own connection, which sessions block the migration session, while an attempt runs."""

    engine: AsyncEngine
    backend_pid: int
    interval: float = 0.2
    blockers: dict[int, str] = field(default_factory=dict)
    _kill: str = "pg_terminate_backend({})"

    async def _watch(self) -> None:
        if self.engine.dialect.name in MYSQL_DIALECTS:
            # MySQL names no blocker of a metadata lock without performance_schema: the sessions with open
            # transactions are who can hold one.
            query = text(
                "SELECT t.trx_mysql_thread_id, CONCAT(p.USER, '@', p.HOST), p.COMMAND, "
                "TIMESTAMPDIFF(SECOND, t.trx_started, NOW()), LEFT(p.INFO, 80) "
                "FROM information_schema.INNODB_TRX t "
                "LEFT JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
                "WHERE t.trx_mysql_thread_id <> :pid"
            )
        else:
            query = text(
                "SELECT a.pid, a.application_name, a.state, "
                "extract(epoch FROM now() - a.xact_start)::float8, left(a.query, 80) "
                "FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids(:pid))"
            )
        kill = (
            "KILL {}" if self.engine.dialect.name in MYSQL_DIALECTS else "pg_terminate_backend({})"
        )
        self._kill = kill
        # Most attempts finish at once: only one that is still running after a moment gets watched.
        await asyncio.sleep(self.interval)
        # From the app's pool when it has room; a full pool only costs the blocker's name. The connect
        # runs on as its own task so that cancelling the watcher mid-connect cannot strand a connection.
        connecting = asyncio.ensure_future(self.engine.connect())
        try:
            done, _ = await asyncio.wait({connecting}, timeout=2.0)
        except asyncio.CancelledError:
            connecting.add_done_callback(close_when_connected)
            raise
        if not done or connecting.exception() is not None:
            connecting.add_done_callback(close_when_connected)
            log.debug("No connection to watch for blocking sessions")
            return
        connection = connecting.result()
        try:
            while True:
                for pid, app, state, open_for, statement in await connection.execute(
                    query, {"pid": self.backend_pid}
                ):
                    who = "connection id" if self._kill.startswith("KILL") else "pid"
                    named = "user" if who == "connection id" else "application_name"
                    self.blockers[pid] = (
                        f"{who} {pid} ({named} {app!r}, state {state!r}, transaction open "
                        f"{float(open_for or 0):.0f}s, last statement {statement!r})"
                    )
                await connection.rollback()
                await asyncio.sleep(self.interval)
        except Exception as exc:
            log.debug("Stopped watching for blocking sessions: %s", exc)
        finally:
            await asyncio.shield(connection.close())

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BlockerWatcher]:
        task = asyncio.create_task(self._watch())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def describe(self) -> str:
        return "; ".join(self.blockers.values()) or "a session that let go before it could be seen"

    def terminate_hint(self) -> str:
        if self._kill.startswith("KILL"):
            pids = ", ".join(self._kill.format(pid) for pid in self.blockers)
        else:
            pids = ", ".join(f"SELECT {self._kill.format(pid)}" for pid in self.blockers)
        return f" ({pids})" if pids else ""


class AutocommitTracker:
    """Notices a revision entering Alembic's ``autocommit_block()``: its statements are committed as they
    run, so after a failure it was not rolled back entirely and must not be retried."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.since_last_revision = False
        event.listen(connection, "set_connection_execution_options", self._seen_options)

    def _seen_options(self, conn: Connection, options: dict[str, object]) -> None:
        if options.get("isolation_level") == "AUTOCOMMIT":
            self.since_last_revision = True

    def revision_done(self) -> None:
        self.since_last_revision = False

    def close(self) -> None:
        event.remove(self.connection, "set_connection_execution_options", self._seen_options)
