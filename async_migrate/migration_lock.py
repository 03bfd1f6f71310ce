"""What every migration lock offers: :class:`MigrationLock`, the interface :mod:`async_migrate.locking`
takes and waits on. The locks themselves: :mod:`~async_migrate.postgres_lock`,
:mod:`~async_migrate.mysql_lock`, :mod:`~async_migrate.sqlite_lock`; :func:`async_migrate.locks.lock_for`
picks one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy.ext.asyncio import AsyncConnection

#: The namespace of every lock key and name: changing it would let old and new releases migrate at once.
LOCK_KEY_NAMESPACE = "async_migrate"


class MigrationLock(ABC):
    """A lock that one migrator at a time may hold."""

    #: What the lock is, for log lines and errors.
    description: str

    @abstractmethod
    async def try_acquire(self, connection: AsyncConnection) -> bool:
        """Take the lock if it is free; never wait. Leaves ``connection`` outside a transaction."""

    @abstractmethod
    async def release(self, connection: AsyncConnection) -> None:
        """Give the lock back. Must be safe to call after a failed migration."""

    @abstractmethod
    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        """Who holds the lock now, in words, or None if nobody holds it. With ``remedy``, also how to
        stop the holder (said once a wait timed out, not to a replica that merely waits its turn)."""

    async def end_lost_session(self, connection: AsyncConnection) -> str | None:
        """After this migrator's connection broke while it held (or was taking) the lock: on a new
        ``connection``, end the old server session if it is still there holding the lock (a half-open
        connection keeps it alive for hours), and wait until it is gone, so that nothing of it can still
        commit. What was done, in words, or None when there was nothing to end."""
        return None
