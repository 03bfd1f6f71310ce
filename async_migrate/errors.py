"""Exceptions raised by async_migrate.

Every error derives from :class:`AsyncMigrateError`; each message says what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
