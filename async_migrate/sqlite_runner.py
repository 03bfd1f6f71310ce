"""Upgrades and downgrades of a SQLite file, run in a worker thread on a plain ``sqlite3`` connection.

Through aiosqlite every statement crosses to its worker thread and back, and a commit per revision costs
a disk flush each: on 1,000 revisions that is most of the time. Here Alembic runs on a synchronous
connection to the same file in one thread, in one transaction with a SAVEPOINT per revision: a failing
revision is rolled back to its savepoint, the revisions before it are committed, and the database is left
at the last good revision, as with a transaction per revision, for one flush in all.

The caller holds the migration lock (a file lock) and reads the version table through its own async
connection, which holds no transaction meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote

from sqlalchemy import create_engine, event, pool
from sqlalchemy.engine import URL, Connection, Engine

T = TypeVar("T")


def sqlite_file_url(url: URL) -> URL | None:
    """The synchronous URL of the same SQLite file, or None for a database only its own engine can see
    (in memory)."""
    database = url.database or ""
    if (
        url.get_backend_name() != "sqlite"
        or database in ("", ":memory:")
        or "mode=memory" in str(url)
    ):
        return None
    return url.set(drivername="sqlite+pysqlite")


def sqlite_file_path(database: str | None) -> Path | None:
    """The file a SQLite database name stands for (a path, or a ``file:`` URI's path), resolved, so that
    a symlink or a relative path names the same file; None for an in-memory database."""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    path = database
    if path.startswith("file:"):
        path = unquote(path[len("file:") :].split("?", 1)[0])
        if path.startswith("//"):  # file:///abs/path
            path = path[2:]
    return Path(path).resolve()


def read_version_table(url: URL, table: str) -> tuple[str, ...] | None:
    """The revisions in ``table`` of the SQLite file, read on a plain read-only ``sqlite3`` connection
    (no engine, no driver thread: the no-op startup check). None whenever that is not a plain answer: no
    file, no table, the file locked by a writer, options in the URL; the caller then asks its engine."""
    if url.query or not url.database:
        return None
    try:
        uri = Path(url.database).resolve().as_uri() + "?mode=ro"
        # timeout=0: a writer holds the file, so a migration may be running; the full path waits properly.
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=0)) as connection:
            rows = connection.execute(f'SELECT version_num FROM "{table}"').fetchall()
    except (sqlite3.Error, OSError, ValueError):
        return None
    return tuple(str(row[0]) for row in rows)


def _engine(url: URL) -> Engine:
    engine = create_engine(url, poolclass=pool.NullPool)

    @event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection: object, record: object) -> None:
        # The sqlite3 module would not BEGIN before DDL; transactions are begun explicitly below.
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class RevisionSavepoints:
    """One transaction, a savepoint per revision: :meth:`revision_done` keeps the revision just applied.

    The savepoints are plain SQL on the driver's connection: SQLAlchemy's ``begin_nested`` compiles a new
    statement for each uniquely named savepoint, two per revision, which on long histories costs more
    than the savepoints themselves.
    """

    NAME = "async_migrate_revision"

    def __init__(self, connection: Connection, stop: threading.Event | None = None) -> None:
        self.connection = connection
        self.stop = stop
        self.outer = connection.begin()
        self._driver = connection.connection.driver_connection
        self._run(f"SAVEPOINT {self.NAME}")

    def _run(self, statement: str) -> None:
        self._driver.execute(statement)  # type: ignore[union-attr]

    def revision_done(self) -> None:
        self._run(f"RELEASE SAVEPOINT {self.NAME}")
        self._run(f"SAVEPOINT {self.NAME}")
        if self.stop is not None and self.stop.is_set():
            # The caller was cancelled: keep the revisions done, start no other.
            raise StoppedAtRevisionBoundary()

    def finish(self, failed: bool) -> None:
        if failed:
            self._run(f"ROLLBACK TO SAVEPOINT {self.NAME}")
        self._run(f"RELEASE SAVEPOINT {self.NAME}")
        self.outer.commit()


class StoppedAtRevisionBoundary(Exception):
    """Raised between two revisions in the worker thread once the awaiting task was cancelled."""


def run_in_savepoints(
    url: URL,
    work: Callable[[Connection, RevisionSavepoints], T],
    stop: threading.Event | None = None,
) -> T:
    """Run ``work`` on a new connection to the file, in one transaction with a savepoint per revision;
    once ``stop`` is set, the revisions done so far are committed and no further one is started."""
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            savepoints = RevisionSavepoints(connection, stop)
            try:
                result = work(connection, savepoints)
            except BaseException:
                with contextlib.suppress(Exception):
                    savepoints.finish(failed=True)
                raise
            savepoints.finish(failed=False)
            return result
    finally:
        engine.dispose()


async def in_thread(function: Callable[[threading.Event], T]) -> T:
    """``function(stop)`` in a worker thread. Cancelling the caller sets ``stop`` (the function ends at its
    next safe point: the next revision boundary) and waits for the thread first: the migration lock must
    not be released while the thread still migrates."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(function, stop))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the thread's StoppedAtRevisionBoundary is expected here
        raise
