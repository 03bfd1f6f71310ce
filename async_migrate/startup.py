"""The upgrade an app runs as it starts, before it serves: any framework's startup hook can await it.

The Quart extension's ``before_serving`` hook runs :func:`startup_upgrade`; the lock, the no-op fast path
and the retries of a database still coming up are the :class:`~async_migrate.migrator.Migrator`'s.
"""

from __future__ import annotations

import logging

from .errors import AsyncMigrateError, UnknownRevisionError
from .migrator import Migrator

log = logging.getLogger("async_migrate")


async def startup_upgrade(
    migrator: Migrator, target: str = "head", allow_db_ahead: bool = False
) -> tuple[str, ...]:
    """Bring the database to ``target`` (behind the migration lock), logging what happened; return the
    revisions this process applied. Raises when the app must not serve: the database could not be brought
    there, or it is at a revision these scripts don't know (unless ``allow_db_ahead``: a newer release
    migrated it, and this one serves anyway, with a warning)."""
    try:
        log.info("Startup upgrade of %s to %s", migrator.url, target)
        applied = await migrator.upgrade(target)
        log.info(
            "Database %s ready at %s (%d revision(s) applied by this process)",
            migrator.url,
            target,
            len(applied),
        )
        return applied
    except UnknownRevisionError as exc:
        if not allow_db_ahead:
            log.error("Startup upgrade refused: %s", exc)
            raise
        log.warning(
            "Serving although the database is at %s, unknown to these scripts (MIGRATE_ALLOW_DB_AHEAD): %s",
            ", ".join(exc.revisions),
            exc,
        )
        return ()
    except AsyncMigrateError as exc:
        log.error("Startup upgrade failed: %s", exc)
        raise
