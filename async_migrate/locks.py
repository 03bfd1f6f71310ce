"""The migration locks, one per dialect, behind one small interface, :class:`MigrationLock`:

a session advisory lock on PostgreSQL (which refuses a transaction pooler, where it could not keep other
migrators out), a named lock on MySQL/MariaDB, a file lock beside a SQLite file. :func:`lock_for` picks
one; :mod:`async_migrate.locking` takes it and waits for it.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import LockNotSupportedError
from .migration_lock import LOCK_KEY_NAMESPACE, MigrationLock
from .mysql_lock import MYSQL_LOCK_NAME_MAX, MySQLNamedLock, mysql_lock_name
from .postgres_lock import CLIENT_CHECK_INTERVAL_MS, PostgresAdvisoryLock, postgres_lock_key
from .sqlite_lock import SQLiteFileLock

__all__ = [
    "CLIENT_CHECK_INTERVAL_MS",
    "LOCK_KEY_NAMESPACE",
    "MYSQL_LOCK_NAME_MAX",
    "MigrationLock",
    "MySQLNamedLock",
    "PostgresAdvisoryLock",
    "SQLiteFileLock",
    "lock_for",
    "mysql_lock_name",
    "postgres_lock_key",
]


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
