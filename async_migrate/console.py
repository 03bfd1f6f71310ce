"""``async-migrate`` and ``python -m async_migrate``: the ``quart db`` commands for any app, no framework.

The commands are the very click commands of :mod:`async_migrate.cli`; only where the Migrator comes from
differs. First found wins, for each of the database URL, the models and the migrations folder:

- ``--url`` / ``DATABASE_URL``; ``--metadata module:attr`` (a ``MetaData``, a declarative base, or anything
  with ``.metadata``); ``-d`` / ``--directory``;
- ``--app module:attr``: a :class:`~async_migrate.migrator.Migrator`, or a zero-argument callable
  returning one (then it is used as it is, and the options above are not needed), or an app with the
  ``Migrate`` extension (a Quart app: its engine, settings and app context, as ``quart db`` would);
- ``[tool.async_migrate]`` in ``pyproject.toml`` of the current folder: ``url``, ``metadata``, ``app``,
  ``directory``, and every Migrator setting by its keyword name (``lock_timeout = 30``).

The current folder is on ``sys.path`` for ``module:attr``, as ``quart --app`` and ``flask --app`` have it.
Commands that read only the scripts (``init``, ``heads``, ``history``, ``show``, ``branches``,
``list-templates``, ``revision`` without autogenerate, ``merge``, ``edit``) work with no URL at all.

:func:`add_migration_commands` puts the same commands on any click group (and so a Typer app's).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from .cli import db
from .cli_options import group_options, keep_options
from .cli_runner import SOURCE_KEY, AppSource
from .database import NoDatabase
from .errors import ConfigurationError
from .migrator import Migrator
from .settings import MigrationSettings

__all__ = ["MigratorFactory", "add_migration_commands", "main"]

#: What :func:`add_migration_commands` is given: makes the Migrator a command runs on.
MigratorFactory = Callable[[], Migrator]

NO_URL = (
    "No database URL: pass --url, set DATABASE_URL, or set url under [tool.async_migrate] in "
    "pyproject.toml (e.g. postgresql+asyncpg://user@host/db, sqlite+aiosqlite:///app.db)."
)


def load_object(spec: str, what: str) -> Any:
    """``module:attr`` (``attr`` may be dotted) imported, with the current folder on ``sys.path``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"{what} must be given as module:attribute (e.g. models:Base), not {spec!r}."
        )
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"Cannot import {module_name!r} for {what} ({exc}).") from None
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no {attr!r} for {what}.") from None
    return found


def metadata_from(spec: str) -> sa.MetaData:
    """The MetaData ``spec`` names: a MetaData, or anything with ``.metadata`` (a declarative base)."""
    found = load_object(spec, "--metadata")
    metadata = found if isinstance(found, sa.MetaData) else getattr(found, "metadata", None)
    if not isinstance(metadata, sa.MetaData):
        raise ConfigurationError(
            f"{spec} is a {type(found).__name__}, not a MetaData nor anything with a .metadata."
        )
    return metadata


def project_settings(folder: Path) -> dict[str, Any]:
    """``[tool.async_migrate]`` of ``folder/pyproject.toml`` (empty when there is none)."""
    path = folder / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        table = (
            tomllib.loads(path.read_text(encoding="utf-8")).get("tool", {}).get("async_migrate", {})
        )
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read {path}: {exc}.") from None
    known = {"url", "metadata", "app", "directory", *MigrationSettings.names()}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigurationError(
            f"{path} [tool.async_migrate] has unknown keys {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}."
        )
    return dict(table)


