"""The PostgreSQL migration lock: a session advisory lock, which refuses a transaction pooler (where it
could not keep other migrators out) and keeps its session's liveness checks tight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
from collections.abc import Callable

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import TRANSACTION_POOLER_ADVICE, TransactionPoolerError
from .migration_lock import LOCK_KEY_NAMESPACE, MigrationLock

log = logging.getLogger("async_migrate")

# client_connection_check_interval (PostgreSQL 14+) ends the backend of a migrator that died mid-statement,
# and with it the lock, instead of letting the statement run to its end first.
CLIENT_CHECK_INTERVAL_MS = 1000


def postgres_lock_key(database: str, schema: str, version_table: str) -> int:
    """The 64-bit advisory lock key for one version table.

    Derived from the database, schema and version table, so that two apps on one server don't block each
    other. This derivation must never change between releases, or old and new replicas would migrate at once.
    """
    digest = hashlib.sha256(
        "\x00".join((LOCK_KEY_NAMESPACE, database, schema, version_table)).encode()
    ).digest()
    key: int = struct.unpack(">q", digest[:8])[0]
    return key


class PostgresAdvisoryLock(MigrationLock):
    """A session-level ``pg_advisory_lock`` on a key derived from database, schema and version table.

    Session-level because Alembic commits several times in one run (per revision, ``autocommit_block``),
    which would drop a transaction-level lock.
    """

    def __init__(self, version_table: str, version_table_schema: str | None) -> None:
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        self.description = f"PostgreSQL advisory lock for version table {version_table!r}"
        self._key: int | None = None
        self._client_check_set = False
        self._sharing_checked = False
        # The server session holding the lock, while this migrator holds it.
        self._session: int | None = None
        # The server session that may hold the lock if this migrator's connection breaks: set before the
        # try, cleared once an unlock is confirmed.
        self._maybe_held_by: int | None = None
        self._watched: tuple[object, Callable[[Connection], None]] | None = None

    async def key(self, connection: AsyncConnection) -> int:
        if self._key is None:
            row = (
                await connection.execute(text("SELECT current_database(), current_schema()"))
            ).one()
            schema = self.version_table_schema or row[1] or "public"
            self._key = postgres_lock_key(row[0], schema, self.version_table)
            self.description = (
                f"PostgreSQL advisory lock {self._key} "
                f"(database {row[0]!r}, version table {schema}.{self.version_table})"
            )
        return self._key

    async def try_acquire(self, connection: AsyncConnection) -> bool:
        key = await self.key(connection)
        own = await _backend_pid(connection)
        self._maybe_held_by = own
        if not self._sharing_checked:
            await self._refuse_shared_session(connection, own)
            self._sharing_checked = True
        # One transaction, so one server session: who holds the key there already, then the try.
        already, pid = (
            await connection.execute(
                text(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND pid = pg_backend_pid() AND objsubid = 1 AND classid::bigint = :classid "
                    "AND objid::bigint = :objid), pg_backend_pid()"
                ),
                _key_parts(key),
            )
        ).one()
        if already:
            # A session that holds the lock before it was asked for is another client's, handed over.
            await connection.rollback()
            raise self._pooled(
                f"server session {pid} already held the lock when this connection got it"
            )
        got = bool(
            (
                await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            ).scalar()
        )
        if pid != own:
            # Handed another server session between two transactions: if the lock was taken there,
            # it is not this migrator's to keep. Unlock in this same session, then refuse.
            if got:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            await connection.commit()
            raise self._pooled(f"server session {own} became {pid} between two transactions")
        if got:
            version = int(str((await connection.execute(text("SHOW server_version_num"))).scalar()))
            await connection.execute(text(_set_session_checks(version)))
            self._client_check_set = True
        await connection.commit()
        if got:
            self._session = own
            self._watch_sessions(connection, own)
        else:
            self._maybe_held_by = None
        return got

    def _watch_sessions(self, connection: AsyncConnection, own: int) -> None:
        """From now on every transaction of ``connection`` first checks that it still runs on server
        session ``own``, the lock's: one that does not is refused before it changes anything."""

        def check(sync_connection: Connection) -> None:
            pid = sync_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            if pid != own:
                raise self._pooled(
                    f"a transaction of the migration ran on server session {pid}, not on session "
                    f"{own}, which holds the lock",
                    "this transaction was refused before it changed anything; the revisions applied "
                    "before it are committed and recorded, and the lock is being given back on "
                    f"session {own}",
                )

        self._watched = (connection.sync_connection, check)
        event.listen(connection.sync_connection, "begin", check)

    def _unwatch_sessions(self) -> None:
        if self._watched is not None:
            target, check = self._watched
            self._watched = None
            if event.contains(target, "begin", check):
                event.remove(target, "begin", check)

    async def _refuse_shared_session(self, connection: AsyncConnection, own: int) -> None:
        """:class:`TransactionPoolerError` if another client is handed ``connection``'s server session
        (backend pid ``own``), before any lock or setting is taken.

        A transaction pooler gives each transaction whichever server session is free: with PgBouncer's
        default (last used, first reused) a second client gets the session the first one just let go, and
        with round robin one client's consecutive transactions get different ones (which
        :meth:`try_acquire` sees). A direct connection or a session pooler never shares a session.
        """
        if await _server_sees_this_socket(connection):
            return  # nothing between client and server: no second connection needed (200 starters)
        async with connection.engine.connect() as other:
            others = await _backend_pid(other)
        if others == own:
            raise self._pooled(
                f"another connection was handed this connection's server session {own}"
            )

    async def _unlock_on(self, connection: AsyncConnection, session: int, key: int) -> bool:
        """Unlock on server session ``session``, where the lock was taken. On a direct connection the
        first transaction is there; behind a pooler that moved this connection away, the lock is undone
        in whichever transaction lands there again, else that session is ended the moment it is idle
        (the pooler then drops it, and no client's transaction is cut), for up to
        :data:`_UNLOCK_PATIENCE` seconds. True when this connection undid it itself."""
        deadline = time.monotonic() + _UNLOCK_PATIENCE
        tries = 0
        while True:
            pid, released = (
                await connection.execute(
                    text(
                        "SELECT pg_backend_pid(), CASE WHEN pg_backend_pid() = :session "
                        "THEN pg_advisory_unlock(:key) END"
                    ),
                    {"session": session, "key": key},
                )
            ).one()
            if pid == session and self._client_check_set:
                await connection.execute(text(_RESET_SESSION_CHECKS))
                self._client_check_set = False
            await connection.commit()
            if pid == session:
                return bool(released)
            tries += 1
            # A pooler that keeps handing this client another session: end the lock's once it is idle.
            if tries >= _UNLOCK_TRIES:
                ended = (
                    await connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE pid = :session AND state = 'idle'"
                        ),
                        {"session": session},
                    )
                ).scalar()
                await connection.commit()
                if ended:
                    log.warning(
                        "Ended idle server session %s, which held the %s", session, self.description
                    )
                    return False
            if time.monotonic() > deadline:
                log.warning(
                    "The %s stays with server session %s until the pooler closes it (on a direct "
                    "connection: SELECT pg_terminate_backend(%s))",
                    self.description,
                    session,
                    session,
                )
                return False
            await asyncio.sleep(0.005 if tries < _UNLOCK_TRIES else 0.02)

    def _pooled(
        self,
        seen: str,
        outcome: str = "nothing was migrated and no lock or setting was left behind",
    ) -> TransactionPoolerError:
        return TransactionPoolerError(
            "The database URL goes through a transaction pooler (PgBouncer in pool_mode = transaction, or "
            f"alike): {seen}. There the {self.description} would not keep other migrators out, so "
            f"{outcome}. {TRANSACTION_POOLER_ADVICE}"
        )

    async def release(self, connection: AsyncConnection) -> None:
        self._unwatch_sessions()
        # Also on a connection closed meanwhile (a session in an unknown state is discarded): through a
        # pooler, the reconnected connection may land on the lock's server session, which lives on.
        # (A connection that broke is not given back here: locking._after_loss ends its session.)
        # A failed migration leaves the transaction aborted; an unlock inside it would fail too.
        await connection.rollback()
        key = await self.key(connection)
        session, self._session = self._session, None
        if session is None:
            released = (
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            ).scalar()
            await connection.commit()
        else:
            released = await self._unlock_on(connection, session, key)
        self._maybe_held_by = None
        if not released:
            # The lock was not ours any more: never hand a connection in an unknown lock state back
            # to the pool.
            await connection.invalidate()

    async def end_lost_session(self, connection: AsyncConnection) -> str | None:
        session, self._maybe_held_by = self._maybe_held_by, None
        self._session = None
        if session is None:
            return None
        holds_the_lock = (
            "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND pid = :pid AND objsubid = 1 AND classid::bigint = :classid "
            "AND objid::bigint = :objid)"
        )
        # Only a session holding this very lock is ended: that is the lost one, never a reused pid.
        parts = {"pid": session, **_key_parts(await self.key(connection))}
        ended = (
            await connection.execute(
                text(f"SELECT CASE WHEN ({holds_the_lock}) THEN pg_terminate_backend(:pid) END"),
                parts,
            )
        ).scalar()
        await connection.commit()
        if not ended:
            return None
        for _ in range(100):  # pg_terminate_backend only signals; the session ends a moment later
            alive = (
                await connection.execute(
                    text("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = :pid)"),
                    {"pid": session},
                )
            ).scalar()
            await connection.commit()
            if not alive:
                break
            await asyncio.sleep(0.05)
        return f"ended server session {session}, which still held the {self.description}"

    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        key = await self.key(connection)
        row = (
            await connection.execute(
                text(
                    "SELECT a.pid, a.application_name, a.client_addr::text, a.state, "
                    "extract(epoch FROM now() - a.backend_start)::float8, "
                    "extract(epoch FROM now() - a.query_start)::float8, left(a.query, 80) "
                    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid::bigint = :classid AND l.objid::bigint = :objid "
                    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                _key_parts(key),
            )
        ).first()
        await connection.rollback()
        if row is None:
            return None
        pid, app_name, addr, state, connected_for, query_for, query = row
        return (
            f"PostgreSQL backend pid {pid} (application_name {app_name!r}, client {addr or 'local socket'}, "
            f"connected {connected_for:.0f}s ago, state {state!r}, "
            f"current statement running {query_for or 0:.0f}s: {query!r})"
            + (f"; to stop it: SELECT pg_terminate_backend({pid})" if remedy else "")
        )


# Transactions tried for landing on the session a pooler left the lock on, before also trying to end
# that session whenever it is idle; and the seconds all of it may take.
_UNLOCK_TRIES = 20
_UNLOCK_PATIENCE = 5.0

# On the lock's session, the server probes a silent client every few seconds and gives up on one that
# does not answer (or acknowledge what it was sent) within 30 s, which ends the session and its lock. The
# defaults (the kernel's: two hours) would keep a vanished migrator's lock that long.
_SESSION_CHECKS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "4",
    "tcp_user_timeout": "30000",
}
_RESET_SESSION_CHECKS = (
    "SELECT set_config(name, reset_val, false) FROM pg_settings WHERE name IN "
    f"({', '.join(repr(name) for name in ('client_connection_check_interval', *_SESSION_CHECKS))})"
)


