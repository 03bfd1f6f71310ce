"""``quart db ...``: Flask-Migrate's ``flask db`` commands and options, for Quart apps.

The commands parse their options and print; the work is done by a
:class:`~async_migrate.migrator.Migrator`, which :func:`~async_migrate.cli_runner.run_command` gets from
the app and runs one coroutine on. Options that change a setting (``--lock-timeout``, ...) reach the
Migrator through its constructor.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from .cli_ledger import COMMANDS
from .cli_options import (
    DIRECTORY_HELP,
    RENAMES_HELP,
    X_ARG_HELP,
    allow_empty_option,
    ddl_options,
    ddl_overrides,
    group_options,
    keep_options,
    lock_options,
    lock_overrides,
    revision_options,
)
from .cli_runner import run_command
from .cli_squash import squash
from .cli_testkit import test
from .graph import FORMATS
from .migrator import Migrator

if TYPE_CHECKING:
    from .review import RenamePolicy, Review


@click.group()
@group_options
@click.pass_context
def db(
    ctx: click.Context, directory: str | None, x_arg: tuple[str, ...], show_traceback: bool
) -> None:
    """Perform database migrations."""
    keep_options(ctx, directory, x_arg, show_traceback)


@db.command("list-templates")
@click.pass_context
def list_templates(ctx: click.Context) -> None:
    """List available templates."""
    run_command(ctx, lambda m: m.list_templates())


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("--multidb", is_flag=True, help="Support multiple databases (template async-multidb)")
@click.option(
    "-t", "--template", default=None, help='Repository template to use (default is "async")'
)
@click.option(
    "--package",
    is_flag=True,
    help="Write empty __init__.py files to the environment and version locations",
)
@click.option(
    "--convert",
    is_flag=True,
    help="Turn the existing Flask-Migrate migrations folder into an async_migrate one, in place: env.py "
    "replaced (the old one kept as env.py.flask-migrate), alembic.ini's settings and versions/ kept",
)
@click.pass_context
def init(
    ctx: click.Context,
    directory: str | None,
    multidb: bool,
    template: str | None,
    package: bool,
    convert: bool,
) -> None:
    """Creates a new migration repository."""
    if convert:
        from .convert import convert_flask_migrate

        async def conversion(m: Migrator) -> list[str]:
            return convert_flask_migrate(m.directory, multidb=True if multidb else None).lines()

        for line in run_command(ctx, conversion, directory):
            click.echo(line)
        return
    chosen = template or ("async-multidb" if multidb else None)
    run_command(ctx, lambda m: m.init(chosen, package), directory)


def _rename_policy(renames: str | None) -> RenamePolicy:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    if renames == "ask" or (renames is None and interactive):
        if not interactive:
            click.echo(
                "Warning: --renames=ask needs a terminal; treating every candidate as no.", err=True
            )
            return "no"
        return lambda candidate: click.confirm(candidate.question(), default=False)
    return "yes" if renames == "yes" else "no"


def _print_review(review: Review) -> None:
    """The review's findings, each once, on stderr (instead of the log lines of the API)."""
    for message in review.messages():
        click.echo(f"WARNING: {message}", err=True)


async def _model_changes(m: Migrator) -> int:
    """How many changes the models have over the database (0 also when that cannot be told: no models,
    no database, a database behind the scripts): before a hand-written revision, so that one written
    right after the models changed can point at `migrate`, which would have filled it."""
    from .errors import AsyncMigrateError, ModelsDifferError

    if m.metadata is None or not m.metadata.tables:
        return 0
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # this look is not the command: no INFO lines of its own
    try:
        await m.check()
    except ModelsDifferError as exc:
        return len(exc.diffs)
    except AsyncMigrateError:
        pass
    finally:
        alembic_log.setLevel(level)
    return 0


@db.command()
@revision_options
@click.option("--renames", type=click.Choice(["ask", "yes", "no"]), default=None, help=RENAMES_HELP)
@click.option(
    "--autogenerate",
    is_flag=True,
    help="Populate revision script with candidate migration operations, based on comparison of database to model",
)
@allow_empty_option
@click.pass_context
def revision(
    ctx: click.Context,
    directory: str | None,
    message: str | None,
    sql: bool,
    head: str,
    splice: bool,
    branch_label: str | None,
    version_path: str | None,
    rev_id: str | None,
    x_arg: tuple[str, ...],
    renames: str | None,
    autogenerate: bool,
    allow_empty_metadata: bool,
) -> None:
    """Create a new revision file."""
    policy: RenamePolicy = _rename_policy(renames) if autogenerate else "no"

    async def action(m: Migrator) -> None:
        m.on_review = _print_review
        m.allow_empty_metadata = allow_empty_metadata
        changes = 0 if autogenerate or sql else await _model_changes(m)
        await m.revision(
            message, autogenerate, sql, head, splice, branch_label, version_path, rev_id,
            renames=policy,
        )  # fmt: skip
        if changes:
            click.echo(
                f"Note: the models differ from the database ({changes} change(s)), and this revision "
                "is empty: `quart db migrate` writes them into a revision for you.",
                err=True,
            )

    run_command(ctx, action, directory, x_arg)


