"""``doctor``: a read-only look at the database and the scripts, reporting every problem with its fix."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from .alembic_bridge import describe_diff
from .database import Database
from .errors import AsyncMigrateError

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory


@dataclass
class Diagnosis:
    """What :func:`diagnose` found. ``problems`` holds one sentence per problem, each naming its fix."""

    url: str
    current_heads: tuple[str, ...] = ()
    script_heads: tuple[str, ...] = ()
    unknown_revisions: tuple[str, ...] = ()
    pending_revisions: tuple[str, ...] = ()
    untracked_tables: tuple[str, ...] = ()
    drift: tuple[str, ...] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """The report, as ``quart db doctor`` prints it."""
        out = [
            f"Database: {self.url}",
            f"Current revision(s): {', '.join(self.current_heads) or 'none (empty version table)'}",
            f"Script head(s): {', '.join(self.script_heads) or 'none (no revisions yet)'}",
        ]
        if self.pending_revisions:
            out.append(
                f"Pending revisions ({len(self.pending_revisions)}): {', '.join(self.pending_revisions)}"
            )
        if self.drift is not None:
            out.append(
                "Models match the database."
                if not self.drift
                else f"Models differ from the database: {'; '.join(self.drift)}"
            )
        if self.healthy:
            out.append("Healthy: nothing to do.")
        else:
            out.extend(f"PROBLEM: {problem}" for problem in self.problems)
        return out

    @classmethod
    def merged(cls, parts: Sequence[tuple[str, Diagnosis]]) -> Diagnosis:
        """One report of several databases' ``(name, diagnosis)``, each problem named by its database."""
        first = parts[0][1]
        merged = cls(
            url=", ".join(part.url for _, part in parts),
            current_heads=first.current_heads,
            script_heads=first.script_heads,
            unknown_revisions=tuple(r for _, part in parts for r in part.unknown_revisions),
            pending_revisions=tuple(r for _, part in parts for r in part.pending_revisions),
            untracked_tables=tuple(t for _, part in parts for t in part.untracked_tables),
            drift=tuple(d for _, part in parts for d in part.drift or ()),
        )
        merged.problems = [
            f"[{name}] {problem}" for name, part in parts for problem in part.problems
        ]
        return merged


async def diagnose(
    database: Database,
    script: ScriptDirectory,
    metadata: sa.MetaData | None,
    context_kwargs: dict[str, Any],
    deadline: float,
) -> Diagnosis:
    """Read one database and the scripts and report, changing nothing."""
    found = Diagnosis(url=database.url)
    found.script_heads = tuple(script.get_heads())
    if len(found.script_heads) > 1:
        found.problems.append(
            f"The scripts have {len(found.script_heads)} heads ({', '.join(found.script_heads)}): "
            f"merge them with `quart db merge -m 'merge heads' {' '.join(found.script_heads)}`."
        )
    async with database.connect(deadline) as connection:
        found.current_heads = await database.read_current_heads(connection)
        _revisions(found, script)
        await _untracked_tables(found, database, connection, context_kwargs.get("include_name"))
        at_heads = set(found.current_heads) == set(found.script_heads)
        if metadata is not None and not metadata.tables:
            found.problems.append(
                "The models' MetaData has no tables (were the models imported before it was handed "
                "over?): `migrate` would write a drop of every table, so it refuses until they are."
            )
        elif metadata is not None and at_heads and not found.unknown_revisions:
            diffs = await connection.run_sync(_compare, metadata, context_kwargs)
            await connection.rollback()
            found.drift = tuple(describe_diff(diff) for diff in diffs)
            if found.drift:
                found.problems.append(
                    "The models differ from the database: generate a revision with `quart db migrate`."
                )
    return found


def _revisions(found: Diagnosis, script: ScriptDirectory) -> None:
    """Unknown and pending revisions."""
    known = {rev.revision for rev in script.walk_revisions()}
    found.unknown_revisions = tuple(r for r in found.current_heads if r not in known)
    if found.unknown_revisions:
        names = ", ".join(found.unknown_revisions)
        found.problems.append(
            f"The database is at {names}, which the scripts don't know: restore the missing script "
            f"(or deploy the newer release that has it), or, after checking the schema, record a known "
            f"revision with `quart db stamp --purge <revision>`."
        )
        return
    try:
        pending = script.iterate_revisions(
            found.script_heads or "base", found.current_heads or "base"
        )
        found.pending_revisions = tuple(reversed([rev.revision for rev in pending]))
    except Exception:
        found.pending_revisions = ()
    if found.pending_revisions:
        found.problems.append(
            f"{len(found.pending_revisions)} revision(s) not applied yet: run `quart db upgrade`."
        )


async def _untracked_tables(
    found: Diagnosis,
    database: Database,
    connection: AsyncConnection,
    include_name: Callable[[str, str, dict[str, Any]], bool] | None,
) -> None:
    """Tables in a database whose version table is missing or empty (but those migrations leave out:
    the ledger, what the user's ``include_name`` excludes)."""
    schema = database.version_table_schema

    def other_tables(sync_connection: Connection) -> list[str]:
        names = sa.inspect(sync_connection).get_table_names(schema=schema)
        return sorted(
            name
            for name in names
            if name != database.version_table
            and (include_name is None or include_name(name, "table", {"schema_name": schema}))
        )

    existing = await connection.run_sync(other_tables)
    await connection.rollback()
    if not found.current_heads and existing:
        found.untracked_tables = tuple(existing)
        found.problems.append(
            f"The version table {database.version_table!r} is missing or empty but the database has "
            f"tables ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''}): if the schema "
            "already matches a revision, record it with `quart db stamp <revision>` instead of "
            "upgrading (which would try to create them again)."
        )


def _compare(
    connection: Connection, metadata: sa.MetaData, context_kwargs: dict[str, Any]
) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    options = {
        key: value
        for key, value in context_kwargs.items()
        if key
        in (
            "compare_type",
            "compare_server_default",
            "include_object",
            "include_name",
            "include_schemas",
            "version_table",
            "version_table_schema",
        )
    }
    context = MigrationContext.configure(connection, opts=options)
    try:
        return list(compare_metadata(context, metadata))
    except Exception as exc:
        raise AsyncMigrateError(f"Could not compare the models to the database: {exc}") from exc
