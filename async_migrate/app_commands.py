"""Flask-Migrate's module-level functions, async, for the current Quart app: ``await upgrade()``, ...

Each runs one command on a :class:`~async_migrate.migrator.Migrator` made for ``current_app`` (inside an
app context), with the app's settings, and closes it. Their parameters and defaults are Flask-Migrate
4.1's, plus this package's own (``renames``, ``strict``); the work and the errors are the Migrator's
(:class:`~async_migrate.errors.AsyncMigrateError`, never ``sys.exit``). Commands that read only the
scripts (``heads``, ``history``, ``show``, ``branches``, ``init``, ``revision`` without autogenerate,
``merge``, ``edit``, ``list_templates``) need no database URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from quart import Quart, current_app

from .extension import state_of
from .migrator import Migrator

if TYPE_CHECKING:
    from alembic.script import Script

    from .review import RenamePolicy

T = TypeVar("T")

__all__ = [
    "branches",
    "check",
    "current",
    "downgrade",
    "edit",
    "heads",
    "history",
    "init",
    "list_templates",
    "merge",
    "migrate",
    "revision",
    "show",
    "stamp",
    "upgrade",
]


async def _run(
    directory: str | None, x_arg: Sequence[str] | None, action: Callable[[Migrator], Awaitable[T]]
) -> T:
    app: Quart = current_app._get_current_object()  # type: ignore[attr-defined]
    migrator = state_of(app).migrator(app, directory, x_arg)
    try:
        return await action(migrator)
    finally:
        await migrator.aclose()


async def list_templates() -> list[tuple[str, str]]:
    """The templates ``init`` can use, as ``(name, synopsis)``; the listing goes to stdout."""
    return await _run(None, None, lambda m: m.list_templates())


async def init(
    directory: str | None = None,
    multidb: bool = False,
    template: str | None = None,
    package: bool = False,
) -> None:
    """Create the migrations folder (``migrations``, or the app's ``directory``) from a template:
    ``async`` (default), ``async-multidb`` with ``multidb``; ``package`` writes ``__init__.py`` files."""
    chosen = template or ("async-multidb" if multidb else None)
    await _run(directory, None, lambda m: m.init(chosen, package))


async def revision(
    directory: str | None = None,
    message: str | None = None,
    autogenerate: bool = False,
    sql: bool = False,
    head: str = "head",
    splice: bool = False,
    branch_label: str | None = None,
    version_path: str | None = None,
    rev_id: str | None = None,
    x_arg: Sequence[str] | None = None,
    renames: RenamePolicy = "no",
) -> Script | None:
    """Write a new revision script (from the models with ``autogenerate``, reviewed: see
    :meth:`~async_migrate.migrator.Migrator.revision` for ``renames``); return it, or None when autogenerate found nothing."""
    return await _run(
        directory,
        x_arg,
        lambda m: m.revision(
            message, autogenerate, sql, head, splice, branch_label, version_path, rev_id,
            renames=renames,
        ),
    )  # fmt: skip


async def migrate(
    directory: str | None = None,
    message: str | None = None,
    sql: bool = False,
    head: str = "head",
    splice: bool = False,
    branch_label: str | None = None,
    version_path: str | None = None,
    rev_id: str | None = None,
    x_arg: Sequence[str] | None = None,
    renames: RenamePolicy = "no",
) -> Script | None:
    """``revision`` with autogenerate: the new script, or None when the models match the database."""
    return await _run(
        directory,
        x_arg,
        lambda m: m.migrate(
            message, sql, head, splice, branch_label, version_path, rev_id, renames=renames
        ),
    )


async def edit(directory: str | None = None, revision: str = "current") -> None:
    """Open a revision script in ``$EDITOR``."""
    await _run(directory, None, lambda m: m.edit(revision))


async def merge(
    directory: str | None = None,
    revisions: str | Sequence[str] = "heads",
    message: str | None = None,
    branch_label: str | None = None,
    rev_id: str | None = None,
) -> Script | None:
    """Write a revision that merges ``revisions`` (default: all the heads, as ``quart db merge`` with no
    argument; Flask-Migrate's empty default makes Alembic fail)."""
    return await _run(directory, None, lambda m: m.merge(revisions, message, branch_label, rev_id))


async def upgrade(
    directory: str | None = None,
    revision: str = "head",
    sql: bool = False,
    tag: str | None = None,
    x_arg: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Upgrade to ``revision`` behind the migration lock; the revisions applied, in order."""
    return await _run(directory, x_arg, lambda m: m.upgrade(revision, sql, tag))


async def downgrade(
    directory: str | None = None,
    revision: str = "-1",
    sql: bool = False,
    tag: str | None = None,
    x_arg: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Downgrade to ``revision`` (one step back by default; with ``sql``, ``head:-1``) behind the
    migration lock; the revisions undone, in order."""
    return await _run(directory, x_arg, lambda m: m.downgrade(revision, sql, tag))


async def show(directory: str | None = None, revision: str = "head") -> tuple[Script, ...]:
    """Describe ``revision`` on stdout; return its script(s)."""
    return await _run(directory, None, lambda m: m.show(revision))


async def history(
    directory: str | None = None,
    rev_range: str | None = None,
    verbose: bool = False,
    indicate_current: bool = False,
) -> tuple[Script, ...]:
    """List the revisions, newest first, on stdout (``indicate_current`` reads the database)."""
    return await _run(directory, None, lambda m: m.history(rev_range, verbose, indicate_current))


async def heads(
    directory: str | None = None, verbose: bool = False, resolve_dependencies: bool = False
) -> tuple[str, ...]:
    """The scripts' head revisions (listed on stdout)."""
    return await _run(directory, None, lambda m: m.heads(verbose, resolve_dependencies))


async def branches(directory: str | None = None, verbose: bool = False) -> tuple[str, ...]:
    """The scripts' branch points (listed on stdout)."""
    return await _run(directory, None, lambda m: m.branches(verbose))


async def current(directory: str | None = None, verbose: bool = False) -> tuple[str, ...]:
    """The database's revision(s) (listed on stdout)."""
    return await _run(directory, None, lambda m: m.current(verbose))


async def stamp(
    directory: str | None = None,
    revision: str | Sequence[str] = "head",
    sql: bool = False,
    tag: str | None = None,
    purge: bool = False,
) -> None:
    """Record ``revision`` in the version table without running any migration (``purge`` empties the
    table first), behind the migration lock."""
    await _run(directory, None, lambda m: m.stamp(revision, sql, tag, purge))


async def check(directory: str | None = None, strict: bool = False) -> None:
    """Raise :class:`~async_migrate.errors.ModelsDifferError` when the models differ from the database
    (with ``strict``, also while a script keeps an unreviewed ``# WARNING:``)."""
    await _run(directory, None, lambda m: m.check(strict))
