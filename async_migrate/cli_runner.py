"""How one ``quart db`` command runs: the app's Migrator, one event loop, and an error as one paragraph.

:func:`run_command` loads the app (``quart --app``), takes a Migrator from its extension (whatever
``app.extensions["migrate"]`` holds, :class:`MigratorSource`), runs the command's coroutine on it in one
event loop (``asyncio.run``) inside the app context, and disposes of the engines before that loop ends.
An :class:`~async_migrate.errors.AsyncMigrateError` prints ``Error: ...`` and exits 1 (``-v`` adds the
traceback).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import click
from quart import Quart
from quart.cli import ScriptInfo

from .errors import NO_EXTENSION, AsyncMigrateError, ConfigurationError
from .migrator import Migrator
from .progress import TerminalProgress

T = TypeVar("T")

# The ``db`` group's options, kept on the click context (a group callback has no app context).
DIRECTORY_KEY = "async_migrate.directory"
X_ARG_KEY = "async_migrate.x_arg"
TRACEBACK_KEY = "async_migrate.traceback"


@runtime_checkable
class MigratorSource(Protocol):
    """What a command needs of an app's migration setup (the Quart extension's ``MigrateState``)."""

    def migrator(
        self,
        app: Quart,
        directory: str | None = None,
        x_arg: Sequence[str] | None = None,
        **overrides: Any,
    ) -> Migrator:
        """A Migrator for the app; ``overrides`` are settings by their Migrator keyword."""

    async def dispose_engines(self) -> None:
        """Dispose of the app's engines once a command's event loop ends."""


def run_command(
    ctx: click.Context,
    action: Callable[[Migrator], Awaitable[T]],
    directory: str | None = None,
    x_arg: Sequence[str] | None = None,
    *,
    progress: bool = False,
    **overrides: Any,
) -> T:
    """Load the app and run ``action`` on its Migrator in one event loop, inside the app context.
    ``overrides`` are settings for the Migrator; with ``progress``, an upgrade or downgrade draws its
    progress line on a terminal."""
    script_info = ctx.find_object(ScriptInfo) or ScriptInfo()
    app: Quart = script_info.load_app()
    directory = directory or ctx.meta.get(DIRECTORY_KEY)
    x_args = [*ctx.meta.get(X_ARG_KEY, ()), *(x_arg or ())]
    show_log_lines()

    async def main() -> T:
        source = app.extensions.get("migrate")
        if not isinstance(source, MigratorSource):
            raise ConfigurationError(NO_EXTENSION)
        async with app.app_context():
            migrator = source.migrator(app, directory, x_args, **overrides)
            if progress and sys.stderr.isatty():
                migrator.progress = TerminalProgress()
            try:
                return await action(migrator)
            finally:
                await migrator.aclose()
                await source.dispose_engines()

    try:
        return asyncio.run(main())
    except AsyncMigrateError as exc:
        if ctx.meta.get(TRACEBACK_KEY):
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)


def show_log_lines() -> None:
    """Show Alembic's and our INFO lines on stderr, as ``alembic`` does, unless the app set up logging."""
    for name in ("alembic", "async_migrate"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    if not logging.getLogger().handlers and not any(
        logging.getLogger(n).handlers for n in ("alembic", "async_migrate")
    ):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
        for name in ("alembic", "async_migrate"):
            logging.getLogger(name).addHandler(handler)
