"""``quart db squash``: a long history squashed into a baseline revision, and ``squash --check``."""

from __future__ import annotations

import click

from .cli_options import DIRECTORY_HELP
from .cli_runner import run_command
from .migrator import Migrator


@click.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("--to", "to", default="head", help="The last revision to squash (default: head)")
@click.option("-m", "--message", default="baseline", help="The baseline's message")
@click.option(
    "--keep-data",
    is_flag=True,
    help="Keep the rows the squashed data migrations left, as the baseline's seed",
)
@click.option(
    "--drop-data", is_flag=True, help="Leave the squashed data migrations' rows out, knowingly"
)
@click.option(
    "--scratch-url",
    default=None,
    help="An empty database of the same kind to run the old scripts on (default: a temporary one)",
)
@click.option(
    "--check",
    is_flag=True,
    help="Compare each baseline with the schema its old scripts produce (exit 1 on a difference)",
)
@click.pass_context
def squash(
    ctx: click.Context,
    directory: str | None,
    to: str,
    message: str,
    keep_data: bool,
    drop_data: bool,
    scratch_url: str | None,
    check: bool,
) -> None:
    """Squash the history up to a revision into one baseline revision"""
    if check:
        differences = run_command(ctx, lambda m: m.squash_check(scratch_url), directory)
        for line in differences:
            click.echo(f"DIFFERS {line}")
        if differences:
            ctx.exit(1)
        click.echo("Every baseline creates the schema its squashed scripts produce.")
        return

    async def action(m: Migrator) -> str:
        return str(await m.squash(to, message, keep_data, drop_data, scratch_url))

    path = run_command(ctx, action, directory)
    click.echo(f"Wrote the baseline {path}; the squashed scripts are in versions/squashed/.")
