"""The SQLite migration lock: a file lock beside the database file (in-process for an in-memory one)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import IO

from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import LockError
from .migration_lock import MigrationLock
from .sqlite_runner import sqlite_file_path

# Keys of locks held in this process where no file can be used (in-memory SQLite).
_PROCESS_HELD: set[str] = set()


class SQLiteFileLock(MigrationLock):
    """An exclusive ``flock`` on a file beside the database file, so processes on one machine exclude each
    other. The OS drops it when the holder's process dies. An in-memory database, which only its own engine
    can see, is locked within the process."""

    def __init__(self, database: str | None) -> None:
        # Beside the file itself, not beside the path it was reached by: two replicas reaching one file
        # through a symlink (or a relative and an absolute path, or a file: URI) must take one lock.
        file = sqlite_file_path(database)
        self.in_memory = file is None
        self.path = None if file is None else Path(f"{file}.migrate-lock")
        self.description = (
            "in-process lock for an in-memory SQLite database"
            if self.path is None
            else f"file lock {self.path}"
        )
        self._file: IO[str] | None = None
        self._memory_key = ""

    async def try_acquire(self, connection: AsyncConnection) -> bool:
        if self.path is None:
            self._memory_key = f"{id(connection.engine.sync_engine)}"
            if self._memory_key in _PROCESS_HELD:
                return False
            _PROCESS_HELD.add(self._memory_key)
            return True
        import fcntl

        handle = self._open()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        if handle.writable():  # who holds it, for describe_holder
            handle.seek(0)
            handle.truncate()
            handle.write(
                f"pid {os.getpid()} on host {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S%z')}\n"
            )
            handle.flush()
        self._file = handle
        return True

    def _open(self) -> IO[str]:
        assert self.path is not None
        try:
            return open(self.path, "a+")
        except PermissionError:
            if self.path.exists():
                # Made by another user (a root deploy, say): a read-only handle locks it as well.
                return open(self.path)
            raise LockError(
                f"Cannot create the migration lock file {self.path}: permission denied. It lives beside "
                "the SQLite database, in a folder SQLite must be able to write too (its journal goes "
                f"there): give this process write access to {self.path.parent}. Nothing was migrated."
            ) from None

    async def release(self, connection: AsyncConnection) -> None:
        try:
            if not connection.invalidated:
                await connection.rollback()
        finally:
            self._release_file()

    def _release_file(self) -> None:
        # The lock lives in this process, not in the session: given back even when the session broke.
        if self.path is None:
            _PROCESS_HELD.discard(self._memory_key)
            return
        if self._file is not None:
            import fcntl

            handle, self._file = self._file, None
            try:
                if handle.writable():
                    handle.seek(0)
                    handle.truncate()
                    handle.flush()
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            finally:
                handle.close()

    async def describe_holder(self, connection: AsyncConnection, remedy: bool = True) -> str | None:
        if self.path is None:
            key = f"{id(connection.engine.sync_engine)}"
            return "another task of this process" if key in _PROCESS_HELD else None
        if self._file is not None:
            return f"this migrator (pid {os.getpid()})"
        import fcntl

        try:
            with open(self.path, "a+") as probe:
                try:
                    fcntl.flock(probe.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    probe.seek(0)
                    holder = probe.read().strip() or "another process"
                    return f"{holder} (lock file {self.path})"
                fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
                return None
        except OSError:
            return None
