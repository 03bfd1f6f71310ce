"""The upgrade an app runs as it starts, before it serves: any framework's startup hook can await it.

A FastAPI or Starlette lifespan, a Litestar ``on_startup``, a plain script: ``await
startup_upgrade(migrator)``. The Quart extension's ``before_serving`` hook runs it too. The lock, the no-op
fast path and the retries of a database still coming up are the
:class:`~async_migrate.migrator.Migrator`'s; this adds the startup's own rules: log what happens (where
the app set up no logging, on stderr), refuse to serve on a wrong schema, end waits in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .errors import AsyncMigrateError, UnknownRevisionError
from .locking import waits_end_by
from .migrator import Migrator

log = logging.getLogger("async_migrate")


async def startup_upgrade(
    migrator: Migrator,
    target: str = "head",
    *,
    allow_db_ahead: bool = False,
    connect_timeout: float | None = 30.0,
    startup_timeout: float | None = None,
    refuse_edited: bool = False,
) -> tuple[str, ...]:
    """Bring the database to ``target`` (behind the migration lock), logging what happened; return the
    revisions this process applied. Raises when the app must not serve: the database could not be brought
    there, or it is at a revision these scripts don't know (unless ``allow_db_ahead``: a newer release
    migrated it, and this one serves anyway, with a warning). A script applied earlier that was edited
    since (the ledger's ``verify``) is a warning, and the upgrade goes on, unless ``refuse_edited``
    (then :class:`~async_migrate.errors.EditedScriptError`, unless the Migrator allows edited scripts).

    ``connect_timeout`` (s; None: the Migrator's own, by default one try): retries of a database still
    coming up. ``startup_timeout`` (s; None or 0: none) ends the waits (connecting, for the lock) before the
    server's own startup timeout (Hypercorn: 60 s), with a :class:`~async_migrate.errors.LockTimeoutError` that says why; a
    migration already running under the lock is not cut short by it."""
    started = time.monotonic()
    show_log_lines()
    if connect_timeout is not None:
        migrator.connect_timeout = connect_timeout
    if not refuse_edited:
        migrator.allow_edited = True  # a replica that will not start is worse than a warning
    try:
        log.info("Startup upgrade of %s to %s", migrator.url, target)
        with _waits_bounded(started, startup_timeout):
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
    except asyncio.CancelledError:
        _log_cancelled(migrator, target, started)
        raise


def _log_cancelled(migrator: Migrator, target: str, started: float) -> None:
    # Usually the server's own startup budget (Hypercorn's startup_timeout, 60 s by default), which
    # then reports only a generic LifespanTimeoutError: say what happened, and what to do instead.
    log.error(
        "Startup upgrade of %s to %s was cancelled after %.0fs, most likely by the server's startup "
        "timeout (Hypercorn: startup_timeout, 60s by default). Revisions committed before it stay "
        "applied; the one running was rolled back (on SQLite: finished), and the next start begins "
        "there again. A migration this long does not fit in an app's startup: run `quart db upgrade` "
        "as a release step or Job before the new version starts (MIGRATE_AUTO_UPGRADE = False), or "
        "raise the server's startup timeout above the migration's time.",
        migrator.url,
        target,
        time.monotonic() - started,
    )


def _waits_bounded(
    started: float, startup_timeout: float | None
) -> contextlib.AbstractContextManager[None]:
    if not startup_timeout:
        return contextlib.nullcontext()
    return waits_end_by(
        started + startup_timeout,
        f"the startup upgrade's waits end after {startup_timeout:g}s (MIGRATE_STARTUP_TIMEOUT), inside "
        "the server's startup timeout (Hypercorn: startup_timeout, 60s); run long migrations as a "
        "release step or Job (`quart db upgrade`, MIGRATE_AUTO_UPGRADE = False)",
    )


def show_log_lines() -> None:
    """Where the app set up no logging at all (uvicorn configures only its own loggers), our INFO lines go
    to stderr: a startup that waits for another replica, or applies revisions, says so."""
    ours = logging.getLogger("async_migrate")
    chain: list[logging.Logger] = [ours, logging.getLogger()]
    if any(not isinstance(h, logging.NullHandler) for lg in chain for h in lg.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-5.5s [%(name)s] %(message)s"))
    ours.addHandler(handler)
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
