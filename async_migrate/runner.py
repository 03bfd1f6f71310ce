"""Applying revisions: one upgrade or downgrade of one database, on a connection that holds the lock.

An :class:`UpgradeRun` or :class:`DowngradeRun` is what :func:`async_migrate.locking.run_locked` runs: it
says which database states it refuses and when there is nothing to do, and its ``work`` applies the
revisions. On PostgreSQL and MySQL/MariaDB that happens behind the DDL guard (session lock timeout, a
revision blocked by a table lock rolled back and retried, the blockers named); on a SQLite file in a worker
thread (:mod:`async_migrate.sqlite_runner`). A revision that fails becomes a
:class:`~async_migrate.errors.MigrationFailedError` saying which one, what was rolled back, and where the
database is now.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import alembic_bridge, asyncpg_simple_query
from .alembic_errors import unknown_revisions
from .database import Database, answered_within, discard
from .ddl_guard import (
    MYSQL_DIALECTS,
    AutocommitTracker,
    BlockerWatcher,
    DDLGuard,
    is_lock_timeout,
    reset_session_timeouts,
    session_id,
    set_session_timeouts,
)
from .errors import (
    AsyncMigrateError,
    CommandError,
    DDLLockTimeoutError,
    EditedScriptError,
    MigrationFailedError,
    connection_lost,
)
from .ledger import LedgerRecorder, ledger_of, read_ledger
from .ledger_checks import edited_since_applied
from .progress import AppliedRecorder, Progress
from .settings import MigrationSettings
from .sqlite_runner import read_version_table, sqlite_file_url

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from .script_heads import Heads

log = logging.getLogger("async_migrate")

# What a driver says when the database, not the revision, is at fault: no script fix helps then.
_UNWRITABLE = (
    "readonly database",
    "read-only",
    "disk is full",
    "No space left",
    "Permission denied",
    "unable to open database file",
)


class MigrationRun:
    """The state of one upgrade or downgrade: Alembic's Config and the loaded scripts (each made once, when
    first needed), and the revisions applied so far (:attr:`recorder`).

    :param database: the database to migrate.
    :param settings: the lock and DDL guard settings.
    :param make_config: makes Alembic's Config for this run.
    :param revision: the target revision (relative ones such as ``-1`` too).
    :param tag: Alembic's ``--tag``, for env.py.
    :param progress: where each revision applied is reported; None: INFO log lines.
    :param bind_name: in a multi-database setup, the name of this database ("" the main one).
    :param known: the scripts' heads and revisions without a full load (the heads cache): the scripts are
        then loaded only once there is work. Without it they are loaded at once, so that a broken script
        fails before any wait for the lock.
    """

    direction = "upgrade"

    def __init__(
        self,
        database: Database,
        settings: MigrationSettings,
        make_config: Callable[[], Config],
        revision: str,
        tag: str | None = None,
        progress: Progress | None = None,
        bind_name: str | None = None,
        known: Heads | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.revision = revision
        self.tag = tag
        self.bind_name = bind_name
        self.known = known
        self.recorder = AppliedRecorder(database.url, progress)
        table = ledger_of(
            settings.ledger, settings.ledger_table, database.version_table,
            database.version_table_schema,
        )  # fmt: skip
        #: Writes the ledger's rows (None: the ledger is off).
        self.ledger = LedgerRecorder(table) if table is not None else None
        if self.direction == "downgrade":
            self.recorder.verb = "Reverted"
        #: Whether Alembic ran to its end (every revision applied, as far as this client knows).
        self.finished = False
        self.started_at: tuple[str, ...] = ()
        self._make_config = make_config
        if known is None:
            _ = self.scripts

    @functools.cached_property
    def config(self) -> Config:
        return self._make_config()

    @functools.cached_property
    def scripts(self) -> ScriptDirectory:
        return alembic_bridge.load_scripts(self.config, self.database.sqlalchemy_url)

    @property
    def target(self) -> str | None:
        """The revision the run goes to, when it names one; None for a downgrade."""
        return self.revision

    # -- what run_locked asks (see locking.LockedWork) ---------------------------------------------------

    def precheck(self, current: tuple[str, ...]) -> None:
        self.check_scripts(current)

    def check(self, current: tuple[str, ...]) -> None:
        """Nothing beyond :meth:`precheck`, unless that was a cheaper one."""

    def is_done(self, current: tuple[str, ...]) -> bool:
        return False

    def check_scripts(self, current: tuple[str, ...]) -> None:
        """Refuse a database at a revision the scripts don't know."""
        alembic_bridge.check_known(self.scripts, current)

    async def before_ledger(
        self, connection: AsyncConnection, current: tuple[str, ...], table: sa.Table
    ) -> None:
        """What the ledger must see before the run: nothing, unless an upgrade."""

    async def work(self, connection: AsyncConnection, current: tuple[str, ...]) -> None:
        """Apply the revisions, recording and reporting each."""
        if self.ledger is not None:
            await self.before_ledger(connection, current, self.ledger.table)
            self.ledger.start(current)
        # The ledger's row first: it belongs to the revision, before whatever ends the revision.
        alembic_bridge.add_version_callbacks(
            self.config, *([self.ledger] if self.ledger is not None else []), self.recorder
        )
        self.recorder.start()
        self.started_at = current
        if self.target is not None:
            try:
                pending = self.scripts.iterate_revisions(self.target, current or "base")
                self.recorder.total = len(list(pending))
            except Exception:
                self.recorder.total = None  # Alembic will say what is wrong with the target
        sync_connection = connection.sync_connection
        # Remember what a failing revision did that its rollback cannot undo: every statement where DDL
        # commits as it runs, those of an autocommit_block() elsewhere.
        transactional = connection.dialect.name in ("postgresql", "sqlite")
        watching = (
            self.recorder.watching_statements(sync_connection, autocommit_only=transactional)
            if sync_connection is not None
            else contextlib.nullcontext()
        )
        # On asyncpg the ledger's row takes each revision's version-table statement along.
        database = self.database
        carrying = asyncpg_simple_query.holding_version_statements(
            sync_connection if self.ledger is not None else None,
            database.version_table,
            database.version_table_schema,
        )
        with watching, carrying:
            await self._migrate(connection)
        self.finished = True
        self.recorder.summarise()

    # -- after a lost connection (see locking.run_locked) ------------------------------------------------

    def reached(self, current: tuple[str, ...]) -> bool:
        if self.is_done(current):
            return True
        # Where the last revision applied left the version table, before its COMMIT: the target, if
        # every revision of the run got that far.
        last = self.recorder.heads
        all_applied = self.finished or (
            self.recorder.total is not None and len(self.recorder.applied) >= self.recorder.total
        )
        return last is not None and all_applied and set(current) == set(last)

    def lost_report(self, current: tuple[str, ...] | None) -> str:
        applied = self.recorder.applied
        if not applied:
            return f"This {self.direction} had applied no revision yet."
        listed = ", ".join(applied)
        ran = self.recorder.statements
        stays = (
            f" These statements of the revision after them had run and stay applied: {'; '.join(ran[-10:])}."
            if ran
            else ""
        )
        if current is None:
            return (
                f"This {self.direction} had applied {listed} (the last of them perhaps not committed); each "
                f"revision commits on its own, so the database is at one of them or where it started "
                f"({', '.join(self.started_at) or 'base'}).{stays}"
            )
        kept = next((i for i, revision in enumerate(applied) if set(current) == {revision}), None)
        if self.direction == "upgrade" and kept is not None:
            lost = applied[kept + 1 :]
            return (
                f"Of the revisions this upgrade applied, {', '.join(applied[: kept + 1])} "
                f"{'is' if kept == 0 else 'are'} committed"
                + (
                    f"; {', '.join(lost)} did not commit before the connection broke and "
                    f"{'was' if len(lost) == 1 else 'were'} rolled back."
                    if lost
                    else "."
                )
                + stays
            )
        if set(current) == set(self.started_at):
            return (
                f"None of the revisions this {self.direction} applied ({listed}) stayed: the connection "
                f"broke before the first one committed.{stays}"
            )
        return f"This {self.direction} had applied {listed} when the connection broke.{stays}"

    # -- running Alembic -------------------------------------------------------------------------------

    def _call(self, config: Config) -> None:
        alembic_bridge.migrate_online(config, self.scripts, self.direction, self.revision, self.tag)

    async def _run_alembic(self, connection: AsyncConnection) -> None:
        await alembic_bridge.run(
            self._call,
            self.config,
            {self.bind_name or "": connection},
            url=self.database.sqlalchemy_url,
            multidb=self.bind_name is not None,
        )

    async def _migrate(self, connection: AsyncConnection) -> None:
        guard = self.settings.ddl_guard(connection.dialect.name)
        sqlite_file = (
            sqlite_file_url(connection.engine.url)
            if connection.dialect.name == "sqlite" and self.bind_name is None
            else None
        )
        if sqlite_file is None and guard is not None and guard.active:
            await self._guarded(connection, guard)
            return
        try:
            if sqlite_file is not None:
                try:
                    await alembic_bridge.run(
                        self._call,
                        self.config,
                        url=self.database.sqlalchemy_url,
                        sqlite_file=sqlite_file,
                        revision_boundary=self.recorder.revision_boundary,
                    )
                except asyncio.CancelledError:
                    now_at = read_version_table(sqlite_file, self.database.version_table)
                    log.warning(
                        "Interrupted: stopped at a revision boundary after %d revision(s) (%s); the "
                        "database %s is at %s. Run %s again to go on.",
                        len(self.recorder.applied),
                        ", ".join(self.recorder.applied) or "none",
                        self.database.url,
                        ", ".join(now_at or ()) or "base (no revision)",
                        "downgrade" if self.direction == "downgrade" else "upgrade",
                    )
                    raise
            else:
                await self._run_alembic(connection)
        except AsyncMigrateError:
            raise
        except Exception as exc:
            if connection_lost(exc):
                raise  # what happened is read on a new connection (locking.run_locked)
            raise await self._failed(exc, connection) from exc

    async def _guarded(self, connection: AsyncConnection, guard: DDLGuard) -> None:
        """Run the migration with the session's lock_timeout set, retrying a revision that timed out waiting
        for a table lock when its transaction was rolled back entirely."""
        async with answered_within(connection, self.settings.bookkeeping_timeout):
            backend_pid = await session_id(connection)
            await set_session_timeouts(connection, guard)
        sync_connection = connection.sync_connection
        if sync_connection is None:  # the connection was closed under us
            raise CommandError("The migration connection closed before the migration could start.")
        tracker = AutocommitTracker(sync_connection)
        try:
            with self.recorder.revision_boundary(tracker.revision_done):
                attempt = 1
                while True:
                    # Look often enough to see a blocker several times within the lock timeout, and no
                    # more: each look is a query on a second connection while the migration runs.
                    interval = min(1.0, max(0.05, (guard.lock_timeout or 5.0) / 5))
                    watcher = BlockerWatcher(self.database.engine, backend_pid, interval=interval)
                    try:
                        async with watcher.running():
                            await self._run_alembic(connection)
                        return
                    except AsyncMigrateError:
                        raise
                    except Exception as exc:
                        if connection_lost(exc):
                            raise
                        pause = await self._retry_pause(
                            exc, attempt, guard, watcher, tracker, connection
                        )
                    log.warning(
                        "A revision waited more than %gs for a table lock (attempt %d of %d), blocked by "
                        "%s; nothing of it stays applied; retrying in %.1fs",
                        guard.lock_timeout,
                        attempt,
                        guard.attempts,
                        watcher.describe(),
                        pause,
                    )
                    await connection.rollback()
                    await asyncio.sleep(pause)
                    attempt += 1
        finally:
            tracker.close()
            try:
                if not connection.invalidated:  # a broken session has no settings left to undo
                    async with answered_within(connection, self.settings.bookkeeping_timeout):
                        await reset_session_timeouts(connection)
            except Exception:
                # Never let the pool lend out a session with our timeouts.
                await discard(connection)

    async def _retry_pause(
        self,
        exc: Exception,
        attempt: int,
        guard: DDLGuard,
        watcher: BlockerWatcher,
        tracker: AutocommitTracker,
        connection: AsyncConnection,
    ) -> float:
        """The pause before trying the revision that raised ``exc`` again; raises when it may not be
        tried again: another failure, a revision that did not roll back entirely, the last attempt."""
        timed_out = is_lock_timeout(exc)
        # Where DDL commits as it runs, a revision may be retried only if none of its statements had run.
        commits_as_it_runs = connection.dialect.name in MYSQL_DIALECTS
        rolled_back_entirely = (
            not self.recorder.statements if commits_as_it_runs else not tracker.since_last_revision
        )
        # A relative target (-1, +2) would mean something else once some revisions are done.
        target = self.target
        relative = target is None or "+" in target or "-" in target
        if (
            timed_out
            and rolled_back_entirely
            and not (relative and self.recorder.applied)
            and attempt < guard.attempts
        ):
            return guard.pause(attempt)
        failure = await self._failed(exc, connection)
        if not timed_out:
            raise failure from exc
        left = (
            "Nothing of it was applied"
            if rolled_back_entirely
            else f"Of it, these statements ran and stay applied: {'; '.join(self.recorder.statements)}"
        )
        raise DDLLockTimeoutError(
            f"Revision {failure.revision or '(unknown)'} could not get the table locks it "
            f"needs within {guard.lock_timeout:g}s on {attempt} attempt(s), blocked by "
            f"{watcher.describe()}. {left}; the database is at "
            f"{', '.join(failure.current_heads) or 'base (no revision)'}. Retry later, "
            "raise the DDL lock timeout (ddl_lock_timeout / MIGRATE_DDL_LOCK_TIMEOUT / "
            f"--ddl-lock-timeout), or end the blocking session{watcher.terminate_hint()}.",
            failure.revision,
            failure.current_heads,
            list(watcher.blockers.values()),
        ) from exc

    # -- a failed revision, described -----------------------------------------------------------------------

    async def _failed(self, exc: Exception, connection: AsyncConnection) -> MigrationFailedError:
        """Describe a revision that raised: which one, what was rolled back, where the database is now.

        Reads the version table on the migration connection itself (after a rollback): a second connection
        might not be had from a small pool.
        """
        transactional = connection.dialect.name in ("postgresql", "sqlite")
        ran = list(self.recorder.statements)  # before the reads below add their own
        now_at = await self._version_after_failure(connection)
        failed = self._failed_revision(now_at)
        cause = self.database.describe_cause(exc)  # its final period left off
        applied = self.recorder.applied
        done = (
            f" {len(applied)} revision(s) before it were applied and committed: {', '.join(applied)}."
            if applied
            else ""
        )
        again = "downgrade" if self.direction == "downgrade" else "upgrade"
        if transactional and ran:
            rolled_back = (
                "Its transaction was rolled back, but these statements of its autocommit_block() had "
                f"committed as they ran and stay applied: {'; '.join(ran[-10:])}. Undo them (or finish the "
                f"revision by hand and `stamp` it) before running {again} again."
            )
        elif transactional:
            rolled_back = "Its transaction was rolled back, so none of its changes were applied."
        elif ran:
            rolled_back = (
                "This database cannot roll back DDL, and these statements of the revision ran and stay "
                f"applied: {'; '.join(ran[-10:])}. Undo them (or finish the revision by hand and `stamp` it) before "
                f"running {again} again."
            )
        else:
            rolled_back = (
                "This database cannot roll back DDL: no statement of the revision had run."
            )
        fix = (
            "The database cannot be written here: give this process write access to the database (for "
            f"SQLite, the file and its folder) or free some space, then run {again} again."
            if any(sign in cause for sign in _UNWRITABLE)
            else f"Fix the revision script, then run {again} again."
        )
        return MigrationFailedError(
            f"Revision {failed or '(unknown)'} failed: {cause}. {rolled_back}{done} The database is now at "
            f"{', '.join(now_at) or 'base (no revision)'}. {fix}",
            failed,
            now_at,
        )

    async def _version_after_failure(self, connection: AsyncConnection) -> tuple[str, ...]:
        try:
            await connection.rollback()
            return await self.database.read_current_heads(connection)
        except Exception:
            try:
                deadline = time.monotonic() + self.settings.connect_timeout
                async with self.database.connect(deadline) as fresh:
                    return await self.database.read_current_heads(fresh)
            except AsyncMigrateError:
                return ()

    def _failed_revision(self, now_at: tuple[str, ...]) -> str | None:
        """The revision that was being applied, told from where the database stopped."""
        try:
            start = now_at[0] if len(now_at) == 1 else "base"
            pending = list(self.scripts.iterate_revisions(self.revision, start))
            return pending[-1].revision if pending else None
        except Exception:
            return None


