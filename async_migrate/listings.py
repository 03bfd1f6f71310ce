"""Alembic's listing commands, ``heads``, ``branches``, ``show``, ``history`` and ``current``, on a
ScriptDirectory already loaded.

Each ``alembic.command`` function builds its own ScriptDirectory, and so imports every revision script
again after the Migrator loaded them to return its data. These print exactly what those commands print,
with Alembic's own formatting (``Script.cmd_format``, ``Script.log_entry``); each is called through
:func:`async_migrate.alembic_bridge.run`, which translates Alembic's errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CommandError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory


def show_heads(
    config: Config, script: ScriptDirectory, verbose: bool, resolve_dependencies: bool
) -> tuple[str, ...]:
    """``alembic heads``; returns the heads' ids."""
    heads = script.get_revisions("heads" if resolve_dependencies else script.get_heads())
    for rev in heads:
        if rev is not None:
            config.print_stdout(
                rev.cmd_format(verbose, include_branches=True, tree_indicators=False)
            )
    if resolve_dependencies:
        return tuple(rev.revision for rev in heads if rev is not None)
    return tuple(script.get_heads())


def show_branches(config: Config, script: ScriptDirectory, verbose: bool) -> tuple[str, ...]:
    """``alembic branches``; returns the ids of the branch points."""
    points = [sc for sc in script.walk_revisions() if sc.is_branch_point]
    for sc in points:
        children = (script.get_revision(rev) for rev in sc.nextrev)
        config.print_stdout(
            "%s\n%s\n",
            sc.cmd_format(verbose, include_branches=True),
            "\n".join(
                f"{' ' * len(str(sc.revision))} -> "
                f"{child.cmd_format(False, include_branches=True, include_doc=verbose)}"
                for child in children
                if child is not None
            ),
        )
    return tuple(sc.revision for sc in points)


def show_revisions(
    config: Config, script: ScriptDirectory, revisions: tuple[str, ...]
) -> tuple[Script, ...]:
    """``alembic show`` for each of ``revisions`` (already resolved from ``current``)."""
    from alembic.script import Script

    found: list[Script] = []
    for rev in revisions:
        for sc in script.get_revisions(rev):
            if isinstance(sc, Script):
                config.print_stdout(sc.log_entry)
                found.append(sc)
    return tuple(found)


def show_history(
    config: Config,
    script: ScriptDirectory,
    base: str | None,
    head: str | None,
    verbose: bool,
    indicate_current: bool,
    with_environment: bool,
) -> None:
    """``alembic history -r base:head``; with ``with_environment`` env.py runs (as Alembic's does) to
    tell the current revision(s)."""

    def display(lower: str | None, upper: str | None, currents: Any = ()) -> None:
        for sc in script.walk_revisions(base=lower or "base", head=upper or "heads"):
            if indicate_current:
                sc._db_current_indicator = sc.revision in currents
            config.print_stdout(
                sc.cmd_format(
                    verbose=verbose, include_branches=True, include_doc=True, include_parents=True
                )
            )

    if not (with_environment or "current" in (base, head)):
        display(base, head)
        return
    from alembic.runtime.environment import EnvironmentContext

    def display_with_current(rev: Any, context: Any) -> list[Any]:
        if head == "current":
            display(base, rev, rev)
        elif base == "current":
            display(rev, head, rev)
        else:
            display(base, head, rev)
        return []

    with EnvironmentContext(config, script, fn=display_with_current):
        script.run_env()


def show_current(config: Config, script: ScriptDirectory, verbose: bool) -> None:
    """``alembic current``."""
    from alembic.runtime.environment import EnvironmentContext
    from alembic.util import obfuscate_url_pw

    def display_version(rev: Any, context: Any) -> list[Any]:
        if verbose:
            config.print_stdout(
                "Current revision(s) for %s:", obfuscate_url_pw(context.connection.engine.url)
            )
        for sc in script.get_all_current(rev):
            config.print_stdout(sc.cmd_format(verbose))
        return []

    with EnvironmentContext(config, script, fn=display_version, dont_mutate=True):
        script.run_env()


def split_range(rev_range: str | None) -> tuple[str | None, str | None]:
    """``history``'s ``-r [start]:[end]`` as ``(start, end)``; None stands for an end not given."""
    if rev_range is None:
        return None, None
    if ":" not in rev_range:
        raise CommandError(
            "History range requires [start]:[end], [start]:, or :[end] (e.g. -r base:head)."
        )
    base, head = rev_range.strip().split(":", 1)
    return base, head


def walk_history(
    script: ScriptDirectory,
    base: str | None,
    head: str | None,
    current: tuple[str, ...],
) -> tuple[Script, ...]:
    """The scripts from ``base`` to ``head`` (either may be ``current``: ``current`` resolves it), as
    ``history`` lists them."""

    def resolve(end: str | None, default: str) -> str:
        if end == "current":
            return current[0] if len(current) == 1 else default
        return end or default

    return tuple(script.walk_revisions(resolve(base, "base"), resolve(head, "heads")))
