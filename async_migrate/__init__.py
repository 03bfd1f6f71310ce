"""async_migrate: Alembic migrations for async SQLAlchemy apps, with a Quart extension and CLI.

``Migrator`` (the core) needs no web framework; ``Migrate`` and the module-level command functions
(``await upgrade()``, ...) are the Quart glue, imported from :mod:`async_migrate.extension` and
:mod:`async_migrate.app_commands` on first use so that ``import async_migrate`` does not import Quart.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    AsyncMigrateError,
    CommandError,
    ConfigurationError,
    ConnectionLostError,
    DatabaseUnreachableError,
    DDLLockTimeoutError,
    EditedScriptError,
    LedgerError,
    LedgerFindingsError,
    LockError,
    LockNotSupportedError,
    LockTimeoutError,
    MigrationFailedError,
    MissingScriptError,
    ModelsDifferError,
    MultipleHeadsError,
    NotUpToDateError,
    TransactionPoolerError,
    UnknownRevisionError,
    UnreviewedWarningsError,
)
from .ledger import LedgerEntry
from .ledger_checks import Finding
from .migrator import MigrationStatus, Migrator
from .startup import startup_upgrade

if TYPE_CHECKING:
    from .app_commands import (
        branches,
        check,
        current,
        downgrade,
        edit,
        heads,
        history,
        init,
        list_templates,
        merge,
        migrate,
        revision,
        show,
        stamp,
        upgrade,
    )
    from .extension import Migrate

_QUART_NAMES = {
    "Migrate",
    "branches",
    "check",
    "current",
    "downgrade",
    "edit",
    "heads",
    "history",
    "init",
    "list_templates",
    "merge",
    "migrate",
    "revision",
    "show",
    "stamp",
    "upgrade",
}


def __getattr__(name: str) -> Any:
    if name in _QUART_NAMES:
        try:
            from . import app_commands, extension
        except ModuleNotFoundError as exc:
            if exc.name != "quart":
                raise
            raise ImportError(
                f"async_migrate.{name} is the Quart integration, and Quart is not installed: "
                "`pip install 'async_migrate[quart]'`. (Migrator and the async-migrate command need "
                "no framework.)"
            ) from None
        return getattr(extension if name == "Migrate" else app_commands, name)
    raise AttributeError(f"module 'async_migrate' has no attribute {name!r}")


__all__ = [
    "AsyncMigrateError",
    "CommandError",
    "ConfigurationError",
    "ConnectionLostError",
    "DDLLockTimeoutError",
    "DatabaseUnreachableError",
    "EditedScriptError",
    "Finding",
    "LedgerEntry",
    "LedgerError",
    "LedgerFindingsError",
    "LockError",
    "LockNotSupportedError",
    "LockTimeoutError",
    "Migrate",
    "MigrationFailedError",
    "MigrationStatus",
    "Migrator",
    "MissingScriptError",
    "ModelsDifferError",
    "MultipleHeadsError",
    "NotUpToDateError",
    "TransactionPoolerError",
    "UnknownRevisionError",
    "UnreviewedWarningsError",
    "branches",
    "check",
    "current",
    "downgrade",
    "edit",
    "heads",
    "history",
    "init",
    "list_templates",
    "merge",
    "migrate",
    "revision",
    "show",
    "stamp",
    "startup_upgrade",
    "upgrade",
]
