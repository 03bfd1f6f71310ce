"""async_migrate: Alembic migrations for async SQLAlchemy apps, with a Quart extension and CLI."""

from .errors import (
    AsyncMigrateError,
    CommandError,
    ConfigurationError,
    DatabaseUnreachableError,
    LockError,
    LockNotSupportedError,
    LockTimeoutError,
    MigrationFailedError,
    ModelsDifferError,
    MultipleHeadsError,
    NotUpToDateError,
    UnknownRevisionError,
)
from .migrator import MigrationStatus, Migrator

__all__ = [
    "AsyncMigrateError",
    "CommandError",
    "ConfigurationError",
    "DatabaseUnreachableError",
    "LockError",
    "LockNotSupportedError",
    "LockTimeoutError",
    "MigrationFailedError",
    "MigrationStatus",
    "Migrator",
    "ModelsDifferError",
    "MultipleHeadsError",
    "NotUpToDateError",
    "UnknownRevisionError",
]
