"""The MySQL/MariaDB migration lock: a named lock (``GET_LOCK``), which belongs to the session."""

from __future__ import annotations

import hashlib
import re

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .migration_lock import LOCK_KEY_NAMESPACE, MigrationLock

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
        # This migrator's connection id while it may hold the lock (see end_lost_session).
        self._maybe_held_by: int | None = None

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
        got, own = (
            await connection.execute(
                text("SELECT GET_LOCK(:name, 0), CONNECTION_ID()"), {"name": name}
            )
        ).one()
        await connection.commit()
        acquired = got is not None and int(got) == 1
        self._maybe_held_by = int(own) if acquired else None
        return acquired

    async def release(self, connection: AsyncConnection) -> None:
        if connection.invalidated:
            return  # the session broke: its lock went with it, or goes with end_lost_session()
        await connection.rollback()
        name = await self.name(connection)
        released = (
            await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
        ).scalar()
        await connection.commit()
        self._maybe_held_by = None
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

    async def end_lost_session(self, connection: AsyncConnection) -> str | None:
        session, self._maybe_held_by = self._maybe_held_by, None
        if session is None:
            return None
        name = await self.name(connection)
        holder = (
            await connection.execute(text("SELECT IS_USED_LOCK(:name)"), {"name": name})
        ).scalar()
        if holder is None or int(holder) != session:
            await connection.rollback()
            return None
        await connection.execute(text(f"KILL {session}"))
        await connection.commit()
        return f"ended connection id {session}, which still held the {self.description}"
