"""A migration whose connection is cut or goes silent: what is reported is what a new connection reads.

The connection runs through a loopback proxy (:mod:`fault_proxy`) that cuts it just before a statement
reaches the server, right after the server answered it (the reply is lost), or silences it for good
(half-open: the sockets stay open, nothing passes). After every fault: the database holds each revision
at most once, the report names the revision the database is really at, and no lock is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fault_proxy import FaultProxy
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import ConnectionLostError, MigrationFailedError, Migrator
from async_migrate.locks import mysql_lock_name

from conftest import (
    LOG_COUNTS,
    VERSION,
    chain,
    expected_log,
    make_migrations,
    query,
    run,
)

ADVISORY_LOCKS = (
    "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
    "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
)


@pytest.fixture
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    server = make_url(pg_url)
    faults = FaultProxy(server.host or "127.0.0.1", server.port or 5432)
    yield faults
    faults.close()


def upgrade_through(proxy: FaultProxy, url: str, directory: Path, **settings: object) -> None:
    async def upgrade() -> None:
        async with Migrator(proxy.url(url), None, directory, stdout=None, **settings) as migrator:
            await migrator.upgrade()

    run(upgrade())


def applied(url: str) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The version table and how often each revision ran, read on a direct connection; the ledger must
    have one row for each revision that ran, no more (its row commits with the revision)."""
    counts = query(url, LOG_COUNTS)
    try:
        ledger = query(
            url, "SELECT revision FROM alembic_version_log WHERE direction = 'upgrade' ORDER BY id"
        )
    except sa.exc.DBAPIError:  # no ledger: nothing committed yet
        ledger = []
    assert [rev for (rev,) in ledger] == [rev for rev, _ in counts], (ledger, counts)
    return query(url, VERSION), counts


def lost(
    proxy: FaultProxy, url: str, directory: Path, trigger: bytes, action: str, **kw: object
) -> str:
    """The message of the upgrade that the fault on ``trigger`` breaks."""
    fault = proxy.arm(trigger, action, kw.pop("after", None))  # type: ignore[arg-type]
    with pytest.raises(ConnectionLostError) as caught:
        upgrade_through(proxy, url, directory, **kw)
    assert fault.fired.is_set()
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_cut_before_commit_reports_the_revision_the_database_is_at(
    pg_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(3)))
    message = lost(proxy, pg_url, tmp_path, b"COMMIT", "drop", after=b"'r02'")
    # Alembic had recorded r02 (its version row was written) when its COMMIT was cut.
    assert "the database is at r01" in message, message
    assert "r01 is committed; r02 did not commit" in message, message
    assert "committed: r01, r02" not in message
    assert applied(pg_url) == ([("r01",)], expected_log(1))
    assert query(pg_url, ADVISORY_LOCKS) == []
    # Run again: it goes on from r01, and nothing is applied twice.
    upgrade_through(proxy, pg_url, tmp_path)
    assert applied(pg_url) == ([("r03",)], expected_log(3))


def test_commit_applied_but_reply_lost_is_reported_as_committed(
    pg_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(3)))
    message = lost(proxy, pg_url, tmp_path, b"COMMIT", "reply_lost", after=b"'r02'")
    assert "the database is at r02" in message, message
    assert "r01, r02 are committed" in message, message
    assert "r03" not in message  # it never started; it is not "the revision that failed"
    assert applied(pg_url) == ([("r02",)], expected_log(2))
    assert query(pg_url, ADVISORY_LOCKS) == []


def test_last_commit_applied_but_reply_lost_is_a_success(
    pg_url: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(3)))
    fault = proxy.arm(b"COMMIT", "reply_lost", after=b"'r03'")
    with caplog.at_level("WARNING", "async_migrate"):
        upgrade_through(proxy, pg_url, tmp_path)
    assert fault.fired.is_set()
    said = [r.getMessage() for r in caplog.records if "was lost" in r.getMessage()]
    assert len(said) == 1 and "the database is at r03, where this command was going" in said[0], said
    assert applied(pg_url) == ([("r03",)], expected_log(3))
    assert query(pg_url, ADVISORY_LOCKS) == []