class UpgradeRun(MigrationRun):
    """An upgrade. With ``known`` heads, "nothing to do" is told and waiters are refused a database at an
    unknown revision without loading Alembic or any script; the full checks run once there is work."""

    @functools.cached_property
    def heads(self) -> set[str]:
        return set(self.known.heads) if self.known is not None else set(self.scripts.get_heads())

    def precheck(self, current: tuple[str, ...]) -> None:
        if self.known is None:
            self.check_scripts(current)
            return
        # A database at a revision no script has is refused at once, not after a turn at the lock.
        unknown = [rev for rev in current if rev not in self.known.revisions]
        if unknown:
            raise unknown_revisions(unknown, self.known.heads)

    def check(self, current: tuple[str, ...]) -> None:
        if self.known is not None:
            self.check_scripts(current)

    def check_scripts(self, current: tuple[str, ...]) -> None:
        super().check_scripts(current)
        alembic_bridge.check_single_head(self.scripts, self.revision)

    def is_done(self, current: tuple[str, ...]) -> bool:
        return self.revision in ("head", "heads") and set(current) == self.heads

    async def before_ledger(
        self, connection: AsyncConnection, current: tuple[str, ...], table: sa.Table
    ) -> None:
        """Refuse to build on a script that was edited after it was applied (unless allowed)."""
        if not current:
            return
        async with answered_within(connection, self.settings.bookkeeping_timeout):
            entries, _ = await read_ledger(connection, table)
        if not entries:
            return

        async def stored_sources() -> dict[int, str]:
            async with answered_within(connection, self.settings.bookkeeping_timeout):
                return (await read_ledger(connection, table, sources=True))[1]

        changed = await edited_since_applied(self.scripts, current, entries, stored_sources)
        if not changed:
            return
        named = "; ".join(f"{entry.revision} ({path})" for entry, path in changed)
        if self.settings.allow_edited:
            log.warning(
                "Upgrading although applied script(s) were edited after they ran: %s. "
                "`verify` shows what changed.", named,
            )  # fmt: skip
            return
        raise EditedScriptError(
            f"Not upgrading: {len(changed)} script(s) applied to {self.database.url} were edited after "
            f"they ran: {named}. What the database has is no longer what these scripts say; "
            "`verify` shows each diff. Restore the scripts as they ran, accept the edits with "
            "`verify --accept`, or upgrade anyway with --allow-edited (allow_edited / "
            "MIGRATE_ALLOW_EDITED).",
            [entry.revision for entry, _ in changed],
        )


