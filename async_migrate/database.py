"""One database as migrations see it: its engine, connections set up for migrating, the version table.

:class:`Database` connects with bounded retries (a database still starting up, too many clients), turns a
failure into a :class:`~async_migrate.errors.DatabaseUnreachableError` that names host, port and database
but never the password, and reads the version table without loading Alembic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, pool
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import asyncpg_simple_query
from .errors import (
    TRANSACTION_POOLER_ADVICE,
    ConfigurationError,
    DatabaseUnreachableError,
    TransactionPoolerError,
    exception_chain,
    looks_like_transaction_pooler,
    sqlstate,
)
from .sqlite_runner import read_version_table, sqlite_file_url
from .urls import async_url, hide_password, render_url

log = logging.getLogger("async_migrate")

# The extra of this package that installs each asyncio driver.
_DRIVER_EXTRAS = {"asyncpg": "postgresql", "aiosqlite": "sqlite", "asyncmy": "mysql"}

# SQLSTATEs worth retrying a connection for: too many clients, server starting up, connection failures.
_TRANSIENT_SQLSTATES = {"53300", "57P03", "08000", "08001", "08003", "08004", "08006"}


def engine_from(engine_or_url: Any) -> tuple[AsyncEngine, bool]:
    """The engine to use, and whether it was made here (so its owner disposes of it)."""
    if isinstance(engine_or_url, AsyncEngine):
        async_url(engine_or_url.url)
        return engine_or_url, False
    if isinstance(engine_or_url, (str, URL)):
        return engine_for(async_url(engine_or_url)), True
    raise ConfigurationError(
        f"Migrator needs an AsyncEngine or a database URL, not {type(engine_or_url).__name__}."
    )


def engine_for(url: URL) -> AsyncEngine:
    """An engine for migrations on ``url``."""
    # Migrations are rare and short: no pool to outlive the event loop. An in-memory SQLite database
    # lives in its one connection, so that one is kept.
    in_memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    poolclass = pool.StaticPool if in_memory else pool.NullPool
    return create_async_engine(url, poolclass=poolclass)


def cancel_requested() -> bool:
    """Whether someone asked to cancel the current task and nobody withdrew it (``Task.uncancel``).

    On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives just as the awaited operation
    completes (CPython gh-86296, fixed in 3.12). Drivers connect through it (asyncmy always, asyncpg with a
    timeout), so a waiter cancelled while connecting could carry on and later take the lock; the request
    stays visible in ``cancelling()``.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def backoff(attempt: int, base: float = 0.05, cap: float = 1.0) -> float:
    """Exponential backoff with full jitter, so that many waiters don't poll in step."""
    return float(random.uniform(0.5, 1.0) * min(cap, base * (2**attempt)))


async def discard(connection: AsyncConnection) -> None:
    """Close ``connection`` for good: a session in an unknown state never goes back to a pool."""
    with contextlib.suppress(Exception):
        await connection.invalidate()


def close_when_connected(connecting: asyncio.Future[AsyncConnection]) -> None:
    """Done-callback for a connect whose caller gave up on it (cancelled, timed out): close the
    connection it made, rather than leave it to the garbage collector (aiosqlite then warns, a server
    keeps the session until its socket is noticed dead)."""
    if not connecting.cancelled() and connecting.exception() is None:
        _pending_closes.add(task := asyncio.ensure_future(connecting.result().close()))
        task.add_done_callback(_pending_closes.discard)


# Strong references to close() tasks started from callbacks, which the loop alone would not keep.
_pending_closes: set[asyncio.Future[None]] = set()


