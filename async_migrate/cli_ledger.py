"""``quart db log``, ``verify`` and ``recover``: the ledger's commands (:mod:`async_migrate.ledger`).

They print what :class:`~async_migrate.migrator_ledger.LedgerCommands` returns; :mod:`async_migrate.cli`
adds them to the ``db`` group.
"""

from __future__ import annotations

import json

import click

from .cli_options import DIRECTORY_HELP
from .cli_runner import run_command
from .ledger import LedgerEntry
from .migrator import Migrator


def _entry_line(entry: LedgerEntry) -> str:
    when = f"{entry.finished_at:%Y-%m-%d %H:%M:%S}" if entry.finished_at else "-" * 19
    took = f"{entry.duration:8.3f}s" if entry.duration is not None else " " * 9
    message = f" {entry.message}" if entry.message else ""
    return f"{when} {entry.direction:<9} {entry.revision}{message} {took} {entry.who}"


@click.command("log")
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option("-n", "--limit", type=click.IntRange(min=1), default=None, help="Show the N newest")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per database, rows newest first"
)
@click.pass_context
def log(ctx: click.Context, directory: str | None, limit: int | None, as_json: bool) -> None:
    """Show what ran on the database, newest first (the ledger)"""
    found = run_command(ctx, lambda m: m.log_by_bind(limit), directory)
    if as_json:
        rows = {name: [e.as_json() for e in entries] for name, entries in found.items()}
        click.echo(json.dumps(rows[""] if list(rows) == [""] else rows, indent=2))
        return
    for name, entries in found.items():
        if len(found) > 1:
            click.echo(f"Database {name or '(main)'}:")
        if not entries:
            click.echo("No ledger rows yet: the next upgrade or stamp starts the ledger.")
        for entry in entries:
            click.echo(_entry_line(entry))


@click.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.option(
    "--accept",
    is_flag=True,
    help="Record each edited applied script as it is now, so that upgrade and verify accept it",
)
@click.pass_context
def verify(ctx: click.Context, directory: str | None, accept: bool) -> None:
    """Compare the applied scripts with what the database ran (exit 1 on any finding)"""
    if accept:
        accepted = run_command(ctx, lambda m: m.accept_edited(), directory)
        click.echo(
            f"Accepted the edited script(s) {', '.join(accepted)} as they are now."
            if accepted
            else "No applied script was edited: nothing to accept."
        )
        return
    findings = run_command(ctx, lambda m: m.verify(), directory)
    for finding in findings:
        click.echo(f"{finding.kind.upper().replace('_', ' ')}: {finding.message}")
        if finding.diff:
            click.echo(finding.diff.rstrip("\n"))
    if findings:
        ctx.exit(1)
    click.echo("Verified: every applied script is on disk as it ran.")


@click.command()
@click.option("-d", "--directory", default=None, help=DIRECTORY_HELP)
@click.argument("revisions", nargs=-1)
@click.pass_context
def recover(ctx: click.Context, directory: str | None, revisions: tuple[str, ...]) -> None:
    """Write scripts the database keeps in its ledger back into versions/"""

    async def action(m: Migrator) -> list[str]:
        return [str(path) for path in await m.recover(revisions)]

    written = run_command(ctx, action, directory)
    for path in written:
        click.echo(f"Recovered {path}")
    if not written:
        click.echo("Nothing to recover: every script the database stands on is on disk.")


COMMANDS = (log, verify, recover)
