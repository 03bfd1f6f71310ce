"""The migration test kit: checks of a project's migration scripts, run on a throwaway database.

Each check is an ``async`` function of a :class:`~async_migrate.migrator.Migrator` whose database is
empty and may be wiped; it raises :class:`CheckFailed` naming the revision and what is wrong. They are
what the pytest plugin (:mod:`async_migrate.pytest_plugin`) collects as tests and what ``quart db test``
runs without pytest:

- ``single_head``: the scripts have one head;
- ``upgrade``: base to head on the empty database;
- ``model_matches_ddl``: at head, autogenerate finds no difference from the models;
- ``up_down_consistency``: head back to base, one revision at a time;
- ``stairway``: for each revision in order, upgrade to it, downgrade one step, upgrade again;
- ``downgrade_leaves_no_trace``: the schema after each revision's upgrade and downgrade is the schema
  before it (tables, columns, types, nullability, defaults, indexes, constraints; on PostgreSQL enum
  types and sequences too);
- ``lint_clean``: no unreviewed ``# WARNING:`` of the autogenerate review in any script.

:func:`~async_migrate.schema_snapshot.wipe` empties the database between checks (only a database the kit
found empty is wiped).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from .autogenerate import refuse_unreviewed
from .errors import (
    AsyncMigrateError,
    MigrationFailedError,
    ModelsDifferError,
    UnreviewedWarningsError,
)
from .schema_snapshot import (
    NotEmptyError,
    require_empty,
    rows_of,
    schema_difference,
    schema_of,
    wipe,
)

if TYPE_CHECKING:
    from alembic.script import Script

    from .migrator import Migrator

__all__ = [
    "CHECKS", "CheckFailed", "NotEmptyError", "check_names", "require_empty", "rows_of", "run_check",
    "schema_difference", "schema_of", "wipe",
]  # fmt: skip


class CheckFailed(AsyncMigrateError):
    """A check of the test kit failed: ``check`` is its name, ``revision`` the revision at fault."""

    def __init__(self, check: str, message: str, revision: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.revision = revision


# -- the checks ------------------------------------------------------------------------------------------


def _in_order(migrator: Migrator) -> list[Script]:
    """The revisions from base to head(s), each after the ones it stands on."""
    return list(reversed(list(migrator.script_directory().walk_revisions())))


async def _step(check: str, revision: str, what: str, action: Awaitable[Any]) -> None:
    try:
        await action
    except AsyncMigrateError as exc:
        raise CheckFailed(check, f"{what} of revision {revision} failed: {exc}", revision) from exc


def _one_below(revision: str) -> str:
    # One step down the branch that has the revision, leaving any other branch where it is.
    return f"{revision}@-1"


async def single_head(migrator: Migrator) -> None:
    heads = migrator.script_directory().get_heads()
    if len(heads) > 1:
        raise CheckFailed(
            "single_head",
            f"The scripts have {len(heads)} heads ({', '.join(heads)}); merge them: "
            f'`quart db merge -m "merge heads" {" ".join(heads)}`.',
            heads[0],
        )


async def _whole(check: str, what: str, action: Awaitable[Any]) -> None:
    """One upgrade or downgrade through the whole history: a failed revision names itself."""
    try:
        await action
    except MigrationFailedError as exc:
        raise CheckFailed(check, f"{what}: {exc}", exc.revision) from exc
    except AsyncMigrateError as exc:
        raise CheckFailed(check, f"{what}: {exc}") from exc


async def upgrade(migrator: Migrator) -> None:
    await _whole("upgrade", "The upgrade from base to head failed", migrator.upgrade("heads"))


async def model_matches_ddl(migrator: Migrator) -> None:
    await upgrade(migrator)
    try:
        await migrator.check()
    except ModelsDifferError as exc:
        raise CheckFailed("model_matches_ddl", f"At head, {exc}") from exc


async def up_down_consistency(migrator: Migrator) -> None:
    await _whole("up_down_consistency", "The upgrade to head failed", migrator.upgrade("heads"))
    await _whole(
        "up_down_consistency", "The downgrade from head to base failed", migrator.downgrade("base")
    )


async def stairway(migrator: Migrator) -> None:
    for script in _in_order(migrator):
        rev = script.revision
        await _step("stairway", rev, "The upgrade", migrator.upgrade(rev))
        await _step("stairway", rev, "The downgrade", migrator.downgrade(_one_below(rev)))
        await _step("stairway", rev, "The upgrade after its downgrade", migrator.upgrade(rev))


async def downgrade_leaves_no_trace(migrator: Migrator) -> None:
    for script in _in_order(migrator):
        rev = script.revision
        before = await schema_of(migrator)
        await _step("downgrade_leaves_no_trace", rev, "The upgrade", migrator.upgrade(rev))
        await _step(
            "downgrade_leaves_no_trace", rev, "The downgrade", migrator.downgrade(_one_below(rev))
        )
        left = schema_difference(before, await schema_of(migrator))
        if left:
            raise CheckFailed(
                "downgrade_leaves_no_trace",
                f"The downgrade of revision {rev} does not undo its upgrade: {'; '.join(left)}.",
                rev,
            )
        await migrator.upgrade(rev)


async def lint_clean(migrator: Migrator) -> None:
    script = migrator.script_directory()
    try:
        refuse_unreviewed(script)
    except UnreviewedWarningsError as exc:
        path = exc.warnings[0][0]
        revision = next((s.revision for s in script.walk_revisions() if s.path == path), None)
        raise CheckFailed("lint_clean", str(exc), revision) from exc


#: Every check, by name, in the order they run.
CHECKS: dict[str, Callable[[Migrator], Awaitable[None]]] = {
    "single_head": single_head,
    "upgrade": upgrade,
    "model_matches_ddl": model_matches_ddl,
    "up_down_consistency": up_down_consistency,
    "stairway": stairway,
    "downgrade_leaves_no_trace": downgrade_leaves_no_trace,
    "lint_clean": lint_clean,
}
#: The checks that need no database.
SCRIPTS_ONLY = ("single_head", "lint_clean")


def check_names(only: Sequence[str] | None) -> list[str]:
    """The checks to run: ``only`` (checked against :data:`CHECKS`), else all."""
    names = list(only) if only else list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise CheckFailed(
            "", f"No check named {', '.join(unknown)}; the checks are: {', '.join(CHECKS)}."
        )
    return names


async def run_check(name: str, migrator: Migrator) -> None:
    """Run one check on an empty database, and leave it empty again. No ledger is kept of the check's
    migrations: the database is thrown away, and the ledger's reads and rows would be most of the time
    of a stairway."""
    if name in SCRIPTS_ONLY:
        await CHECKS[name](migrator)
        return
    if migrator.binds:
        raise CheckFailed(
            name,
            "The migration checks run on a single-database project; this one has several databases "
            "(async-multidb), which they do not support yet.",
        )
    ledger, migrator.ledger = migrator.ledger, False
    try:
        await CHECKS[name](migrator)
    finally:
        migrator.ledger = ledger
        await wipe(migrator)
