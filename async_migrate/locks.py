"""The migration locks, one per dialect, behind one small interface, :class:`MigrationLock`:

a session advisory lock on PostgreSQL (which refuses a transaction pooler, where it could not keep other
migrators out), a named lock on MySQL/MariaDB, a file lock beside a SQLite file. :func:`lock_for` picks
one; :mod:`async_migrate.locking` takes it and waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import (
    TRANSACTION_POOLER_ADVICE,
    LockNotSupportedError,
    TransactionPoolerError,
)
from .sqlite_runner import sqlite_file_path

log = logging.getLogger("async_migrate")

LOCK_KEY_NAMESPACE = "async_migrate"

# client_connection_check_interval (PostgreSQL 14+) ends the backend of a migrator that died mid-statement,
# and with it the lock, instead of letting the statement run to its end first.
CLIENT_CHECK_INTERVAL_MS = 1000


class MigrationLock(ABC):
    """A lock that one migrator at a time may hold."""

    #: What the lock is, for log lines and errors.
    description: str

    @abstractmethod
    async def try_acquire(self, connection: AsyncConnection) -> bool:
        """Take the lock if it is free; never wait. Leaves ``connection`` outside a transaction."""

    @abstractmethod
    async def release(self, connection: AsyncConnection) -> None:
        """Give the lock back. Must be safe to call after a failed migration."""

    @abstractmethod
    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        """Who holds the lock now, in words, or None if nobody holds it. With ``remedy``, also how to
        stop the holder (said once a wait timed out, not to a replica that merely waits its turn)."""


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
            version = (await connection.execute(text("SHOW server_version_num"))).scalar()
            if int(str(version)) >= 140000:
                await connection.execute(
                    text(f"SET client_connection_check_interval = {CLIENT_CHECK_INTERVAL_MS}")
                )
                self._client_check_set = True
        await connection.commit()
        if got:
            self._session = own
            self._watch_sessions(connection, own)
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
        in whichever transaction lands there again, else that session is ended if it is idle (the pooler
        then drops it, and no client's transaction is cut). True when this connection undid it itself."""
        for _ in range(_UNLOCK_TRIES):
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
                await connection.execute(text("RESET client_connection_check_interval"))
                self._client_check_set = False
            await connection.commit()
            if pid == session:
                return bool(released)
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
        log.warning(
            "Ended idle server session %s, which held the %s"
            if ended
            else "The %s stays with server session %s until the pooler closes it (on a direct "
            "connection: SELECT pg_terminate_backend(%s))",
            *((session, self.description) if ended else (self.description, session, session)),
        )
        return False

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
        if not released:
            # The lock was not ours any more: never hand a connection in an unknown lock state back
            # to the pool.
            await connection.invalidate()

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


# Transactions tried for landing on the session a pooler left the lock on, before ending that session.
_UNLOCK_TRIES = 20


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


#: MySQL and MariaDB refuse ``GET_LOCK`` names longer than this.
MYSQL_LOCK_NAME_MAX = 64
_MYSQL_READABLE_MAX = 32  # of the name's readable part; the rest is the namespace and the hash
_MYSQL_UNSAFE = re.compile(r"[^A-Za-z0-9_$.-]")


def mysql_lock_name(database: str, version_table: str) -> str:
    """The ``GET_LOCK`` name for one version table: ``async_migrate:<database>.<table>:<hash>``.

    Named locks are server-wide, so the name is derived from the database (MySQL's schema) and the version
    table: two apps on one server, or two version tables in one database, don't block each other. The
    readable part (ASCII, at most 32 characters) is for people reading ``IS_USED_LOCK`` and the process list;
    the 64-bit hash of the full names is what keeps names apart. At most 63 characters (the limit is 64).
    This derivation must never change between releases, or old and new replicas would migrate at once.
    """
    digest = hashlib.sha256(
        "\x00".join((LOCK_KEY_NAMESPACE, database, version_table)).encode()
    ).hexdigest()[:16]
    readable = _MYSQL_UNSAFE.sub("_", f"{database}.{version_table}")[:_MYSQL_READABLE_MAX]
    return (
        f"{LOCK_KEY_NAMESPACE}:{readable}:{digest}"  # 13 + 1 + 32 + 1 + 16 <= MYSQL_LOCK_NAME_MAX
    )


