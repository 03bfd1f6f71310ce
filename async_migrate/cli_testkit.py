"""``quart db test``: the test kit's checks (:mod:`async_migrate.testkit`) without pytest, for CI."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

import click

from .cli_options import DIRECTORY_HELP
from .cli_runner import run_command
from .migrator import Migrator
from .testkit import CheckFailed, check_names, require_empty, run_check


async def _run_checks(m: Migrator, url: str | None, only: list[str]) -> list[str]:
    names = check_names(only)
    # The app's scripts and models, quiet (one line per check), on the database given or the app's.
    migrator = m.on_database(url or m.engine)
    failed = []
    try:
        await require_empty(migrator)
        for name in names:
            started = time.monotonic()
            try:
                await run_check(name, migrator)
            except CheckFailed as exc:
                failed.append(name)
                click.echo(f"FAIL {name}: {exc}")
                continue
            click.echo(f"PASS {name} ({time.monotonic() - started:.1f}s)")
    finally:
        await migrator.aclose()
    return failed


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("alembic", "async_migrate")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@click.command("test")
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--only",
    default=None,
    help="Comma-separated checks to run (default: all): single_head, upgrade, model_matches_ddl, "
    "up_down_consistency, stairway, downgrade_leaves_no_trace, lint_clean",
)
@click.option(
    "--url",
    "url",
    default=None,
    help="An empty throwaway database to run them on (default: the app's, which must be empty)",
)
@click.pass_context
def test(ctx: click.Context, directory: str | None, only: str | None, url: str | None) -> None:
    """Test the migration scripts on an empty throwaway database (exit 1 on any failure)"""
    names = [name.strip() for name in (only or "").split(",") if name.strip()]
    with (
        quiet_logs()
    ):  # hundreds of upgrades and downgrades: their INFO lines would bury the result
        failed = run_command(ctx, lambda m: _run_checks(m, url, names), directory)
    if failed:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}.")
        ctx.exit(1)
