"""Taking the migration lock and waiting for it: one migrator per database (and version table) at a time,
across processes.

Locks (:mod:`async_migrate.locks`) are *tried*, never waited on inside the database: :func:`run_locked`'s
waiters poll with backoff, closing their connection between attempts, so that many waiting replicas hold
no connection while they wait and notice at once when another replica has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, answered_within, backoff, cancel_requested, discard
from .errors import AsyncMigrateError, ConnectionLostError, LockTimeoutError, connection_lost
from .locks import MigrationLock, lock_for
from .settings import MigrationSettings

log = logging.getLogger("async_migrate")

# How long a new connection may take to come up after the migration's broke, at the least.
LOST_RECONNECT_TIMEOUT = 10.0

# When the commands of this task must stop waiting (connecting, for the lock), and why: set by
# waits_end_by() around a startup upgrade, which must fail in words before the server's own startup
# timeout cancels it without any.
_WAITS_END_BY: contextvars.ContextVar[tuple[float, str] | None] = contextvars.ContextVar(
    "async_migrate_waits_end_by", default=None
)


@contextlib.contextmanager
def waits_end_by(deadline: float, why: str) -> Iterator[None]:
    """Within this block, :func:`run_locked` stops connecting and waiting for the lock at ``deadline``
    (``time.monotonic()``), whatever the lock and connect timeouts say, and its error says ``why``. Work
    under the lock is not cut short."""
    token = _WAITS_END_BY.set((deadline, why))
    try:
        yield
    finally:
        _WAITS_END_BY.reset(token)


async def try_lock(lock: MigrationLock, connection: AsyncConnection) -> bool:
    """Take ``lock`` if it is free, unless the task was asked to cancel (even in a way asyncio swallowed)."""
    acquired = False
    try:
        if cancel_requested():
            raise asyncio.CancelledError("cancelled before taking the migration lock")
        acquired = await lock.try_acquire(connection)
        if acquired and cancel_requested():
            raise asyncio.CancelledError("cancelled while taking the migration lock")
        return acquired
    except BaseException:
        # Cancelled or failed half-way: the lock may be ours anyway. Give it back (a file lock lives
        # outside the session), then close the session for good: a closed session holds no lock.
        if acquired:
            with contextlib.suppress(Exception):
                await lock.release(connection)
        await discard(connection)
        raise


async def release_lock(lock: MigrationLock, connection: AsyncConnection) -> None:
    """Give ``lock`` back; if that fails, close the session, which drops a session lock with it."""
    try:
        await lock.release(connection)
    except BaseException as exc:
        if not (isinstance(exc, Exception) and connection_lost(exc)):  # a loss is reported as such
            log.warning(
                "Could not release the %s cleanly; closing its connection", lock.description
            )
        await discard(connection)
        raise


class LockedWork(Protocol):
    """A command that changes the database, as :func:`run_locked` runs it. ``current`` is always what the
    version table says at that moment."""

    def precheck(self, current: tuple[str, ...]) -> None:
        """Refuse a state the command cannot work from; cheap, since waiters run it at every poll."""

    def check(self, current: tuple[str, ...]) -> None:
        """The rest of the refusals, run once, under the lock, just before :meth:`work`."""

    def is_done(self, current: tuple[str, ...]) -> bool:
        """Whether there is nothing (left) to do: then no lock is taken."""

    async def work(self, connection: AsyncConnection, current: tuple[str, ...]) -> None:
        """Do it, on ``connection``, which holds the lock."""

    def reached(self, current: tuple[str, ...]) -> bool:
        """After the connection broke during :meth:`work`: whether a database found at ``current`` is
        where the command was going (then it succeeded, whatever the connection did)."""

    def lost_report(self, current: tuple[str, ...] | None) -> str:
        """What the command had done when the connection broke, and what stays of it given the database
        found at ``current`` (None: it could not be read)."""


async def run_locked(database: Database, settings: MigrationSettings, job: LockedWork) -> None:
    """Run ``job`` under the migration lock of ``database``, unless it is done already.

    Waiters poll: each attempt opens a connection, re-reads the version table, leaves if another migrator
    finished the work meanwhile, and otherwise tries the lock once and closes the connection again, until
    ``settings.lock_timeout`` (:class:`~async_migrate.errors.LockTimeoutError`, naming the holder).

    The statements around the work (reads of the version table, the lock's) each get at most
    ``settings.bookkeeping_timeout`` seconds: a connection silent that long counts as
    broken. When the connection breaks, a new one ends the old server session if it still holds the lock
    and reads the version table: a command whose target is there succeeded; otherwise a
    :class:`~async_migrate.errors.ConnectionLostError` says where the database is. A waiter that lost its
    connection before taking the lock simply polls again.
    """
    await _LockQueue(database, settings, job).run()


class _LockQueue:
    """One command's wait for the lock: its deadlines, and when it started waiting."""

    def __init__(self, database: Database, settings: MigrationSettings, job: LockedWork) -> None:
        self.database = database
        self.settings = settings
        self.job = job
        self.connect_deadline = time.monotonic() + settings.connect_timeout
        self.budget = _WAITS_END_BY.get()
        if self.budget is not None:
            self.connect_deadline = min(self.connect_deadline, self.budget[0])
        self.lock_deadline: float | None = None
        self.waited_since: float | None = None
        # Kept across polls: its key is read from the database once.
        self.lock: MigrationLock | None = None
        # What the connection was doing, for the report if it breaks.
        self.phase = "connecting"
        self.work_started = False

    def deadline(self) -> float:
        return max(self.connect_deadline, self.lock_deadline or self.connect_deadline)

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with self.database.connect(self.deadline()) as connection:
                    if await self._attempt(connection):
                        return
            except Exception as exc:
                if isinstance(exc, AsyncMigrateError) or not connection_lost(exc):
                    raise
                if await self._after_loss(exc):
                    return
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    @contextlib.asynccontextmanager
    async def _bookkeeping(self, connection: AsyncConnection, phase: str) -> AsyncIterator[None]:
        """A step around the work, bounded in time: a connection silent for longer is given up on."""
        self.phase = phase
        async with answered_within(connection, self.settings.bookkeeping_timeout):
            yield

    async def _attempt(self, connection: AsyncConnection) -> bool:
        """One poll; True when the work is done (by this migrator or another)."""
        async with self._bookkeeping(connection, "reading the version table"):
            current = await self.database.read_current_heads(connection)
        self.job.precheck(current)
        if self.job.is_done(current):
            if self.waited_since is not None:
                log.info(
                    "Another migrator brought %s to %s while this one waited %.1fs; nothing to do",
                    self.database.url,
                    ", ".join(current) or "base",
                    time.monotonic() - self.waited_since,
                )
            return True
        if not self.settings.lock:
            self.job.check(current)
            await self._work(connection, current)
            return True
        self.lock = self.lock or lock_for(
            connection, self.database.version_table, self.database.version_table_schema
        )
        async with self._bookkeeping(connection, "taking the migration lock"):
            acquired = await try_lock(self.lock, connection)
            if not acquired:
                await self._still_waiting(self.lock, connection)
        if not acquired:
            return False
        if self.waited_since is not None:
            log.info(
                "Took the %s after waiting %.1fs",
                self.lock.description,
                time.monotonic() - self.waited_since,
            )
        try:
            # Another migrator may have finished between our read and our lock.
            async with self._bookkeeping(connection, "reading the version table under the lock"):
                current = await self.database.read_current_heads(connection)
            self.job.precheck(current)
            if not self.job.is_done(current):
                self.job.check(current)
                await self._work(connection, current)
        except BaseException as exc:
            # A connection that broke holds its lock on a session only _after_loss can reach (and
            # end); any other failure gives the lock back here. The failure is what to report: a
            # release that fails as well must not hide it.
            if not (isinstance(exc, Exception) and connection_lost(exc)):
                failed_while = self.phase
                with contextlib.suppress(Exception):
                    async with self._bookkeeping(connection, "giving back the migration lock"):
                        await release_lock(self.lock, connection)
                self.phase = failed_while
            raise
        async with self._bookkeeping(connection, "giving back the migration lock"):
            await release_lock(self.lock, connection)
        return True

    async def _work(self, connection: AsyncConnection, current: tuple[str, ...]) -> None:
        self.phase = "migrating"
        self.work_started = True
        await self.job.work(connection, current)

    async def _after_loss(self, exc: Exception) -> bool:
        """The connection broke: find out on a new one what is true now. True when the command's work
        is done; False when a waiter that changed nothing should poll again; else raises."""
        lost_while, cause = self.phase, self.database.describe_cause(exc)
        ended = None
        try:
            deadline = time.monotonic() + max(self.settings.connect_timeout, LOST_RECONNECT_TIMEOUT)
            async with self.database.connect(deadline) as fresh:
                async with self._bookkeeping(fresh, "reading the version table after the loss"):
                    if self.lock is not None:
                        ended = await self.lock.end_lost_session(fresh)
                    current: tuple[str, ...] | None = await self.database.read_current_heads(fresh)
        except Exception as again:
            current, unreadable = None, self.database.describe_cause(again)
        url = self.database.url
        what = f"The connection to {url} was lost while {lost_while} ({cause})"
        if ended:
            what += f"; a new connection {ended}"
        if current is not None and self.job.reached(current):
            log.warning(
                "%s. A new connection reads the version table: the database is at %s, where this command "
                "was going, so it succeeded; nothing more to do.",
                what,
                ", ".join(current) or "base (no revision)",
            )
            return True
        if not self.work_started and current is not None and time.monotonic() < self.deadline():
            log.info("%s, before this migrator changed anything; trying again", what)
            return False
        if current is None:
            where = (
                f"A new connection could not be opened to read where the database is ({unreadable}): "
                "once it is reachable, run `current` to see"
            )
        else:
            where = (
                "A new connection reads the version table: the database is at "
                f"{', '.join(current) or 'base (no revision)'}"
            )
        done = (
            self.job.lost_report(current) if self.work_started else "Nothing had been changed yet."
        )
        raise ConnectionLostError(
            f"{what}. {where}. {done} Run the command again once the connection is stable: it goes on "
            "from where the database is.",
            None,
            current or (),
        ) from exc

    async def _still_waiting(self, lock: MigrationLock, connection: AsyncConnection) -> None:
        """Note the start of the wait (and who holds the lock), or give up once it lasted too long."""
        now = time.monotonic()
        timeout = self.settings.lock_timeout
        if self.lock_deadline is None:
            self.lock_deadline = now + timeout
            if self.budget is not None and self.budget[0] < self.lock_deadline:
                self.lock_deadline = self.budget[0]
            else:
                self.budget = None  # the lock timeout comes first: the budget has nothing to say
            self.waited_since = now
            log.info(
                "Waiting up to %.0fs for the %s, held by %s",
                self.lock_deadline - now,
                lock.description,
                await lock.describe_holder(connection, remedy=False) or "another migrator",
            )
        elif now >= self.lock_deadline:
            holder = await lock.describe_holder(connection)
            held_by = holder or "another migrator (it let go just now)"
            waited = now - (self.waited_since or now)
            if self.budget is not None:
                raise LockTimeoutError(
                    f"Gave up after waiting {waited:.0f}s for the {lock.description}, held by "
                    f"{held_by}: {self.budget[1]}. Another replica is still migrating; this one did not "
                    "start, and finds the work done when it starts again.",
                    holder,
                )
            raise LockTimeoutError(
                f"Gave up after waiting {waited:.0f}s for the {lock.description}, held by "
                f"{held_by}. Another deploy may still be "
                "migrating: wait for it, raise the lock timeout, or stop the holder if it is stuck.",
                holder,
            )
