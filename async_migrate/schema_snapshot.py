"""A database's schema and rows as plain data, compared and emptied: what the test kit's checks and
``squash --check`` compare, and how they clean up after themselves.

The version table and the ledger are left out: they are the tool's own. Only a database that
:func:`require_empty` found empty is ever wiped.
"""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import AsyncMigrateError
from .ledger import ledger_table_name
from .reflection import reflected, table_rows

if TYPE_CHECKING:
    from .migrator_base import MigratorBase


class NotEmptyError(AsyncMigrateError):
    """The test kit (or a squash) was pointed at a database that has tables: it would wipe them."""


def own_tables(migrator: MigratorBase) -> set[str]:
    """The tool's own tables (the version table and the ledger): no part of the schema compared."""
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


async def schema_of(migrator: MigratorBase) -> dict[str, Any]:
    """The database's schema as plain data (the version table and the ledger left out)."""
    ignored = own_tables(migrator)
    async with migrator.connect() as connection:
        try:
            return await connection.run_sync(_schema, ignored)
        finally:
            await connection.rollback()


async def rows_of(migrator: MigratorBase) -> dict[str, Any]:
    """Every row of every table (the version table and the ledger left out), by ``rows of <table>``."""
    ignored = own_tables(migrator)

    def read(connection: Connection) -> dict[str, Any]:
        return {
            f"rows of {table.name}": [
                [str(v) for v in row.values()] for row in table_rows(connection, table)
            ]
            for table in reflected(connection, ignored).sorted_tables
        }

    async with migrator.connect() as connection:
        try:
            return await connection.run_sync(read)
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


async def wipe(migrator: MigratorBase) -> None:
    """Drop every table, view (and on PostgreSQL enum type and sequence) of the database."""
    async with migrator.connect() as connection:
        await connection.run_sync(_drop_everything)
        await connection.commit()


async def require_empty(migrator: MigratorBase) -> None:
    """Refuse a database that has anything in it: the checks would wipe it."""
    found = await schema_of(migrator)
    current = await migrator.database.read_version_table(migrator._deadline())
    if found or current:
        listed = ", ".join([*list(found)[:5], *(f"revision {rev}" for rev in current)])
        raise NotEmptyError(
            f"The migration tests need an empty, throwaway database: they upgrade, downgrade and wipe "
            f"it. {migrator.url} has {listed}{', ...' if len(found) > 5 else ''}. Point them at an "
            "empty database made for the tests."
        )
