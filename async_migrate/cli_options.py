"""The options several ``quart db`` commands share, as click decorators, and the settings they override."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from .cli_runner import DIRECTORY_KEY, TRACEBACK_KEY, X_ARG_KEY

DIRECTORY_HELP = 'Migration script directory (default is "migrations")'
X_ARG_HELP = "Additional arguments consumed by custom env.py scripts"

RENAMES_HELP = (
    "What to do with a drop + add that may be a rename: ask (the default on a terminal), yes (rename), "
    "no (keep drop + add, with a warning; the default otherwise)"
)


def revision_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("-d", "--directory", default=None, help=DIRECTORY_HELP),
            click.option("-m", "--message", default=None, help="Revision message"),
            click.option(
                "--sql",
                is_flag=True,
                help="Don't emit SQL to database - dump to standard output instead",
            ),
            click.option(
                "--head",
                default="head",
                help="Specify head revision or <branchname>@head to base new revision on",
            ),
            click.option(
                "--splice",
                is_flag=True,
                help='Allow a non-head revision as the "head" to splice onto',
            ),
            click.option(
                "--branch-label",
                default=None,
                help="Specify a branch label to apply to the new revision",
            ),
            click.option(
                "--version-path",
                default=None,
                help="Specify specific path from config for version file",
            ),
            click.option(
                "--rev-id",
                default=None,
                help="Specify a hardcoded revision id instead of generating one",
            ),
            click.option("-x", "--x-arg", multiple=True, help=X_ARG_HELP),
        ]
    ):
        f = option(f)
    return f


ALLOW_EMPTY_HELP = (
    "Run although the models' MetaData has no tables (refused by default: models not imported would "
    "make every table look dropped)"
)


def allow_empty_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--allow-empty-metadata", is_flag=True, help=ALLOW_EMPTY_HELP)(f)


def ddl_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--statement-timeout",
        type=float,
        default=None,
        help="PostgreSQL: seconds any migration statement may run (default: no limit)",
    )(f)
    f = click.option(
        "--ddl-retries",
        type=click.IntRange(min=1),
        default=None,
        help="How many times a revision that hit the DDL lock timeout is tried in all (default 5)",
    )(f)
    return click.option(
        "--ddl-lock-timeout",
        type=float,
        default=None,
        help="Seconds a statement may wait for a table lock before its revision is rolled back and "
        "retried (default 5 on PostgreSQL, off on MySQL/MariaDB; 0 waits forever)",
    )(f)


def ddl_overrides(
    ddl_lock_timeout: float | None, ddl_retries: int | None, statement_timeout: float | None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if ddl_lock_timeout is not None:
        overrides["ddl_lock_timeout"] = ddl_lock_timeout or None
    if ddl_retries is not None:
        overrides["ddl_retry_attempts"] = ddl_retries
    if statement_timeout is not None:
        overrides["statement_timeout"] = statement_timeout or None
    return overrides


def lock_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--lock-timeout",
        type=float,
        default=None,
        help="Seconds to wait for another migrator's lock (default: MIGRATE_LOCK_TIMEOUT, 60)",
    )(f)
    return click.option(
        "--no-lock",
        is_flag=True,
        help="Don't take the migration lock (for databases where it cannot work)",
    )(f)


def lock_overrides(no_lock: bool, lock_timeout: float | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if no_lock:
        overrides["lock"] = False
    if lock_timeout is not None:
        overrides["lock_timeout"] = lock_timeout
    return overrides


def group_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of every group of migration commands: -d, -x, -v (kept by :func:`keep_options`)."""
    f = click.option(
        "-v", "--verbose", "show_traceback", is_flag=True,
        help="Show the traceback of an error too. (After a command name, as in `history -v`, -v means "
        "that command's verbose output.)",
    )(f)  # fmt: skip
    f = click.option("-x", "--x-arg", multiple=True, help=X_ARG_HELP)(f)
    return click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)(f)


def keep_options(
    ctx: click.Context, directory: str | None, x_arg: tuple[str, ...], show_traceback: bool
) -> None:
    """The group's options, on the click context for its commands (a group callback has no app
    context)."""
    ctx.meta[DIRECTORY_KEY] = directory
    ctx.meta[X_ARG_KEY] = x_arg
    ctx.meta[TRACEBACK_KEY] = show_traceback
