"""Migrating through PgBouncer, run by the test as a process of its own on a free port.

In transaction mode a session advisory lock cannot keep other migrators out: async_migrate must refuse
before it takes a lock or changes a setting. In session mode it behaves like a direct connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from async_migrate import Migrator, TransactionPoolerError
from async_migrate.errors import looks_like_transaction_pooler

from conftest import (
    LOG_COUNTS,
    PG_SERVER,
    chain,
    expected_log,
    free_port,
    make_migrations,
    query,
    run,
    unavailable,
)

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"




class PgBouncer:
    """A PgBouncer in front of the test server, in ``mode``, with ``pool_size`` server sessions."""

    def __init__(self, mode: str, pool_size: int = 4) -> None:
        self.port = free_port()
        # Readable by the unprivileged user PgBouncer switches to (it refuses to run as root).
        self.directory = Path(tempfile.mkdtemp(prefix="am-pgbouncer-"))
        self.directory.chmod(0o755)
        server = make_url(PG_SERVER)
        (self.directory / "users.txt").write_text(
            f'"{server.username}" "{server.password or ""}"\n'
        )
        (self.directory / "pgbouncer.ini").write_text(
            f"[databases]\n* = host={server.host or '127.0.0.1'} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self.directory}/users.txt\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        command = [PGBOUNCER, str(self.directory / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "postgres"]
        self.log = open(self.directory / "pgbouncer.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        "PgBouncer did not start: " + (self.directory / "pgbouncer.log").read_text()
                    ) from None
                time.sleep(0.05)

    def url(self, direct_url: str) -> str:
        return make_url(direct_url).set(port=self.port).render_as_string(hide_password=False)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def require_pgbouncer() -> None:
    if not Path(PGBOUNCER).exists():
        unavailable("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")


@pytest.fixture
def transaction_pooler() -> Iterator[PgBouncer]:
    require_pgbouncer()
    bouncer = PgBouncer("transaction", pool_size=4)
    yield bouncer
    bouncer.stop()


@pytest.fixture
def session_pooler() -> Iterator[PgBouncer]:
    require_pgbouncer()
    bouncer = PgBouncer("session", pool_size=4)
    yield bouncer
    bouncer.stop()


@contextlib.asynccontextmanager
async def pooled_engine(url: str) -> AsyncIterator[AsyncEngine]:
    # How asyncpg is set up for a transaction pooler: no prepared-statement cache.
    engine = create_async_engine(
        url, poolclass=sa.pool.NullPool, connect_args={"statement_cache_size": 0}
    )
    try:
        yield engine
    finally:
        await engine.dispose()


def advisory_locks(direct_url: str) -> list[tuple[object, ...]]:
    return query(
        direct_url,
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE l.locktype = 'advisory' AND d.datname = '{make_url(direct_url).database}'",
    )


def test_transaction_pooler_is_refused_before_any_lock_or_change(
    pg_url: str, transaction_pooler: PgBouncer, tmp_path: Path
) -> None:
    pooled = transaction_pooler.url(pg_url)
    run(make_migrations(pg_url, tmp_path, chain(3)))

    async def upgrade() -> None:
        async with pooled_engine(pooled) as engine, Migrator(engine, None, tmp_path, stdout=None) as migrator:
            await migrator.upgrade()

    with pytest.raises(TransactionPoolerError) as caught:
        run(upgrade())
    message = str(caught.value)
    assert "transaction pooler" in message and "direct connection" in message
    assert "\n" not in message
    assert query(pg_url, "SELECT to_regclass('alembic_version') IS NULL") == [(True,)]
    assert advisory_locks(pg_url) == []

    async def settings_seen_by_other_clients() -> set[str]:
        seen = set()
        async with pooled_engine(pooled) as engine:
            for _ in range(8):
                async with engine.connect() as connection:
                    seen.add(
                        (
                            await connection.execute(
                                sa.text("SHOW client_connection_check_interval")
                            )
                        ).scalar_one()
                    )
        return seen

    assert run(settings_seen_by_other_clients()) == {"0"}


def test_replicas_through_a_transaction_pooler_never_migrate_at_once(
    pg_url: str, transaction_pooler: PgBouncer, tmp_path: Path
) -> None:
    """Six replicas at once through a pool of four server sessions. Which of them detect the pooler
    depends on which session each transaction gets; what must hold every time: each one either refuses
    with the pooler's error or migrates alone, every transaction of a migration runs on the lock's server
    session, nothing is applied twice, and no lock is left on a pooled session."""
    pooled = transaction_pooler.url(pg_url)
    run(make_migrations(pg_url, tmp_path, chain(5)))

    async def replica() -> BaseException | None:
        try:
            async with pooled_engine(pooled) as engine, Migrator(engine, None, tmp_path, stdout=None) as migrator:
                await migrator.upgrade()
        except Exception as exc:
            return exc
        return None

    async def replicas() -> list[BaseException | None]:
        return await asyncio.gather(*(replica() for _ in range(6)))

    outcomes = run(replicas())
    failures = [outcome for outcome in outcomes if outcome is not None]
    assert all(isinstance(failure, TransactionPoolerError) for failure in failures), failures
    assert failures, "no replica noticed the transaction pooler"
    if query(pg_url, "SELECT to_regclass('alembic_version') IS NOT NULL") == [(True,)]:
        version = query(pg_url, "SELECT version_num FROM alembic_version")
        applied = query(pg_url, LOG_COUNTS) if version else []
        assert applied == expected_log(int(version[0][0][1:]) if version else 0)
    assert advisory_locks(pg_url) == []


def test_default_asyncpg_url_through_a_transaction_pooler_is_refused(
    pg_url: str, transaction_pooler: PgBouncer, tmp_path: Path
) -> None:
    """The URL as most apps write it (asyncpg's statement cache on), beside an app connection."""
    pooled = transaction_pooler.url(pg_url)
    run(make_migrations(pg_url, tmp_path, chain(2)))

    async def upgrade_beside_another_client() -> None:
        app_engine = create_async_engine(pooled, poolclass=sa.pool.NullPool)
        try:
            async with app_engine.connect() as app_connection:
                await app_connection.execute(sa.text("SELECT 1"))
                await app_connection.commit()
                async with Migrator(pooled, None, tmp_path, stdout=None) as migrator:
                    await migrator.upgrade()
        finally:
            await app_engine.dispose()

    with pytest.raises(TransactionPoolerError, match="transaction pooler"):
        run(upgrade_beside_another_client())
    assert query(pg_url, "SELECT to_regclass('alembic_version') IS NULL") == [(True,)]
    assert advisory_locks(pg_url) == []


def test_prepared_statement_met_on_a_shared_session_is_told_as_a_pooler(pg_url: str) -> None:
    """asyncpg's statement names colliding with another client's (what a transaction pooler causes when a
    connection is made) is recognised, on the error the real server sends."""

    async def collide() -> BaseException:
        engine = create_async_engine(pg_url, poolclass=sa.pool.NullPool)
        try:
            async with engine.connect() as connection:
                await connection.exec_driver_sql("PREPARE __asyncpg_stmt_1__ AS SELECT 1")
                try:
                    await connection.exec_driver_sql("PREPARE __asyncpg_stmt_1__ AS SELECT 1")
                except sa.exc.DBAPIError as exc:
                    return exc
        finally:
            await engine.dispose()
        raise AssertionError("the second PREPARE succeeded")

    collision = run(collide())
    assert looks_like_transaction_pooler(collision)
    assert not looks_like_transaction_pooler(
        sa.exc.DBAPIError("SELECT 1", None, ValueError("boom"))
    )


def test_session_pooler_migrates_like_a_direct_connection(
    pg_url: str, session_pooler: PgBouncer, tmp_path: Path
) -> None:
    pooled = session_pooler.url(pg_url)
    run(make_migrations(pg_url, tmp_path, chain(3)))

    async def replicas() -> None:
        async def replica() -> None:
            async with Migrator(pooled, None, tmp_path, stdout=None) as migrator:
                await migrator.upgrade()

        await asyncio.gather(*(replica() for _ in range(3)))

    run(replicas())
    assert query(pg_url, LOG_COUNTS) == (expected_log(3))
    assert query(pg_url, "SELECT version_num FROM alembic_version") == [("r03",)]
    assert advisory_locks(pg_url) == []
