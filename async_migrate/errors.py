"""Exceptions raised by async_migrate, and how to read the drivers' exceptions behind a failure.

Every error derives from :class:`AsyncMigrateError`; each message says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

#: Said when a Quart app's command finds no :class:`~async_migrate.extension.Migrate` registered on it.
NO_EXTENSION = (
    "This app has no async_migrate extension: call Migrate(app, db) or migrate.init_app(app, db)."
)


class AsyncMigrateError(Exception):
    """Base class of every error async_migrate raises."""


class ConfigurationError(AsyncMigrateError):
    """The Migrator or the Quart extension was set up with something it cannot use."""


class DatabaseUnreachableError(AsyncMigrateError):
    """The database could not be reached (refused, unknown host, bad password, missing database)."""


class CommandError(AsyncMigrateError):
    """An Alembic command could not do its job; nothing was changed by it."""


class MultipleHeadsError(CommandError):
    """The scripts have more than one head and the target ``head`` is ambiguous."""

    def __init__(self, message: str, heads: Sequence[str]) -> None:
        super().__init__(message)
        self.heads = tuple(heads)


class UnknownRevisionError(CommandError):
    """The database is at a revision the migration scripts do not know."""

    #: Whether the ledger was asked for a copy of the missing scripts (the message then says so).
    recovery_checked = False

    def __init__(self, message: str, revisions: Sequence[str]) -> None:
        super().__init__(message)
        self.revisions = tuple(revisions)


class MissingScriptError(CommandError):
    """A script names a ``down_revision`` (or ``depends_on``) that no script has: the history is broken."""

    #: Whether the ledger was asked for a copy of the missing scripts (the message then says so).
    recovery_checked = False

    def __init__(self, message: str, revisions: Sequence[str]) -> None:
        super().__init__(message)
        self.revisions = tuple(revisions)


class NotUpToDateError(CommandError):
    """``migrate`` was asked for while the database is behind the scripts."""


class MigrationFailedError(CommandError):
    """A revision raised while it ran; its transaction was rolled back."""

    def __init__(self, message: str, revision: str | None, current_heads: Sequence[str]) -> None:
        super().__init__(message)
        self.revision = revision
        self.current_heads = tuple(current_heads)


class ModelsDifferError(AsyncMigrateError):
    """``check`` found differences between the models and the database."""

    def __init__(self, message: str, diffs: Sequence[Any]) -> None:
        super().__init__(message)
        self.diffs = list(diffs)


class LockError(AsyncMigrateError):
    """The migration lock could not be taken or released."""


class LockTimeoutError(LockError):
    """Another migrator held the lock for longer than the lock timeout."""

    def __init__(self, message: str, holder: str | None) -> None:
        super().__init__(message)
        self.holder = holder


class LockNotSupportedError(LockError, ConfigurationError):
    """Locking was asked for on a database for which async_migrate has no lock."""


class TransactionPoolerError(LockError, ConfigurationError):
    """The database URL reaches PostgreSQL through a transaction pooler (PgBouncer in ``pool_mode =
    transaction``, or alike): a session lock cannot keep other migrators out there, so nothing was run."""


#: What to do when the URL goes through a transaction pooler; said by every error that detects one.
TRANSACTION_POOLER_ADVICE = (
    "Migrate through a direct connection to the PostgreSQL server, or a pooler in session mode: give "
    "Migrator (or Migrate's engine=) an engine or URL for it, and keep the pooled one for the app's "
    "queries (docs/deploying.md, 'PgBouncer and other poolers')."
)

# SQLSTATEs of asyncpg's prepared statements meeting another client's on a shared server session.
_SHARED_SESSION_SQLSTATES = {"42P05", "26000"}


def looks_like_transaction_pooler(exc: BaseException) -> bool:
    """Whether ``exc`` is what asyncpg hits when another client's session is handed to it: its prepared
    statement names already exist there (or its own went away)."""
    return sqlstate(exc) in _SHARED_SESSION_SQLSTATES and any(
        "prepared statement" in str(cause) for cause in exception_chain(exc)
    )


class ConnectionLostError(MigrationFailedError):
    """The connection to the database broke (cut, reset, silent for too long) in the middle of a command.
    ``current_heads`` is what a new connection found in the version table afterwards (empty when none
    could be opened: the message then says so)."""


# SQLSTATEs of a session that ended under the client: connection failures, an administrator's
# pg_terminate_backend, a server shutting down.
_LOST_SQLSTATES = {"08000", "08003", "08006", "57P01", "57P02"}
# MySQL client errors: server gone away, lost connection during a query, connection not usable.
_MYSQL_LOST = {2006, 2013, 2055}


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection itself broke (rather than a statement failing on it), so that
    the outcome of what was in flight is unknown until a new connection reads the database."""
    if sqlstate(exc) in _LOST_SQLSTATES:
        return True
    for cause in exception_chain(exc):
        if getattr(cause, "connection_invalidated", False):
            return True
        if isinstance(cause, (ConnectionError, TimeoutError)):
            return True
        name = type(cause).__name__
        if name == "ConnectionDoesNotExistError" or (
            name == "InterfaceError" and "connection is closed" in str(cause)
        ):
            return True
        args = getattr(cause, "args", ())
        if args and args[0] in _MYSQL_LOST:
            return True
    return False


class DDLLockTimeoutError(MigrationFailedError):
    """A revision could not get its table locks within ``ddl_lock_timeout`` on any of its attempts."""

    def __init__(
        self,
        message: str,
        revision: str | None,
        current_heads: Sequence[str],
        blockers: Sequence[str],
    ) -> None:
        super().__init__(message, revision, current_heads)
        self.blockers = tuple(blockers)


class UnreviewedWarningsError(AsyncMigrateError):
    """``check --strict`` found ``# WARNING:`` comments of the autogenerate review still in the scripts."""

    def __init__(self, message: str, warnings: Sequence[tuple[str, str]]) -> None:
        super().__init__(message)
        self.warnings = list(warnings)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what stands behind it, each once: the driver's exception inside a SQLAlchemy one
    (``.orig``), then each exception's cause (or context). Drivers wrap the error that tells what happened
    (a refused socket, a lock timeout) a few levels deep."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        if isinstance(orig, BaseException):
            pending.append(orig)
        pending.append(current.__cause__ or current.__context__)


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE a database error carries (asyncpg's ``sqlstate``, psycopg's ``pgcode``), if any."""
    for candidate in exception_chain(exc):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


class EditedScriptError(CommandError):
    """``upgrade`` found a script applied earlier that was edited since (see ``verify``)."""

    def __init__(self, message: str, revisions: Sequence[str]) -> None:
        super().__init__(message)
        self.revisions = tuple(revisions)


class LedgerFindingsError(CommandError):
    """``verify`` (or ``check --strict``) found scripts that disagree with what the database ran."""

    def __init__(self, message: str, findings: Sequence[Any]) -> None:
        super().__init__(message)
        self.findings = list(findings)


class LedgerError(CommandError):
    """The ledger could not record a revision; the revision was rolled back with its row."""