@db.command()
@revision_options
@click.option("--renames", type=click.Choice(["ask", "yes", "no"]), default=None, help=RENAMES_HELP)
@click.option("--autogenerate", is_flag=True, hidden=True, help="Always on for migrate")
@allow_empty_option
@click.pass_context
def migrate(
    ctx: click.Context,
    directory: str | None,
    message: str | None,
    sql: bool,
    head: str,
    splice: bool,
    branch_label: str | None,
    version_path: str | None,
    rev_id: str | None,
    x_arg: tuple[str, ...],
    renames: str | None,
    autogenerate: bool,
    allow_empty_metadata: bool,
) -> None:
    """Autogenerate a new revision file (Alias for 'revision --autogenerate')"""
    policy = _rename_policy(renames)

    async def action(m: Migrator) -> Any:
        m.on_review = _print_review
        m.allow_empty_metadata = allow_empty_metadata
        return await m.migrate(
            message, sql, head, splice, branch_label, version_path, rev_id, renames=policy
        )

    script = run_command(ctx, action, directory, x_arg)
    if script is None and not sql:
        click.echo("No changes in schema detected; no revision file written.")


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.argument("revision", default="head")
@click.pass_context
def edit(ctx: click.Context, directory: str | None, revision: str) -> None:
    """Edit a revision file"""
    run_command(ctx, lambda m: m.edit(revision), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("-m", "--message", default=None, help="Merge revision message")
@click.option(
    "--branch-label", default=None, help="Specify a branch label to apply to the new revision"
)
@click.option(
    "--rev-id", default=None, help="Specify a hardcoded revision id instead of generating one"
)
@click.argument("revisions", nargs=-1)
@click.pass_context
def merge(
    ctx: click.Context,
    directory: str | None,
    message: str | None,
    branch_label: str | None,
    rev_id: str | None,
    revisions: tuple[str, ...],
) -> None:
    """Merge two revisions together, creating a new revision file"""
    run_command(
        ctx, lambda m: m.merge(list(revisions) or "heads", message, branch_label, rev_id), directory
    )


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--sql", is_flag=True, help="Don't emit SQL to database - dump to standard output instead"
)
@click.option(
    "--tag", default=None, help='Arbitrary "tag" name - can be used by custom env.py scripts'
)
@click.option("-x", "--x-arg", multiple=True, help=X_ARG_HELP)
@lock_options
@ddl_options
@click.option(
    "--allow-edited",
    is_flag=True,
    help="Upgrade although a script applied earlier was edited since (a warning each; see verify)",
)
@click.option(
    "--through-squashed",
    is_flag=True,
    help="A database in the middle of a squashed history: go through the archived scripts first",
)
@click.argument("revision", default="head")
@click.pass_context
def upgrade(
    ctx: click.Context,
    directory: str | None,
    sql: bool,
    tag: str | None,
    x_arg: tuple[str, ...],
    no_lock: bool,
    lock_timeout: float | None,
    ddl_lock_timeout: float | None,
    ddl_retries: int | None,
    statement_timeout: float | None,
    allow_edited: bool,
    through_squashed: bool,
    revision: str,
) -> None:
    """Upgrade to a later version"""

    async def action(m: Migrator) -> str | None:
        if await m.upgrade(revision, sql, tag, through_squashed=through_squashed) or sql:
            return None
        at = ", ".join((await m.status()).current_heads) or "base"
        return f"Already at head ({at})." if revision in ("head", "heads") else f"Already at {at}."

    nothing_to_do = run_command(
        ctx,
        action,
        directory,
        x_arg,
        progress=True,
        **lock_overrides(no_lock, lock_timeout),
        **ddl_overrides(ddl_lock_timeout, ddl_retries, statement_timeout),
        **({"allow_edited": True} if allow_edited else {}),
    )
    if nothing_to_do:
        click.echo(nothing_to_do)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--sql", is_flag=True, help="Don't emit SQL to database - dump to standard output instead"
)
@click.option(
    "--tag", default=None, help='Arbitrary "tag" name - can be used by custom env.py scripts'
)
@click.option("-x", "--x-arg", multiple=True, help=X_ARG_HELP)
@lock_options
@ddl_options
@click.argument("revision", default="-1")
@click.pass_context
def downgrade(
    ctx: click.Context,
    directory: str | None,
    sql: bool,
    tag: str | None,
    x_arg: tuple[str, ...],
    no_lock: bool,
    lock_timeout: float | None,
    ddl_lock_timeout: float | None,
    ddl_retries: int | None,
    statement_timeout: float | None,
    revision: str,
) -> None:
    """Revert to a previous version"""
    run_command(
        ctx,
        lambda m: m.downgrade(revision, sql, tag),
        directory,
        x_arg,
        progress=True,
        **lock_overrides(no_lock, lock_timeout),
        **ddl_overrides(ddl_lock_timeout, ddl_retries, statement_timeout),
    )


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.argument("revision", default="head")
@click.pass_context
def show(ctx: click.Context, directory: str | None, revision: str) -> None:
    """Show the revision denoted by the given symbol."""
    run_command(ctx, lambda m: m.show(revision), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "-r", "--rev-range", default=None, help="Specify a revision range; format is [start]:[end]"
)
@click.option("-v", "--verbose", is_flag=True, help="Use more verbose output")
@click.option(
    "-i", "--indicate-current", is_flag=True, help="Indicate current version (Alembic>=0.9.9)"
)
@click.option(
    "--graph",
    is_flag=True,
    help="Draw the revisions as a graph: branches, merges, labels, current revision(s) marked",
)
@click.option(
    "--format",
    "graph_format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="With --graph: lanes in the terminal, Mermaid, or Graphviz dot",
)
@click.pass_context
def history(
    ctx: click.Context,
    directory: str | None,
    rev_range: str | None,
    verbose: bool,
    indicate_current: bool,
    graph: bool,
    graph_format: str,
) -> None:
    """List changeset scripts in chronological order."""
    if graph:
        if rev_range:
            raise click.UsageError("--graph draws the whole history: leave out --rev-range.")
        click.echo(run_command(ctx, lambda m: m.history_graph(graph_format), directory))
        return
    run_command(ctx, lambda m: m.history(rev_range, verbose, indicate_current), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Use more verbose output")
@click.option(
    "--resolve-dependencies", is_flag=True, help="Treat dependency versions as down revisions"
)
@click.pass_context
def heads(
    ctx: click.Context, directory: str | None, verbose: bool, resolve_dependencies: bool
) -> None:
    """Show current available heads in the script directory"""
    run_command(ctx, lambda m: m.heads(verbose, resolve_dependencies), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Use more verbose output")
@click.pass_context
def branches(ctx: click.Context, directory: str | None, verbose: bool) -> None:
    """Show current branch points"""
    run_command(ctx, lambda m: m.branches(verbose), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Use more verbose output")
@click.pass_context
def current(ctx: click.Context, directory: str | None, verbose: bool) -> None:
    """Display the current revision for each database."""
    run_command(ctx, lambda m: m.current(verbose), directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--sql", is_flag=True, help="Don't emit SQL to database - dump to standard output instead"
)
@click.option(
    "--tag", default=None, help='Arbitrary "tag" name - can be used by custom env.py scripts'
)
@click.option(
    "--purge", is_flag=True, help="Delete all entries in the version table before stamping"
)
@lock_options
@click.argument("revision", nargs=-1)
@click.pass_context
def stamp(
    ctx: click.Context,
    directory: str | None,
    sql: bool,
    tag: str | None,
    purge: bool,
    no_lock: bool,
    lock_timeout: float | None,
    revision: tuple[str, ...],
) -> None:
    """'stamp' the revision table with the given revision; don't run any migrations"""
    target: str | list[str] = (
        list(revision) if len(revision) > 1 else (revision[0] if revision else "head")
    )
    run_command(
        ctx,
        lambda m: m.stamp(target, sql, tag, purge),
        directory,
        **lock_overrides(no_lock, lock_timeout),
    )


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--strict",
    is_flag=True,
    help="Also fail while a revision script still has a '# WARNING:' comment from the autogenerate "
    "review",
)
@allow_empty_option
@click.pass_context
def check(
    ctx: click.Context, directory: str | None, strict: bool, allow_empty_metadata: bool
) -> None:
    """Check if there are any new operations to migrate"""

    async def action(m: Migrator) -> None:
        m.allow_empty_metadata = allow_empty_metadata
        await m.check(strict)

    run_command(ctx, action, directory)


@db.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.pass_context
def doctor(ctx: click.Context, directory: str | None) -> None:
    """Report the state of the database and the scripts, read-only (exit 0 only when healthy)"""
    diagnosis = run_command(ctx, lambda m: m.doctor(), directory)
    for line in diagnosis.lines():
        click.echo(line)
    if not diagnosis.healthy:
        ctx.exit(1)


for _command in (
    *COMMANDS,
    test,
    squash,
):  # the ledger's and the test kit's commands have modules of their own
    db.add_command(_command)
