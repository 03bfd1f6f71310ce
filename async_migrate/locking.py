"""Taking the migration lock and waiting for it: one migrator per database (and version table) at a time,
across processes.

Locks (:mod:`async_migrate.locks`) are *tried*, never waited on inside the database: :func:`run_locked`'s
waiters poll with backoff, closing their connection between attempts, so that many waiting replicas hold
no connection while they wait and notice at once when another replica has finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database, backoff, cancel_requested, discard
from .errors import LockTimeoutError
from .locks import MigrationLock, lock_for
from .settings import MigrationSettings

log = logging.getLogger("async_migrate")


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
    except BaseException:
        log.warning("Could not release the %s cleanly; closing its connection", lock.description)
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


async def run_locked(database: Database, settings: MigrationSettings, job: LockedWork) -> None:
    """Run ``job`` under the migration lock of ``database``, unless it is done already.

    Waiters poll: each attempt opens a connection, re-reads the version table, leaves if another migrator
    finished the work meanwhile, and otherwise tries the lock once and closes the connection again, until
    ``settings.lock_timeout`` (:class:`~async_migrate.errors.LockTimeoutError`, naming the holder).
    """
    await _LockQueue(database, settings, job).run()


class _LockQueue:
    """One command's wait for the lock: its deadlines, and when it started waiting."""

    def __init__(self, database: Database, settings: MigrationSettings, job: LockedWork) -> None:
        self.database = database
        self.settings = settings
        self.job = job
        self.connect_deadline = time.monotonic() + settings.connect_timeout
        self.lock_deadline: float | None = None
        self.waited_since: float | None = None
        # Kept across polls: its key is read from the database once.
        self.lock: MigrationLock | None = None

    async def run(self) -> None:
        attempt = 0
        while True:
            deadline = max(self.connect_deadline, self.lock_deadline or self.connect_deadline)
            async with self.database.connect(deadline) as connection:
                if await self._attempt(connection):
                    return
            attempt += 1
            await asyncio.sleep(backoff(attempt))

    async def _attempt(self, connection: AsyncConnection) -> bool:
        """One poll; True when the work is done (by this migrator or another)."""
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
            await self.job.work(connection, current)
            return True
        self.lock = self.lock or lock_for(
            connection, self.database.version_table, self.database.version_table_schema
        )
        if not await try_lock(self.lock, connection):
            await self._still_waiting(self.lock, connection)
            return False
        if self.waited_since is not None:
            log.info(
                "Took the %s after waiting %.1fs",
                self.lock.description,
                time.monotonic() - self.waited_since,
            )
        try:
            # Another migrator may have finished between our read and our lock.
            current = await self.database.read_current_heads(connection)
            self.job.precheck(current)
            if not self.job.is_done(current):
                self.job.check(current)
                await self.job.work(connection, current)
        finally:
            await release_lock(self.lock, connection)
        return True

    async def _still_waiting(self, lock: MigrationLock, connection: AsyncConnection) -> None:
        """Note the start of the wait (and who holds the lock), or give up once it lasted too long."""
        now = time.monotonic()
        timeout = self.settings.lock_timeout
        if self.lock_deadline is None:
            self.lock_deadline = now + timeout
            self.waited_since = now
            log.info(
                "Waiting up to %.0fs for the %s, held by %s",
                timeout,
                lock.description,
                await lock.describe_holder(connection, remedy=False) or "another migrator",
            )
        elif now >= self.lock_deadline:
            holder = await lock.describe_holder(connection)
            raise LockTimeoutError(
                f"Gave up after waiting {timeout:.0f}s for the {lock.description}, held by "
                f"{holder or 'another migrator (it let go just now)'}. Another deploy may still be "
                "migrating: wait for it, raise the lock timeout, or stop the holder if it is stuck.",
                holder,
            )
