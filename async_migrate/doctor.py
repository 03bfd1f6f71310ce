"""``doctor``: a read-only look at the database and the scripts, reporting every problem with its fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .errors import AsyncMigrateError

if TYPE_CHECKING:
    from .migrator import Migrator


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


async def diagnose(migrator: Migrator) -> Diagnosis:
    """Read the database(s) and the scripts and report, changing nothing. In a multi-database setup each
    database is examined on its own and the problems are named by database."""
    if migrator.binds:
        parts = [
            (child.bind_name or "(main)", await diagnose(child))
            for child in migrator.bind_migrators()
        ]
        first = parts[0][1]
        merged = Diagnosis(
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
    from .migrator import describe_diff

    found = Diagnosis(url=migrator.url)
    script = migrator.script_directory()
    found.script_heads = tuple(script.get_heads())
    if len(found.script_heads) > 1:
        found.problems.append(
            f"The scripts have {len(found.script_heads)} heads ({', '.join(found.script_heads)}): "
            f"merge them with `quart db merge -m 'merge heads' {' '.join(found.script_heads)}`."
        )
    async with migrator.connect() as connection:
        found.current_heads = await migrator.read_current_heads(connection)
        known = {rev.revision for rev in script.walk_revisions()}
        found.unknown_revisions = tuple(r for r in found.current_heads if r not in known)
        if found.unknown_revisions:
            names = ", ".join(found.unknown_revisions)
            found.problems.append(
                f"The database is at {names}, which the scripts don't know: restore the missing script "
                f"(or deploy the newer release that has it), or, after checking the schema, record a known "
                f"revision with `quart db stamp --purge <revision>`."
            )
        else:
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

        def other_tables(sync_connection: Connection) -> list[str]:
            names = sa.inspect(sync_connection).get_table_names(
                schema=migrator.version_table_schema
            )
            return sorted(name for name in names if name != migrator.version_table)

        existing = await connection.run_sync(other_tables)
        await connection.rollback()
        if not found.current_heads and existing:
            found.untracked_tables = tuple(existing)
            found.problems.append(
                f"The version table {migrator.version_table!r} is missing or empty but the database has "
                f"tables ({', '.join(existing[:5])}{', ...' if len(existing) > 5 else ''}): if the schema "
                "already matches a revision, record it with `quart db stamp <revision>` instead of "
                "upgrading (which would try to create them again)."
            )
        at_heads = set(found.current_heads) == set(found.script_heads)
        if migrator.metadata is not None and at_heads and not found.unknown_revisions:
            diffs = await connection.run_sync(_compare, migrator.metadata, migrator.context_kwargs)
            await connection.rollback()
            found.drift = tuple(describe_diff(diff) for diff in diffs)
            if found.drift:
                found.problems.append(
                    "The models differ from the database: generate a revision with `quart db migrate`."
                )
    return found


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