def _set_session_checks(server_version: int) -> str:
    """One statement that sets the lock session's liveness checks this server version has."""
    settings = dict(_SESSION_CHECKS)
    if server_version >= 140000:
        settings["client_connection_check_interval"] = str(CLIENT_CHECK_INTERVAL_MS)
    if server_version < 120000:
        del settings["tcp_user_timeout"]
    return "SELECT " + ", ".join(
        f"set_config('{name}', '{value}', false)" for name, value in settings.items()
    )


def _key_parts(key: int) -> dict[str, int]:
    """A 64-bit advisory key as ``pg_locks`` shows it: two unsigned 32-bit halves."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return {"classid": unsigned >> 32, "objid": unsigned & 0xFFFFFFFF}


async def _server_sees_this_socket(connection: AsyncConnection) -> bool:
    """Whether the server's peer is this connection's own TCP socket (same client port): then no pooler
    or proxy sits between them. False when it cannot tell (a Unix socket, a driver without a transport)."""
    raw = await connection.get_raw_connection()
    transport = getattr(raw.driver_connection, "_transport", None)
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if not isinstance(sockname, tuple) or len(sockname) < 2:
        return False
    seen = (await connection.execute(text("SELECT inet_client_port()"))).scalar()
    await connection.commit()
    return seen is not None and int(seen) == int(sockname[1])


async def _backend_pid(connection: AsyncConnection) -> int:
    """The PostgreSQL server session behind ``connection``'s next transaction (which this one ends)."""
    pid = int((await connection.execute(text("SELECT pg_backend_pid()"))).scalar_one())
    await connection.commit()
    return pid