def test_cut_at_unlock_after_a_complete_migration_is_a_success(
    pg_url: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Kubernetes Job whose unlock is cut must not be marked failed: the server drops the lock."""
    run(make_migrations(pg_url, tmp_path, chain(2)))
    fault = proxy.arm(b"pg_advisory_unlock", "drop")
    with caplog.at_level("WARNING", "async_migrate"):
        upgrade_through(proxy, pg_url, tmp_path)
    assert fault.fired.is_set()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "giving back the migration lock" in warnings[0], warnings
    assert applied(pg_url) == ([("r02",)], expected_log(2))
    assert query(pg_url, ADVISORY_LOCKS) == []


@pytest.mark.parametrize(
    "trigger, phase",
    [
        (b"pg_backend_pid", "taking the migration lock"),
        (b"pg_try_advisory_lock", "taking the migration lock"),
        (b"lock_timeout", "migrating"),
    ],
)
def test_cut_before_any_revision_says_nothing_was_applied(
    pg_url: str, proxy: FaultProxy, tmp_path: Path, trigger: bytes, phase: str
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(2)))
    message = lost(proxy, pg_url, tmp_path, trigger, "drop")
    assert f"was lost while {phase}" in message, message
    assert "the database is at base (no revision)" in message, message
    assert "applied no revision" in message or "Nothing had been changed" in message, message
    assert query(pg_url, "SELECT to_regclass('alembic_version') IS NULL") == [(True,)]
    assert query(pg_url, ADVISORY_LOCKS) == []


def test_waiter_whose_connection_is_cut_polls_again(
    pg_url: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(2)))
    fault = proxy.arm(b"pg_try_advisory_lock", "drop")
    with caplog.at_level("INFO", "async_migrate"):
        upgrade_through(proxy, pg_url, tmp_path, connect_timeout=10)
    assert fault.fired.is_set()
    assert any("trying again" in r.getMessage() for r in caplog.records)
    assert applied(pg_url) == ([("r02",)], expected_log(2))


def test_silent_connection_at_unlock_is_given_up_on_and_its_lock_ended(
    pg_url: str, proxy: FaultProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Half-open: the server keeps the session (and the lock) as long as the proxy keeps the socket."""
    run(make_migrations(pg_url, tmp_path, chain(2)))
    fault = proxy.arm(b"pg_advisory_unlock", "silence")
    with caplog.at_level("WARNING", "async_migrate"):
        upgrade_through(proxy, pg_url, tmp_path, bookkeeping_timeout=1)
    assert fault.fired.is_set()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "no answer from the server for 1s" in said, said
    assert "ended server session" in said and "which still held the" in said, said
    assert applied(pg_url) == ([("r02",)], expected_log(2))
    assert query(pg_url, ADVISORY_LOCKS) == []


def test_silent_connection_while_taking_the_lock_leaves_no_lock(
    pg_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    run(make_migrations(pg_url, tmp_path, chain(2)))
    message = lost(proxy, pg_url, tmp_path, b"pg_try_advisory_lock", "silence", bookkeeping_timeout=1)
    assert "no answer from the server for 1s" in message, message
    assert "Nothing had been changed yet" in message, message
    assert query(pg_url, ADVISORY_LOCKS) == []
    # The next deploy is not kept waiting by a lock stranded on the silent session.
    upgrade_through(proxy, pg_url, tmp_path, lock_timeout=2)
    assert applied(pg_url) == ([("r02",)], expected_log(2))


def test_mariadb_cut_at_release_lock_after_a_complete_migration_is_a_success(
    mysql_url: str, tmp_path: Path
) -> None:
    server = make_url(mysql_url)
    faults = FaultProxy(server.host or "127.0.0.1", server.port or 3306)
    try:
        run(make_migrations(mysql_url, tmp_path, chain(2)))
        fault = faults.arm(b"RELEASE_LOCK", "drop")
        upgrade_through(faults, mysql_url, tmp_path)
        assert fault.fired.is_set()
        assert applied(mysql_url) == ([("r02",)], expected_log(2))
        name = mysql_lock_name(str(server.database), "alembic_version")
        assert query(mysql_url, f"SELECT IS_USED_LOCK('{name}')") == [(None,)]
    finally:
        faults.close()


def test_a_plain_failure_is_still_a_failed_revision(
    pg_url: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A revision that raises (not a lost connection) keeps its own message."""
    run(make_migrations(pg_url, tmp_path, chain(2, {2: ['op.execute("SELECT 1/0")']})))
    with pytest.raises(MigrationFailedError) as caught:
        upgrade_through(proxy, pg_url, tmp_path)
    assert not isinstance(caught.value, ConnectionLostError)
    assert "Revision r02 failed" in str(caught.value)



LIVENESS = "concat_ws(',', " + ", ".join(
    f"current_setting('{name}')"
    for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
) + ")"


def test_lock_session_probes_a_silent_client_and_is_given_back_as_lent(
    pg_url: str, tmp_path: Path
) -> None:
    """The server ends a vanished migrator's session (and lock) within seconds, not the kernel's two
    hours; a pooled connection goes back to the app with the server's defaults."""
    record = f'op.execute("INSERT INTO boot_log (rev) SELECT {LIVENESS}")'
    run(make_migrations(pg_url, tmp_path, chain(1, {1: [record]})))

    async def upgrade_then_lend_again() -> tuple[str, str]:
        engine = create_async_engine(pg_url, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as connection:
                before = (await connection.execute(sa.text(f"SELECT {LIVENESS}"))).scalar_one()
            async with Migrator(engine, None, tmp_path, stdout=None) as migrator:
                await migrator.upgrade()
            async with engine.connect() as connection:  # the pool's one connection, lent again
                after = (await connection.execute(sa.text(f"SELECT {LIVENESS}"))).scalar_one()
            return str(before), str(after)
        finally:
            await engine.dispose()

    before, after = run(upgrade_then_lend_again())
    during = [row[0] for row in query(pg_url, "SELECT rev FROM boot_log") if row[0] != "r01"]
    assert during == ["10,5,4,30000"], during
    assert after == before != during[0]