@contextlib.asynccontextmanager
async def answered_within(connection: AsyncConnection, seconds: float) -> AsyncIterator[None]:
    """A step around the migration (a version table read, the lock's statements), given ``seconds`` for
    the server to answer: a connection silent for longer counts as broken (half-open TCP answers
    nothing, ever) and is closed, and a ``TimeoutError`` says so. The revisions' own statements are
    never run under it."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        await discard(connection)
        raise TimeoutError(f"no answer from the server for {seconds:g}s") from None


# TCP keepalive on the client's socket: a server host that vanished (or a network that drops every
# packet) is noticed within about 30 s even while a revision's statement runs, which no client-side
# deadline may cut short. A live server answers the probes however long its statement takes.
_KEEPALIVE = (
    ("SO_KEEPALIVE", socket.SOL_SOCKET, 1),
    ("TCP_KEEPIDLE", socket.IPPROTO_TCP, 10),
    ("TCP_KEEPINTVL", socket.IPPROTO_TCP, 5),
    ("TCP_KEEPCNT", socket.IPPROTO_TCP, 4),
    ("TCP_USER_TIMEOUT", socket.IPPROTO_TCP, 30000),
)


async def _probe_silent_server(connection: AsyncConnection) -> None:
    """Turn on TCP keepalive for the migration connection's socket, where the driver shows it."""
    raw = await connection.get_raw_connection()
    transport = getattr(raw.driver_connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for option, level, value in _KEEPALIVE:
        if hasattr(socket, option):  # not every platform has each
            with contextlib.suppress(OSError):
                sock.setsockopt(level, getattr(socket, option), value)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed if tried again shortly."""
    if sqlstate(exc) in _TRANSIENT_SQLSTATES:
        return True
    return any(
        isinstance(cause, (ConnectionError, TimeoutError))
        or (isinstance(cause, OSError) and not isinstance(cause, PermissionError))
        for cause in exception_chain(exc)
    )


def checked_metadata(metadata: object) -> sa.MetaData | None:
    """``metadata`` if it is a MetaData (or None), else a ConfigurationError saying what to pass."""
    if metadata is not None and not isinstance(metadata, sa.MetaData):
        raise ConfigurationError(
            f"metadata must be a sqlalchemy.MetaData (e.g. Base.metadata), not {type(metadata).__name__}."
        )
    return metadata


def _check_identifier(what: str, name: str) -> None:
    if not name or not name.replace("_", "").replace("$", "").isalnum() or name[0].isdigit():
        raise ConfigurationError(
            f"{what} {name!r} is not a usable name: use letters, digits and underscores, not starting "
            "with a digit."
        )


def _emit_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN")


class NoDatabase:
    """Stands for a database the app did not configure: a Migrator made with it runs the commands that
    read only the scripts (``heads``, ``history``, ``show``, ``branches``, ``init``, ``revision``,
    ``merge``, ``edit``); any that would reach the database raises a ConfigurationError saying ``reason``.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Database:
    """One database: its URL, its engine (made on first use when given a URL), and its version table.

    :param engine_or_url: an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` (left open by :meth:`aclose`),
        or a URL with an asyncio driver (the engine made from it is disposed of by :meth:`aclose`).
    :param version_table: Alembic's version table, and its schema (None: the connection's default).
    """

    def __init__(
        self,
        engine_or_url: AsyncEngine | URL | str | NoDatabase,
        version_table: str = "alembic_version",
        version_table_schema: str | None = None,
    ) -> None:
        # Built from a URL, the engine is made on first use: the no-op fast path on a SQLite file never
        # needs it, and making it imports the driver and its dialect.
        self._engine: AsyncEngine | None = None
        self.owns_engine = not isinstance(engine_or_url, AsyncEngine)
        self.missing = engine_or_url.reason if isinstance(engine_or_url, NoDatabase) else None
        if isinstance(engine_or_url, NoDatabase):
            # Never connected to (require() and the engine refuse first); env.py sees a URL all the same.
            self.sqlalchemy_url = URL.create("sqlite+aiosqlite")
        elif isinstance(engine_or_url, (str, URL)):
            self.sqlalchemy_url = async_url(engine_or_url)
        else:
            self._engine, _ = engine_from(engine_or_url)
            self.sqlalchemy_url = self._engine.url
        _check_identifier("version_table", version_table)
        if version_table_schema is not None:
            _check_identifier("version_table_schema", version_table_schema)
        self.version_table = version_table
        self.version_table_schema = version_table_schema

    def require(self) -> None:
        """Raise the ConfigurationError of a database that was not configured (see :class:`NoDatabase`)."""
        if self.missing is not None:
            raise ConfigurationError(self.missing)

    @property
    def engine(self) -> AsyncEngine:
        """The AsyncEngine (made from the URL on first use)."""
        self.require()
        if self._engine is None:
            try:
                self._engine = engine_for(self.sqlalchemy_url)
            except ModuleNotFoundError as exc:
                driver = exc.name or self.sqlalchemy_url.get_driver_name()
                extra = _DRIVER_EXTRAS.get(driver)
                how = (
                    f"`pip install 'async_migrate[{extra}]'`"
                    if extra
                    else f"`pip install {driver}`"
                )
                raise ConfigurationError(
                    f"The database driver for {self.url} is not installed ({exc}): install it with {how}."
                ) from None
        return self._engine

    @property
    def url(self) -> str:
        """The URL with the password hidden."""
        if self.missing is not None:
            return "(no database configured)"
        return render_url(self.sqlalchemy_url)

    async def aclose(self) -> None:
        """Dispose of the engine, if it was made here."""
        if self.owns_engine and self._engine is not None:
            await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def connect(self, deadline: float) -> AsyncIterator[AsyncConnection]:
        """One connection set up for migrations, retrying transient failures until ``deadline``
        (``time.monotonic()``).

        On SQLite the connection runs in real transactions (the driver's own mode would not BEGIN before
        DDL), so that a failed revision leaves nothing half-applied. On asyncpg it sends migration
        statements in one round trip (:mod:`async_migrate.asyncpg_simple_query`).
        """
        connection = await self._connect_with_retries(deadline)
        if cancel_requested():
            await connection.close()
            raise asyncio.CancelledError("cancelled while connecting")
        try:
            if connection.dialect.name == "sqlite":
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                event.listen(connection.sync_connection, "begin", _emit_begin)
            elif connection.dialect.driver == "asyncpg":
                asyncpg_simple_query.enable(self.engine.sync_engine)
                await connection.execution_options(**{asyncpg_simple_query.OPTION: True})
                await _probe_silent_server(connection)
            yield connection
        finally:
            # Closed even when the task is cancelled meanwhile.
            await asyncio.shield(connection.close())

    async def _connect_once(self) -> AsyncConnection:
        """``engine.connect()``, which a cancellation of the caller does not cut half-way: the connect
        finishes in the background and its connection is closed."""
        connecting = asyncio.ensure_future(self.engine.connect())
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            if self.sqlalchemy_url.get_backend_name() == "sqlite":
                # aiosqlite's thread finishes the connect whatever happens, then reports to this loop:
                # wait for it (a local file: milliseconds) and close, so that no thread outlives a loop
                # that asyncio.run closes right after the cancellation.
                with contextlib.suppress(BaseException):
                    await (await connecting).close()
            else:
                connecting.add_done_callback(close_when_connected)
            raise

    async def _connect_with_retries(self, deadline: float) -> AsyncConnection:
        attempt = 0
        while True:
            try:
                return await self._connect_once()
            except InvalidRequestError as exc:
                raise ConfigurationError(
                    f"Cannot connect to {self.url}: {hide_password(str(exc), self.sqlalchemy_url)}"
                ) from None
            except (DBAPIError, OSError, TimeoutError) as exc:
                if looks_like_transaction_pooler(exc):
                    raise TransactionPoolerError(
                        f"Connecting to {self.url} failed with {self.describe_cause(exc)}: another "
                        "client's session was handed to this connection, which a transaction pooler "
                        "(PgBouncer in pool_mode = transaction, or alike) does. Nothing was migrated. "
                        + TRANSACTION_POOLER_ADVICE
                    ) from None
                remaining = deadline - time.monotonic()
                if not is_transient(exc) or remaining <= 0:
                    if self.engine.dialect.name == "sqlite":
                        # aiosqlite stops its worker thread after a failed connect with a future on this
                        # loop; a loop closed before that thread answers makes it print a traceback.
                        await asyncio.sleep(0.1)
                    raise self.unreachable(exc) from None
                delay = min(remaining, backoff(attempt, base=0.2, cap=2.0))
                if attempt % 5 == 0:
                    log.info(
                        "Database %s not reachable yet (%s); retrying for up to %.0fs",
                        self.url,
                        self.describe_cause(exc),
                        remaining,
                    )
                attempt += 1
                await asyncio.sleep(delay)

    def describe_cause(self, exc: BaseException) -> str:
        """The first line of the driver's own error behind ``exc`` (asyncpg's ``DivisionByZeroError``,
        not the adapter's generic ``Error``), with the password hidden and no final period."""
        driver = next(
            (
                cause
                for cause in exception_chain(exc)
                if not type(cause).__module__.startswith(("sqlalchemy", "async_migrate"))
            ),
            None,
        )
        cause = driver or getattr(exc, "orig", None) or exc
        text = f"{type(cause).__name__}: {cause}".strip().rstrip(":")
        first = text.splitlines()[0] if text else type(cause).__name__
        return hide_password(first.rstrip().rstrip("."), self.sqlalchemy_url)

    def unreachable(self, exc: BaseException) -> DatabaseUnreachableError:
        """The error for a database that could not be reached: where it was looked for, and why not."""
        url = self.sqlalchemy_url
        if url.get_backend_name() == "sqlite":
            where = f"file {url.database!r}"
            advice = (
                "Check that the file's folder exists and that this process may read and write the file "
                "and its folder."
            )
        else:
            where = f"host {url.host or 'localhost'}, port {url.port or 'default'}, database {url.database!r}"
            advice = (
                "Check that the server is running and that the URL (host, port, user, password, "
                "database name) is right."
            )
        return DatabaseUnreachableError(
            f"Could not connect to the database {self.url} ({where}): {self.describe_cause(exc)}. {advice}"
        )

    async def read_current_heads(self, connection: AsyncConnection) -> tuple[str, ...]:
        """The revisions in the version table: one cheap read, no script loaded.

        Read directly rather than through a MigrationContext, which would log two INFO lines on every
        readiness probe.
        """
        name, schema = self.version_table, self.version_table_schema
        table = sa.table(name, sa.column("version_num"), schema=schema)

        def read(sync_connection: Connection) -> tuple[str, ...]:
            try:
                return tuple(sync_connection.execute(sa.select(table.c.version_num)).scalars())
            except DBAPIError:
                # Usually "no such table" (a new database): ask, rather than ask first on every start.
                sync_connection.rollback()
                if not sa.inspect(sync_connection).has_table(name, schema=schema):
                    return ()
                # Another migrator created it meanwhile (or the read failed for another reason: then
                # this one fails again, and says why).
                return tuple(sync_connection.execute(sa.select(table.c.version_num)).scalars())

        heads = await connection.run_sync(read)
        await connection.rollback()
        return heads

    async def read_version_table(self, deadline: float) -> tuple[str, ...]:
        """The database's revisions: on a SQLite file by a plain sqlite3 read in this thread (the engine's
        driver thread would cost more than the read), else on a connection of the engine."""
        file_url = (
            sqlite_file_url(self.sqlalchemy_url) if self.version_table_schema is None else None
        )
        current = read_version_table(file_url, self.version_table) if file_url else None
        if current is None:
            async with self.connect(deadline) as connection:
                current = await self.read_current_heads(connection)
        return current
