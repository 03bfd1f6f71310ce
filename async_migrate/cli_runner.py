"""How one ``db`` command runs: a Migrator from wherever the command was started, one event loop, and an
error as one paragraph.

:func:`run_command` asks the click context for the :class:`CommandSource`: the one a group put there
(``async-migrate``'s options, :func:`async_migrate.console.add_migration_commands`), else the Quart app
of ``quart --app`` (its ``ScriptInfo`` loads it; its ``app.extensions["migrate"]`` makes the Migrator),
found without importing Quart here. It runs the command's coroutine on that Migrator in one event loop
(``asyncio.run``), inside the source's scope (the app context), and disposes of the engines before that
loop ends. An :class:`~async_migrate.errors.AsyncMigrateError` prints ``Error: ...`` and exits 1
(``-v`` adds the traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import click

from .errors import NO_EXTENSION, AsyncMigrateError, ConfigurationError
from .migrator import Migrator
from .progress import TerminalProgress

T = TypeVar("T")

# The ``db`` group's options, kept on the click context (a group callback has no app context).
DIRECTORY_KEY = "async_migrate.directory"
X_ARG_KEY = "async_migrate.x_arg"
TRACEBACK_KEY = "async_migrate.traceback"
#: Where a group puts the :class:`CommandSource` its commands use.
SOURCE_KEY = "async_migrate.source"


class CommandSource(Protocol):
    """Where a command's Migrator comes from."""

    def migrator(self, directory: str | None, x_arg: Sequence[str], **overrides: Any) -> Migrator:
        """A Migrator; ``overrides`` are settings by their Migrator keyword."""

    def scope(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """What the command runs inside (a Quart app context; nothing for a plain Migrator)."""

    async def dispose_engines(self) -> None:
        """Dispose of engines the source lent, once a command's event loop ends."""


@runtime_checkable
class MigratorSource(Protocol):
    """What a command needs of an app's migration setup (the Quart extension's ``MigrateState``)."""

    def migrator(
        self,
        app: Any,
        directory: str | None = None,
        x_arg: Sequence[str] | None = None,
        **overrides: Any,
    ) -> Migrator:
        """A Migrator for the app; ``overrides`` are settings by their Migrator keyword."""

    async def dispose_engines(self) -> None:
        """Dispose of the app's engines once a command's event loop ends."""


class AppSource:
    """The Quart app a ``quart --app`` command runs for, and its extension's Migrators."""

    def __init__(self, app: Any) -> None:
        self.app = app
        state = app.extensions.get("migrate")
        if not isinstance(state, MigratorSource):
            raise ConfigurationError(NO_EXTENSION)
        self.state = state

    def migrator(self, directory: str | None, x_arg: Sequence[str], **overrides: Any) -> Migrator:
        return self.state.migrator(self.app, directory, x_arg, **overrides)

    def scope(self) -> contextlib.AbstractAsyncContextManager[Any]:
        return self.app.app_context()  # type: ignore[no-any-return]

    async def dispose_engines(self) -> None:
        await self.state.dispose_engines()


def command_source(ctx: click.Context) -> CommandSource:
    """The source a group set, else the Quart app that ``quart`` (its ScriptInfo, the root's obj) loads."""
    found = ctx.meta.get(SOURCE_KEY)
    if found is not None:
        return found  # type: ignore[no-any-return]
    script_info = ctx.find_root().obj
    if script_info is None or not hasattr(script_info, "load_app"):
        raise click.UsageError(
            "These commands run under `quart --app <module> db ...` or `async-migrate ...`."
        )
    return AppSource(script_info.load_app())


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
    source = command_source(ctx)
    directory = directory or ctx.meta.get(DIRECTORY_KEY)
    x_args = [*ctx.meta.get(X_ARG_KEY, ()), *(x_arg or ())]
    handler = show_log_lines()
    terminal = TerminalProgress() if progress and sys.stderr.isatty() else None

    async def main() -> T:
        async with source.scope():
            migrator = source.migrator(directory, x_args, **overrides)
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
