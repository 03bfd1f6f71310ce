"""How the commands that change a database behave: the lock, the connection retries, the DDL lock timeout,
the ledger.

One list of these settings, :class:`MigrationSettings`: the :class:`~async_migrate.migrator.Migrator`
keeps them as attributes of the same names, hands them on to the Migrators of its other databases, and the
Quart extension reads each from the app config key ``MIGRATE_<NAME>``. A new setting is a new field here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .ddl_guard import DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT, MYSQL_DIALECTS, DDLGuard
from .errors import ConfigurationError


def config_key(name: str) -> str:
    """The Quart app config key of the setting ``name`` (``lock_timeout`` -> ``MIGRATE_LOCK_TIMEOUT``)."""
    return f"MIGRATE_{name.upper()}"


@dataclass(frozen=True)
class MigrationSettings:
    """The settings of upgrade, downgrade and stamp (see :class:`~async_migrate.migrator.Migrator`)."""

    lock: bool = True
    lock_timeout: float = 60.0
    connect_timeout: float = 0.0
    ddl_lock_timeout: float | str | None = "auto"
    ddl_retry_attempts: int = 5
    ddl_retry_backoff: float = 2.0
    statement_timeout: float | None = None
    bookkeeping_timeout: float = 30.0
    ledger: bool = True
    ledger_table: str | None = None
    allow_edited: bool = False

    def __post_init__(self) -> None:
        ddl_lock_timeout = self.ddl_lock_timeout
        if ddl_lock_timeout not in ("auto", None) and not isinstance(
            ddl_lock_timeout, (int, float)
        ):
            raise ConfigurationError(
                f"ddl_lock_timeout must be a number of seconds, None (off) or 'auto', not {ddl_lock_timeout!r}."
            )
        # Given as ints or strings from an app config: the lock loop does arithmetic with them.
        object.__setattr__(self, "lock_timeout", float(self.lock_timeout))
        object.__setattr__(self, "connect_timeout", float(self.connect_timeout))
        object.__setattr__(self, "bookkeeping_timeout", float(self.bookkeeping_timeout))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, which are the Migrator's keyword arguments and attributes."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each setting's default, by its app config key."""
        return {config_key(f.name): f.default for f in dataclasses.fields(cls)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> MigrationSettings:
        """The settings given by app config keys (``MIGRATE_LOCK``, ...), then ``overrides`` by name."""
        given = {
            name: config[config_key(name)] for name in cls.names() if config_key(name) in config
        }
        return cls(**{**given, **overrides})

    def keywords(self) -> dict[str, Any]:
        """The settings as the Migrator's keyword arguments."""
        return {name: getattr(self, name) for name in self.names()}

    def ddl_guard(self, dialect: str) -> DDLGuard | None:
        """The session timeouts and retries for a migration on ``dialect``: PostgreSQL (lock timeout on by
        default) and MySQL/MariaDB (only when ``ddl_lock_timeout`` is a number); None elsewhere."""
        mysql = dialect in MYSQL_DIALECTS
        if dialect != "postgresql" and not mysql:
            return None
        if self.ddl_lock_timeout == "auto":
            lock_timeout = None if mysql else DEFAULT_POSTGRES_DDL_LOCK_TIMEOUT
        else:
            lock_timeout = self.ddl_lock_timeout  # type: ignore[assignment]
        return DDLGuard(
            lock_timeout=float(lock_timeout) if lock_timeout else None,
            attempts=max(1, int(self.ddl_retry_attempts)),
            backoff=float(self.ddl_retry_backoff),
            statement_timeout=(
                float(self.statement_timeout) if self.statement_timeout and not mysql else None
            ),
        )
