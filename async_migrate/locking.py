"""The migration lock: one migrator per database (and version table) at a time, across processes.

One small interface, :class:`MigrationLock`, with a class per dialect, and the loop that waits for it,
:func:`run_locked`. Locks are *tried*, never waited on inside the database: waiters poll with backoff,
closing their connection between attempts, so that many waiting replicas hold no connection while they
wait and notice at once when another replica has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import struct
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, backoff, cancel_requested, discard
from .errors import LockNotSupportedError, LockTimeoutError
from .settings import MigrationSettings
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
        got = bool(
            (
                await connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": key})
            ).scalar()
        )
        if got:
            version = (await connection.execute(text("SHOW server_version_num"))).scalar()
            if int(str(version)) >= 140000:
                await connection.execute(
                    text(f"SET client_connection_check_interval = {CLIENT_CHECK_INTERVAL_MS}")
                )
                self._client_check_set = True
        await connection.commit()
        return got

    async def release(self, connection: AsyncConnection) -> None:
        # A failed migration leaves the transaction aborted; an unlock inside it would fail too.
        await connection.rollback()
        key = await self.key(connection)
        released = (
            await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        ).scalar()
        if self._client_check_set:
            await connection.execute(text("RESET client_connection_check_interval"))
            self._client_check_set = False
        await connection.commit()
        if not released:
            # The lock was not ours any more: never hand a connection in an unknown lock state back
            # to the pool.
            await connection.invalidate()

    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        key = await self.key(connection) & 0xFFFFFFFFFFFFFFFF
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
                {"classid": key >> 32, "objid": key & 0xFFFFFFFF},
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


async def try_lock(lock: MigrationLock, connection: AsyncConnection) -> bool:
    """Take ``lock`` if it is free, unless the task was asked to cancel (even in a way asyncio swallowed)."""
    acquired = False
    try:
        if cancel_requested():
            raise asyncio.CancelledError("cancelled before taking the migration lock")
        acquired = await lock.try_acquire(connection)
        if acquired and cancel_requested():
            raise asyncio.CancelledError("cancelled while taking the migration lock")
        return acquired
    except BaseException:
        # Cancelled or failed half-way: the lock may be ours anyway. Give it back (a file lock lives
        # outside the session), then close the session for good: a closed session holds no lock.
        if acquired:
            with contextlib.suppress(Exception):
                await lock.release(connection)
        await discard(connection)
        raise


async def release_lock(lock: MigrationLock, connection: AsyncConnection) -> None:
    """Give ``lock`` back; if that fails, close the session, which drops a session lock with it."""
    try:
        await lock.release(connection)
    except BaseException:
        log.warning("Could not release the %s cleanly; closing its connection", lock.description)
        await discard(connection)
        raise


class LockedWork(Protocol):
    """A command that changes the database, as :func:`run_locked` runs it. ``current`` is always what the
    version table says at that moment."""

    def precheck(self, current: tuple[str, ...]) -> None:
        """Refuse a state the command cannot work from; cheap, since waiters run it at every poll."""

    def check(self, current: tuple[str, ...]) -> None:
        """The rest of the refusals, run once, under the lock, just before :meth:`work`."""

    def is_done(self, current: tuple[str, ...]) -> bool:
        """Whether there is nothing (left) to do: then no lock is taken."""

    async def work(self, connection: AsyncConnection, current: tuple[str, ...]) -> None:
        """Do it, on ``connection``, which holds the lock."""


async def run_locked(database: Database, settings: MigrationSettings, job: LockedWork) -> None:
    """Run ``job`` under the migration lock of ``database``, unless it is done already.

    Waiters poll: each attempt opens a connection, re-reads the version table, leaves if another migrator
    finished the work meanwhile, and otherwise tries the lock once and closes the connection again, until
    ``settings.lock_timeout`` (:class:`~async_migrate.errors.LockTimeoutError`, naming the holder).
    """
    await _LockQueue(database, settings, job).run()


class _LockQueue:
    """One command's wait for the lock: its deadlines, and when it started waiting."""

    def __init__(self, database: Database, settings: MigrationSettings, job: LockedWork) -> None:
        self.database = database
        self.settings = settings
        self.job = job
        self.connect_deadline = time.monotonic() + settings.connect_timeout
        self.lock_deadline: float | None = None
        self.waited_since: float | None = None
        # Kept across polls: its key is read from the database once.
        self.lock: MigrationLock | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            deadline = max(self.connect_deadline, self.lock_deadline or self.connect_deadline)
            async with self.database.connect(deadline) as connection:
                if await self._attempt(connection):
                    return
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    async def _attempt(self, connection: AsyncConnection) -> bool:
        """One poll; True when the work is done (by this migrator or another)."""
        current = await self.database.read_current_heads(connection)
        self.job.precheck(current)
        if self.job.is_done(current):
            if self.waited_since is not None:
                log.info(
                    "Another migrator brought %s to %s while this one waited %.1fs; nothing to do",
                    self.database.url,
                    ", ".join(current) or "base",
                    time.monotonic() - self.waited_since,
                )
            return True
        if not self.settings.lock:
            self.job.check(current)
            await self.job.work(connection, current)
            return True
        self.lock = self.lock or lock_for(
            connection, self.database.version_table, self.database.version_table_schema
        )
        if not await try_lock(self.lock, connection):
            await self._still_waiting(self.lock, connection)
            return False
        if self.waited_since is not None:
            log.info(
                "Took the %s after waiting %.1fs",
                self.lock.description,
                time.monotonic() - self.waited_since,
            )
        try:
            # Another migrator may have finished between our read and our lock.
            current = await self.database.read_current_heads(connection)
            self.job.precheck(current)
            if not self.job.is_done(current):
                self.job.check(current)
                await self.job.work(connection, current)
        finally:
            await release_lock(self.lock, connection)
        return True

    async def _still_waiting(self, lock: MigrationLock, connection: AsyncConnection) -> None:
        """Note the start of the wait (and who holds the lock), or give up once it lasted too long."""
        now = time.monotonic()
        timeout = self.settings.lock_timeout
        if self.lock_deadline is None:
            self.lock_deadline = now + timeout
            self.waited_since = now
            log.info(
                "Waiting up to %.0fs for the %s, held by %s",
                timeout,
                lock.description,
                await lock.describe_holder(connection, remedy=False) or "another migrator",
            )
        elif now >= self.lock_deadline:
            holder = await lock.describe_holder(connection)
            raise LockTimeoutError(
                f"Gave up after waiting {timeout:.0f}s for the {lock.description}, held by "
                f"{holder or 'another migrator (it let go just now)'}. Another deploy may still be "
                "migrating: wait for it, raise the lock timeout, or stop the holder if it is stuck.",
                holder,
            )