class MySQLNamedLock(MigrationLock):
    """A MySQL/MariaDB named lock (``GET_LOCK``) on a name derived from database and version table.

    A named lock belongs to the session, not to a transaction: it survives Alembic's commits and the implicit
    commit of every DDL statement, and the server drops it when the session ends (the holder's process died
    or its connection was closed).
    """

    def __init__(self, version_table: str, version_table_schema: str | None) -> None:
        self.version_table = version_table
        self.version_table_schema = version_table_schema
        self.description = f"MySQL named lock for version table {version_table!r}"
        self._name: str | None = None

    async def name(self, connection: AsyncConnection) -> str:
        if self._name is None:
            row = (
                await connection.execute(text("SELECT DATABASE(), @@lower_case_table_names"))
            ).one()
            database = self.version_table_schema or row[0] or ""
            table = self.version_table
            if row[1] and int(row[1]) != 0:
                # Names are case-insensitive on this server: 'App' and 'app' are one database.
                database, table = database.lower(), table.lower()
            self._name = mysql_lock_name(database, table)
            self.description = (
                f"MySQL named lock {self._name!r} (database {database!r}, version table "
                f"{database}.{table})"
            )
        return self._name

    async def try_acquire(self, connection: AsyncConnection) -> bool:
        name = await self.name(connection)
        # Timeout 0: never wait inside the server; the caller polls without holding a connection.
        got = (await connection.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name})).scalar()
        await connection.commit()
        return got is not None and int(got) == 1

    async def release(self, connection: AsyncConnection) -> None:
        await connection.rollback()
        name = await self.name(connection)
        released = (
            await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        ).scalar()
        await connection.commit()
        if released is None or int(released) != 1:
            # 0: another session holds it; NULL: nobody does. Either way this session's lock state is not
            # what it should be: never hand such a connection back to a pool.
            await connection.invalidate()

    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        name = await self.name(connection)
        holder = (
            await connection.execute(text("SELECT IS_USED_LOCK(:name)"), {"name": name})
        ).scalar()
        if holder is None:
            await connection.rollback()
            return None
        row = (
            await connection.execute(
                text(
                    "SELECT p.USER, p.HOST, p.DB, p.COMMAND, p.TIME, p.STATE, LEFT(p.INFO, 80), "
                    "CONNECTION_ID() "
                    "FROM information_schema.PROCESSLIST p WHERE p.ID = :id"
                ),
                {"id": int(holder)},
            )
        ).first()
        await connection.rollback()
        if row is None:
            # Without the PROCESS privilege only one's own user's sessions are listed.
            return (
                f"MySQL connection id {holder} (not in the process list visible to this user: the PROCESS "
                f"privilege shows it)" + (f"; to stop it: KILL {holder}" if remedy else "")
            )
        user, host, db, command, seconds, state, info, own_id = row
        if int(own_id) == int(holder):
            return f"this migrator's own MySQL connection id {holder}"
        doing = f"running {info!r}" if info else "idle between statements"
        return (
            f"MySQL connection id {holder} (user {user!r}, host {host!r}, database {db!r}, "
            f"command {command!r} for {seconds or 0}s, state {state or ''!r}, {doing})"
            + (f"; to stop it: KILL {holder}" if remedy else "")
        )


# Keys of locks held in this process where no file can be used (in-memory SQLite).
_PROCESS_HELD: set[str] = set()


class SQLiteFileLock(MigrationLock):
    """An exclusive ``flock`` on a file beside the database file, so processes on one machine exclude each
    other. The OS drops it when the holder's process dies. An in-memory database, which only its own engine
    can see, is locked within the process."""

    def __init__(self, database: str | None) -> None:
        # Beside the file itself, not beside the path it was reached by: two replicas reaching one file
        # through a symlink (or a relative and an absolute path, or a file: URI) must take one lock.
        file = sqlite_file_path(database)
        self.in_memory = file is None
        self.path = None if file is None else Path(f"{file}.migrate-lock")
        self.description = (
            "in-process lock for an in-memory SQLite database"
            if self.path is None
            else f"file lock {self.path}"
        )
        self._file: IO[str] | None = None
        self._memory_key = ""

    async def try_acquire(self, connection: AsyncConnection) -> bool:
        if self.path is None:
            self._memory_key = f"{id(connection.engine.sync_engine)}"
            if self._memory_key in _PROCESS_HELD:
                return False
            _PROCESS_HELD.add(self._memory_key)
            return True
        import fcntl

        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S%z')}\n"
        )
        handle.flush()
        self._file = handle
        return True

    async def release(self, connection: AsyncConnection) -> None:
        await connection.rollback()
        if self.path is None:
            _PROCESS_HELD.discard(self._memory_key)
            return
        if self._file is not None:
            import fcntl

            handle, self._file = self._file, None
            try:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            finally:
                handle.close()

    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        if self.path is None:
            key = f"{id(connection.engine.sync_engine)}"
            return "another task of this process" if key in _PROCESS_HELD else None
        if self._file is not None:
            return f"this migrator (pid {os.getpid()})"
        import fcntl

        try:
            with open(self.path, "a+") as probe:
                try:
                    fcntl.flock(probe.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    probe.seek(0)
                    holder = probe.read().strip() or "another process"
                    return f"{holder} (lock file {self.path})"
                fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
                return None
        except OSError:
            return None


def lock_for(
    connection: AsyncConnection, version_table: str, version_table_schema: str | None
) -> MigrationLock:
    """The migration lock suited to ``connection``'s database."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return PostgresAdvisoryLock(version_table, version_table_schema)
    if dialect == "sqlite":
        return SQLiteFileLock(connection.engine.url.database)
    if dialect in ("mysql", "mariadb"):
        return MySQLNamedLock(version_table, version_table_schema)
    raise LockNotSupportedError(
        f"async_migrate has no migration lock for {dialect} databases yet. Pass lock=False to the "
        "Migrator (MIGRATE_LOCK = False in the app config, or --no-lock on the CLI) and make sure only one "
        "process migrates at a time."
    )
