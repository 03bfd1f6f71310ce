"""A migration blocked by a running app's transaction gives up quickly, lets traffic through, retries,
and names the blocker; the app's pooled connections never inherit its timeouts. Real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import Migrator
from async_migrate.errors import DDLLockTimeoutError

from conftest import run_query

pytestmark = pytest.mark.anyio


def revision(directory: Path, rev: str, down: str | None, body: str) -> None:
    (directory / "versions" / f"{rev}_r.py").write_text(
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n"
        "from alembic import op\nimport sqlalchemy as sa\n"
        f"def upgrade():\n{body}\ndef downgrade():\n    pass\n"
    )


async def prepared(pg_url: str, tmp_path: Path) -> Path:
    """r1 creates t with a row (applied); r2 alters t (pending)."""
    directory = tmp_path / "migrations"
    async with Migrator(pg_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        revision(
            directory,
            "r1",
            None,
            "    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"
            "    op.execute('INSERT INTO t VALUES (1)')\n",
        )
        assert await migrator.upgrade() == ("r1",)
    revision(directory, "r2", "r1", "    op.add_column('t', sa.Column('note', sa.Text))\n")
    return directory


async def blocker(pg_url: str) -> asyncpg.Connection:
    """A running app's long transaction holding a row lock on t."""
    conn = await asyncpg.connect(
        pg_url.replace("+asyncpg", ""), server_settings={"application_name": "old-replica"}
    )
    await conn.execute("BEGIN")
    await conn.execute("UPDATE t SET id = id WHERE id = 1")
    return conn


async def test_blocked_revision_retries_while_reads_go_on(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = await prepared(pg_url, tmp_path)
    holder = await blocker(pg_url)
    holder_pid = holder.get_server_pid()
    reader = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    caplog.set_level(logging.INFO, logger="async_migrate")
    migrator = Migrator(
        pg_url, None, directory, stdout=None, ddl_lock_timeout=0.5, ddl_retry_attempts=20,
        ddl_retry_backoff=0.2,
    )  # fmt: skip
    upgrade = asyncio.create_task(migrator.upgrade())
    slowest_read = 0.0
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # the app keeps reading t while the migration is blocked
            started = time.monotonic()
            # Bounded, so that a regression fails here instead of hanging behind the ALTER.
            assert await reader.fetchval("SELECT count(*) FROM t", timeout=10) == 1
            slowest_read = max(slowest_read, time.monotonic() - started)
            await asyncio.sleep(0.05)
        assert not upgrade.done()
        await holder.execute("COMMIT")  # the long transaction ends
        assert await asyncio.wait_for(upgrade, 30) == ("r2",)
    finally:
        await holder.close()
        await reader.close()
        await migrator.aclose()
    # Reads waited at most about one lock timeout (0.5 s), never for the whole blocked period (3 s).
    assert slowest_read < 2.0, slowest_read
    assert "note" in [
        row[0]
        for row in await run_query(
            pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 't'"
        )
    ]
    warnings = [r.getMessage() for r in caplog.records if "waited more than" in r.getMessage()]
    assert warnings, "each lock timeout is logged"
    assert f"pid {holder_pid}" in warnings[0] and "old-replica" in warnings[0]
    # Each rolled-back attempt took its ledger row with it: r2 has one, from the attempt that stayed.
    assert await run_query(
        pg_url, "SELECT revision, direction FROM alembic_version_log ORDER BY id"
    ) == [("r1", "upgrade"), ("r2", "upgrade")]


async def test_blocker_that_never_commits_fails_cleanly(pg_url: str, tmp_path: Path) -> None:
    directory = await prepared(pg_url, tmp_path)
    holder = await blocker(pg_url)
    holder_pid = holder.get_server_pid()
    # The app's own engine and pool: the migration and its watcher borrow its two connections.
    app_engine = create_async_engine(pg_url, pool_size=2, max_overflow=0)
    migrator = Migrator(
        app_engine, None, directory, stdout=None, ddl_lock_timeout=0.3, ddl_retry_attempts=3,
        ddl_retry_backoff=0.1, statement_timeout=30,
    )  # fmt: skip
    try:
        with pytest.raises(DDLLockTimeoutError) as failed:
            await migrator.upgrade()
        message = str(failed.value)
        assert "Revision r2 could not get the table locks it needs" in message
        assert "3 attempt(s)" in message and f"pid {holder_pid}" in message
        assert "old-replica" in message and f"pg_terminate_backend({holder_pid})" in message
        assert failed.value.current_heads == ("r1",)
        async with app_engine.connect() as first, app_engine.connect() as second:
            for conn in (first, second):  # both pooled connections, as the app gets them
                lock_timeout = (await conn.execute(sa.text("SHOW lock_timeout"))).scalar()
                statement_timeout = (await conn.execute(sa.text("SHOW statement_timeout"))).scalar()
                assert (lock_timeout, statement_timeout) == ("0", "0")
            held = (
                await first.execute(
                    sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                )
            ).scalar()
        assert held == 0
    finally:
        await holder.close()
        await app_engine.dispose()
    assert await run_query(pg_url, "SELECT version_num FROM alembic_version") == [("r1",)]


async def test_other_errors_are_not_retried(pg_url: str, tmp_path: Path) -> None:
    directory = await prepared(pg_url, tmp_path)
    revision(directory, "r3", "r2", "    op.execute('SELECT * FROM no_such_table')\n")
    started = time.monotonic()
    async with Migrator(
        pg_url, None, directory, stdout=None, ddl_retry_attempts=5, ddl_retry_backoff=5
    ) as migrator:
        with pytest.raises(Exception) as failed:
            await migrator.upgrade()
    assert "Revision r3 failed" in str(failed.value)
    assert time.monotonic() - started < 5  # no retry pause was taken
    assert await run_query(pg_url, "SELECT version_num FROM alembic_version") == [("r2",)]