class ConsoleSource:
    """The Migrator of an ``async-migrate`` command, from its options, the environment, pyproject.toml."""

    def __init__(
        self, url: str | None, metadata: str | None, app: str | None, settings: dict[str, Any]
    ) -> None:
        self.url = url or os.environ.get("DATABASE_URL") or settings.get("url")
        self.metadata = metadata or settings.get("metadata")
        self.app = app or settings.get("app")
        self.directory = settings.get("directory")
        self.settings = {k: v for k, v in settings.items() if k in MigrationSettings.names()}
        self._resolved = False
        self._app_source: AppSource | None = None
        self._given: Any = None

    def _resolve(self) -> None:
        """Import what --app names, once, as the command runs (its errors are then one paragraph)."""
        if self._resolved or not self.app:
            return
        self._resolved = True
        found = load_object(self.app, "--app")
        extensions = getattr(found, "extensions", None)
        if isinstance(extensions, dict) and "migrate" in extensions:
            # An app with the Migrate extension (a Quart app): its settings, engine and app context.
            self._app_source = AppSource(found)
        else:
            self._given = found

    def migrator(self, directory: str | None, x_arg: Sequence[str], **overrides: Any) -> Migrator:
        self._resolve()
        if self._app_source is not None:
            return self._app_source.migrator(directory or self.directory, x_arg, **overrides)
        if self.app:
            return configured(given_migrator(self._given, self.app), directory, x_arg, overrides)
        return Migrator(
            self.url or NoDatabase(NO_URL),
            metadata_from(self.metadata) if self.metadata else None,
            directory or self.directory or "migrations",
            x_arg=list(x_arg),
            **{**self.settings, **overrides},
        )

    def scope(self) -> contextlib.AbstractAsyncContextManager[Any]:
        self._resolve()
        if self._app_source is not None:
            return self._app_source.scope()
        return contextlib.nullcontext()

    async def dispose_engines(self) -> None:
        """An app's engines; nothing otherwise (each Migrator disposes of the engine it made)."""
        if self._app_source is not None:
            await self._app_source.dispose_engines()


class FactorySource:
    """The Migrator an embedding app's factory makes (:func:`add_migration_commands`)."""

    def __init__(self, factory: MigratorFactory) -> None:
        self.factory = factory

    def migrator(self, directory: str | None, x_arg: Sequence[str], **overrides: Any) -> Migrator:
        return configured(given_migrator(self.factory, "the factory"), directory, x_arg, overrides)

    def scope(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return contextlib.nullcontext()

    async def dispose_engines(self) -> None:
        """Nothing: each Migrator disposes of the engine it made."""


def given_migrator(found: Any, where: str) -> Migrator:
    """``found`` if it is a Migrator, else what calling it returns."""
    if callable(found) and not isinstance(found, Migrator):
        found = found()
    if not isinstance(found, Migrator):
        raise ConfigurationError(
            f"{where} must be a Migrator or a zero-argument callable returning one, not "
            f"{type(found).__name__}."
        )
    return found


def configured(
    migrator: Migrator, directory: str | None, x_arg: Sequence[str], overrides: dict[str, Any]
) -> Migrator:
    """The command line's -d, -x and setting options applied to a Migrator the app made."""
    if directory:
        migrator.directory = directory
    migrator.x_arg = [*migrator.x_arg, *x_arg]
    for name, value in overrides.items():
        setattr(migrator, name, value)
    return migrator


@click.group(
    name="async-migrate",
    context_settings={"help_option_names": ["-h", "--help"]},
    commands=db.commands,
)
@click.option(
    "--url", default=None, help="Database URL (default: $DATABASE_URL, else pyproject.toml)"
)
@click.option(
    "--metadata", default=None, help="The models: module:attr of a MetaData or a declarative base"
)
@click.option(
    "--app",
    default=None,
    help="module:attr of a Migrator, a callable returning one, or an app with the Migrate extension",
)
@group_options
@click.pass_context
def main(
    ctx: click.Context,
    url: str | None,
    metadata: str | None,
    app: str | None,
    directory: str | None,
    x_arg: tuple[str, ...],
    show_traceback: bool,
) -> None:
    """Alembic migrations for async SQLAlchemy apps, behind a database lock: the commands of Flask-Migrate's
    `flask db`, for any app. The database, models and folder come from the options, else DATABASE_URL,
    else [tool.async_migrate] in pyproject.toml."""
    keep_options(ctx, directory, x_arg, show_traceback)
    ctx.meta[SOURCE_KEY] = ConsoleSource(url, metadata, app, project_settings(Path.cwd()))


def add_migration_commands(
    group: click.Group, make_migrator: MigratorFactory, name: str = "db"
) -> click.Group:
    """Add the migration commands to ``group`` (a click group; a Typer app's via
    ``typer.main.get_group(app)``) as the subgroup ``name``, each running on the Migrator
    ``make_migrator()`` returns. Returns the new subgroup."""

    @click.group(name=name, commands=db.commands, help="Perform database migrations.")
    @group_options
    @click.pass_context
    def migrations(
        ctx: click.Context, directory: str | None, x_arg: tuple[str, ...], show_traceback: bool
    ) -> None:
        keep_options(ctx, directory, x_arg, show_traceback)
        ctx.meta[SOURCE_KEY] = FactorySource(make_migrator)

    group.add_command(migrations)
    return migrations
