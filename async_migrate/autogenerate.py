"""What autogenerate needs besides Alembic: ``revision --autogenerate`` (``migrate``) and ``check`` compare
the models' MetaData to a database at the scripts' head, and each generated revision is reviewed
(:mod:`async_migrate.review`) before it is written.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from .alembic_bridge import check_known, describe_diff
from .errors import (
    CommandError,
    ConfigurationError,
    ModelsDifferError,
    NotUpToDateError,
    UnreviewedWarningsError,
)

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

    from .review import RenamePolicy, Review

log = logging.getLogger("async_migrate")


class ReviewHook:
    """Alembic's ``process_revision_directives``: reviews the operations autogenerate produced, in place.
    :attr:`review` is what it found (None: nothing was generated)."""

    def __init__(self, renames: RenamePolicy) -> None:
        self.renames = renames
        self.review: Review | None = None

    def __call__(self, context: Any, revision: Any, directives: list[Any]) -> None:
        from .review import review_migration

        if directives and not all(u.is_empty() for u in directives[0].upgrade_ops_list):
            self.review = review_migration(
                directives[0], context.dialect, self.renames, self.review
            )


def report_review(review: Review | None, on_review: Callable[[Review], None] | None) -> None:
    """Give the review to ``on_review``, or log each of its findings at WARNING."""
    if review is None:
        return
    if on_review is not None:
        on_review(review)
        return
    for message in review.messages():
        log.warning("%s", message)


#: Said when the models' MetaData has no tables: autogenerate would then drop every table there is.
EMPTY_METADATA = (
    "The models' MetaData has no tables, so {command} would take every table in the database for one "
    "to drop: usually the models were not imported before their MetaData was handed over. Import the "
    "module that defines them first (e.g. `import models` in the app factory, before Migrate/Migrator), "
    "or, if an empty schema is really meant, pass --allow-empty-metadata (allow_empty_metadata=True). "
    "Nothing was written."
)


def refuse_empty_metadata(command: str, metadata: Iterable[MetaData | None], allowed: bool) -> None:
    """Refuse ``command`` (migrate, check) when a MetaData given has no tables, unless ``allowed``."""
    if not allowed and any(m is not None and not m.tables for m in metadata):
        raise ConfigurationError(EMPTY_METADATA.format(command=command))


def refuse_autogenerate(directory: str, metadata: MetaData | None, sql: bool) -> None:
    """Refuse ``--sql`` with autogenerate, and autogenerate without the models' MetaData."""
    if sql:
        raise CommandError(
            "--sql cannot be used with autogenerate: autogenerate compares the models "
            "to a live database. Generate the revision, then `upgrade --sql`."
        )
    # A hand-edited env.py may set target_metadata itself; let Alembic decide then.
    if metadata is None and "async_migrate" in (Path(directory) / "env.py").read_text():
        raise ConfigurationError(
            "Autogenerate needs the models' MetaData: pass metadata= to Migrator (or db= to Migrate)."
        )


async def ensure_at_heads(
    connections: Mapping[str, AsyncConnection],
    script: ScriptDirectory,
    command_name: str,
    read_current_heads: Callable[[AsyncConnection], Awaitable[tuple[str, ...]]],
    multidb: bool = False,
) -> None:
    """Refuse autogenerate (``migrate``, ``check``) on a database that is behind the scripts: a revision
    generated then would repeat the pending ones."""
    heads = script.get_heads()
    for name, connection in connections.items():
        current = await read_current_heads(connection)
        check_known(script, current)
        if set(current) == set(heads):
            continue
        where = f"The database {name!r}" if multidb else "The database"
        at = f"{where} is at {', '.join(current) or 'base (empty)'} but the scripts are at {', '.join(heads)}"
        if command_name == "migrate":
            raise NotUpToDateError(
                f"{at}: a new revision generated now would repeat the pending ones. Run `upgrade` "
                "first, then `migrate` again."
            )
        raise NotUpToDateError(f"{at}: run `upgrade` before `check`.")


def refuse_unreviewed(script: ScriptDirectory) -> None:
    """``check --strict``: refuse while a script still carries a ``# WARNING:`` of the review."""
    from .review import unreviewed_warnings

    left = unreviewed_warnings([s.path for s in script.walk_revisions()])
    if left:
        listed = "; ".join(f"{Path(path).name}: {warning}" for path, warning in left[:5])
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        raise UnreviewedWarningsError(
            f"{len(left)} autogenerate warning(s) not reviewed yet: {listed}{more}. Review each "
            "operation, then delete its '# WARNING:' comment.",
            left,
        )


def models_differ(diffs: Sequence[Any]) -> ModelsDifferError:
    """``check``'s finding: the differences Alembic found, in words."""
    listed = "; ".join(describe_diff(d) for d in diffs[:10])
    more = f" and {len(diffs) - 10} more" if len(diffs) > 10 else ""
    return ModelsDifferError(
        f"The models differ from the database: {listed}{more}. Run `migrate` to generate a "
        "revision for them.",
        list(diffs),
    )
