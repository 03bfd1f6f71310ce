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

:func:`wipe` empties the database between checks (only a database the kit found empty is wiped).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import AsyncMigrateError, MigrationFailedError, ModelsDifferError
from .ledger import ledger_table_name

if TYPE_CHECKING:
    from alembic.script import Script

    from .migrator import Migrator


class CheckFailed(AsyncMigrateError):
    """A check of the test kit failed: ``check`` is its name, ``revision`` the revision at fault."""

    def __init__(self, check: str, message: str, revision: str | None = None) -> None:
        super().__init__(message)
        self.check = check
        self.revision = revision


class NotEmptyError(AsyncMigrateError):
    """The test kit was pointed at a database that has tables: it would wipe them."""


# -- the database: its schema, emptied ---------------------------------------------------------------


def _own_tables(migrator: Migrator) -> set[str]:
    return {
        migrator.version_table,
        ledger_table_name(migrator.version_table, migrator.ledger_table),
    }


def _schema(connection: Connection, ignored: set[str]) -> dict[str, Any]:
    inspector = sa.inspect(connection)
    found: dict[str, Any] = {}
    for table in sorted(set(inspector.get_table_names()) - ignored):
        found[f"table {table}"] = {
            "columns": {
                c["name"]: {
                    "type": _type_name(c["type"], connection),
                    "nullable": c["nullable"],
                    "default": str(c.get("default")),
                }
                for c in inspector.get_columns(table)
            },
            "primary key": inspector.get_pk_constraint(table).get("constrained_columns"),
            "indexes": sorted(
                (i["name"] or "", tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
                for i in inspector.get_indexes(table)
            ),
            "unique constraints": sorted(
                (u["name"] or "", tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            "foreign keys": sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
            "check constraints": sorted(
                (c["name"] or "", " ".join(str(c["sqltext"]).split()))
                for c in inspector.get_check_constraints(table)
            ),
        }
    for view in sorted(inspector.get_view_names()):
        found[f"view {view}"] = True
    if connection.dialect.name == "postgresql":
        for enum in inspector.get_enums():  # type: ignore[attr-defined]
            found[f"enum type {enum['name']}"] = list(enum["labels"])
        for sequence in inspector.get_sequence_names():
            # The ledger's id sequence is the kit's own, like the ledger.
            if not any(sequence.startswith(f"{table}_") for table in ignored):
                found[f"sequence {sequence}"] = True
    return found


def _type_name(type_: Any, connection: Connection) -> str:
    try:
        return str(type_.compile(dialect=connection.dialect))
    except Exception:
        return repr(type_)


async def schema_of(migrator: Migrator) -> dict[str, Any]:
    """The database's schema as plain data (the version table and the ledger left out)."""
    ignored = _own_tables(migrator)
    async with migrator.connect() as connection:
        try:
            return await connection.run_sync(_schema, ignored)
        finally:
            await connection.rollback()


def schema_difference(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two :func:`schema_of` results, one line each."""
    lines = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"{name} is gone")
        elif name not in before:
            lines.append(f"{name} is left behind")
        elif before[name] != after[name]:
            old = json.dumps(before[name], indent=1, sort_keys=True, default=str).splitlines()
            new = json.dumps(after[name], indent=1, sort_keys=True, default=str).splitlines()
            changed = [
                line.strip()
                for line in difflib.unified_diff(old, new, lineterm="", n=0)
                if line[:1] in "+-" and not line.startswith(("+++", "---"))
            ]
            lines.append(f"{name} differs: {'; '.join(changed)}")
    return lines


def _drop_everything(connection: Connection) -> None:
    inspector = sa.inspect(connection)
    postgres = connection.dialect.name == "postgresql"
    preparer = connection.dialect.identifier_preparer
    for view in inspector.get_view_names():
        connection.exec_driver_sql(f"DROP VIEW {preparer.quote(view)}")
    metadata = sa.MetaData()
    metadata.reflect(connection)
    if postgres:
        for table in metadata.tables.values():
            connection.exec_driver_sql(
                f"DROP TABLE IF EXISTS {preparer.format_table(table)} CASCADE"
            )
        for enum in inspector.get_enums():  # type: ignore[attr-defined]
            connection.exec_driver_sql(
                f"DROP TYPE IF EXISTS {preparer.quote(enum['name'])} CASCADE"
            )
        for sequence in inspector.get_sequence_names():
            connection.exec_driver_sql(f"DROP SEQUENCE IF EXISTS {preparer.quote(sequence)}")
    else:
        metadata.drop_all(connection)


async def wipe(migrator: Migrator) -> None:
    """Drop every table, view (and on PostgreSQL enum type and sequence) of the database."""
    async with migrator.connect() as connection:
        await connection.run_sync(_drop_everything)
        await connection.commit()


async def require_empty(migrator: Migrator) -> None:
    """Refuse a database that has anything in it: the checks would wipe it."""
    found = await schema_of(migrator)
    current = await migrator.current(quiet=True)
    if found or current:
        listed = ", ".join([*list(found)[:5], *(f"revision {rev}" for rev in current)])
        raise NotEmptyError(
            f"The migration tests need an empty, throwaway database: they upgrade, downgrade and wipe "
            f"it. {migrator.url} has {listed}{', ...' if len(found) > 5 else ''}. Point them at an "
            "empty database made for the tests."
        )


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
    from .review import unreviewed_warnings

    script = migrator.script_directory()
    left = unreviewed_warnings([s.path for s in script.walk_revisions()])
    if left:
        path, _ = left[0]
        revision = next((s.revision for s in script.walk_revisions() if s.path == path), None)
        listed = "; ".join(f"{Path(p).name}: {w}" for p, w in left[:5])
        raise CheckFailed(
            "lint_clean",
            f"{len(left)} autogenerate warning(s) not reviewed: {listed}. Review each operation, then "
            "delete its '# WARNING:' comment.",
            revision,
        )


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
    ledger, migrator.ledger = migrator.ledger, False
    try:
        await CHECKS[name](migrator)
    finally:
        migrator.ledger = ledger
        await wipe(migrator)
