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
    handler = show_log_lines()
    terminal = TerminalProgress() if progress and sys.stderr.isatty() else None

    async def main() -> T:
        source = app.extensions.get("migrate")
        if not isinstance(source, MigratorSource):
            raise ConfigurationError(NO_EXTENSION)
        async with app.app_context():
            migrator = source.migrator(app, directory, x_args, **overrides)
            migrator.progress = terminal
            try:
                return await action(migrator)
            finally:
                await migrator.aclose()
                await source.dispose_engines()

    # Our line per revision says what Alembic's "Running upgrade ..." says, and more: one is enough.
    alembic_runs = logging.getLogger("alembic.runtime.migration")
    if progress:
        alembic_runs.addFilter(_skip_running_lines)
    if handler is not None:
        handler.progress = terminal
    try:
        return asyncio.run(main())
    except AsyncMigrateError as exc:
        if terminal is not None:
            terminal.close()
        if ctx.meta.get(TRACEBACK_KEY):
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(1)
    finally:
        alembic_runs.removeFilter(_skip_running_lines)
        if terminal is not None:
            terminal.close()
        if handler is not None:
            handler.progress = None


def _skip_running_lines(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(("Running upgrade", "Running downgrade"))


class LogLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The CLI's log lines on stderr, written above a live progress line rather than into it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.progress: TerminalProgress | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.progress is not None:
            self.progress.clear()
        super().emit(record)
        if self.progress is not None:
            self.progress.redraw()


_log_lines: LogLines | None = None


def _real_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]


def show_log_lines() -> LogLines | None:
    """Show Alembic's and our INFO lines on stderr, as ``alembic`` does, unless the app set up logging;
    the handler used, when it is ours."""
    global _log_lines
    for name in ("alembic", "async_migrate"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    # Importing Alembic gives its logger a NullHandler: that is not the app setting up logging.
    if (
        _log_lines is None
        and not _real_handlers(logging.getLogger())
        and not any(_real_handlers(logging.getLogger(n)) for n in ("alembic", "async_migrate"))
    ):
        _log_lines = LogLines()
        _log_lines.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
        for name in ("alembic", "async_migrate"):
            logging.getLogger(name).addHandler(_log_lines)
    return _log_lines