class DowngradeRun(MigrationRun):
    """A downgrade; every one has work."""

    direction = "downgrade"

    @property
    def target(self) -> str | None:
        return None

    def check_scripts(self, current: tuple[str, ...]) -> None:
        super().check_scripts(current)
        if not current and self.revision != "base":
            raise CommandError(
                f"The database is at base (no revision applied): there is nothing to downgrade "
                f"to {self.revision!r}."
            )

    def _failed_revision(self, now_at: tuple[str, ...]) -> str | None:
        # The revision being undone is the one the database is at.
        return now_at[0] if len(now_at) == 1 else None


class StampRun:
    """A stamp, as :func:`~async_migrate.locking.run_locked` runs it: refused on a database at an
    unknown revision (unless ``purge``), always work to do.

    :param script: the loaded scripts.
    :param purge: the stamp empties the version table first, so any revision may be there now.
    :param stamp: runs Alembic's stamp on the locked connection.
    :param ledger: the ledger's recorder, already one of the stamp's ``on_version_apply`` callbacks.
    """

    def __init__(
        self,
        script: ScriptDirectory,
        purge: bool,
        stamp: Callable[[AsyncConnection], Awaitable[None]],
        ledger: LedgerRecorder | None = None,
    ) -> None:
        self.script = script
        self.purge = purge
        self.stamp = stamp
        self.ledger = ledger
        self.finished = False

    def precheck(self, current: tuple[str, ...]) -> None:
        if not self.purge:
            alembic_bridge.check_known(self.script, current)

    def check(self, current: tuple[str, ...]) -> None:
        """Nothing beyond :meth:`precheck`."""

    def is_done(self, current: tuple[str, ...]) -> bool:
        return False

    async def work(self, connection: AsyncConnection, current: tuple[str, ...]) -> None:
        if self.ledger is not None:
            # After a purge the revisions there before say nothing about the schema: none is adopted.
            self.ledger.start(() if self.purge else current)
        await self.stamp(connection)
        self.finished = True

    def reached(self, current: tuple[str, ...]) -> bool:
        return self.finished

    def lost_report(self, current: tuple[str, ...] | None) -> str:
        return "The stamp runs in one transaction: it was either written whole or not at all."
