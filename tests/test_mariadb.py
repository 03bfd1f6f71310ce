"""MySQL/MariaDB support against a real server (MariaDB on 127.0.0.1:3306, user root, no password; set
``ASYNC_MIGRATE_TEST_MYSQL=mysql+asyncmy://user:password@host:port`` for another): the ``GET_LOCK``
migration lock (pinned name, the lock class on a live server, a swallowed cancellation, six processes
racing), what a failed revision leaves behind when DDL auto-commits, and the DDL lock timeout. The tests
that are the same on every backend (the workflow, lock timeouts, two version tables, cancelled waiters)
run here too, through ``backend_url``, in test_migrator.py and test_startup_lock.py.

Each test gets a fresh database ``am_test_<uuid>``, dropped afterwards. With ``CI=true`` an unreachable
server fails these tests instead of skipping them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import (
    ConfigurationError,
    DatabaseUnreachableError,
    MigrationFailedError,
    Migrator,
)
from async_migrate.locking import try_lock
from async_migrate.locks import MySQLNamedLock, lock_for, mysql_lock_name

from conftest import (
    LOG_COUNTS,
    LOG_TABLE,
    VERSION,
    as_mariadb,
    chain,
    dbname,
    execute,
    expected_log,
    inspect_tables,
    lock_holder,
    make_migrations,
    query,
    rev_id,
    run,
    run_query,
)

# -- 1. the lock name is pinned ----------------------------------------------------------------------------------


def test_lock_name_derivation_is_pinned() -> None:
    # This value must NEVER change between releases: replicas of an old and a new release that derive
    # different names would both take "the" lock and migrate one database at once.
    pinned = "async_migrate:db.alembic_version:4c5458bbba20a12a"
    assert mysql_lock_name("db", "alembic_version") == pinned
    assert mysql_lock_name("db", "other_version") != pinned
    assert mysql_lock_name("db2", "alembic_version") != pinned
    # Long or unusual names stay within the server's 64 characters and still differ.
    long_a = mysql_lock_name("d" * 64, "t" * 64)
    long_b = mysql_lock_name("d" * 64, "t" * 63 + "u")
    assert len(long_a) <= 64 and len(long_b) <= 64 and long_a != long_b
    assert len(mysql_lock_name("dé jà vu", "alembic_version")) <= 64


# -- 2. the lock class on a live server ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
async def test_named_lock_take_describe_release(mysql_url: str, scheme: str) -> None:
    url = mysql_url if scheme == "mysql" else as_mariadb(mysql_url)
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as first, engine.connect() as second:
            assert first.dialect.name == scheme
            lock = lock_for(first, "alembic_version", None)
            other = lock_for(second, "alembic_version", None)
            assert isinstance(lock, MySQLNamedLock) and isinstance(other, MySQLNamedLock)
            first_id = int((await first.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one())
            await first.rollback()

            assert await other.describe_holder(second) is None
            assert await lock.try_acquire(first) is True
            assert not first.in_transaction()  # the caller's next statements start clean
            assert await other.try_acquire(second) is False
            assert not second.in_transaction()
            assert await lock_holder(url) == first_id
            assert await lock.name(first) == mysql_lock_name(dbname(url), "alembic_version")
            assert dbname(url) in lock.description

            described = await other.describe_holder(second)
            assert described is not None
            assert f"connection id {first_id}" in described
            assert "user 'root'" in described and f"database {dbname(url)!r}" in described
            assert f"KILL {first_id}" in described
            assert not second.in_transaction()

            await lock.release(first)
            assert not first.invalidated
            assert await lock_holder(url) is None
            assert await other.try_acquire(second) is True
            await other.release(second)

            # Released again: RELEASE_LOCK says NULL (nobody holds it), so the connection is not trusted.
            await lock.release(first)
            assert first.invalidated
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_a_swallowed_cancellation_never_takes_the_lock(mysql_url: str) -> None:
    """Python 3.11's ``asyncio.wait_for`` (inside asyncmy's connect) can swallow a cancellation that arrives
    as the connection completes; the task carries on with ``cancelling() > 0``. The Migrator must refuse to
    take the lock for it."""
    engine = create_async_engine(mysql_url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as conn:
            lock = lock_for(conn, "alembic_version", None)

            async def swallowed_then_lock() -> bool:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    pass  # what wait_for does when the inner operation has just finished
                return await try_lock(lock, conn)

            with pytest.raises(asyncio.CancelledError):
                await asyncio.create_task(swallowed_then_lock())
            assert await lock_holder(mysql_url) is None
        async with engine.connect() as conn:  # an ordinary task still takes it
            lock = lock_for(conn, "alembic_version", None)
            assert await try_lock(lock, conn) is True
            await lock.release(conn)
    finally:
        await engine.dispose()


# -- 7. six processes upgrade one empty database at once -------------------------------------------------------

UPGRADE_SCRIPT = """
import asyncio
import logging
import os
import sys

from async_migrate import Migrator

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s pid=%(process)d %(name)s %(levelname)s %(message)s")


async def main() -> None:
    barrier = os.environ["BARRIER_DIR"]
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
        await asyncio.sleep(0.01)
    async with Migrator(os.environ["DATABASE_URL"], None, os.environ["MIGRATIONS"],
                        lock_timeout=60, connect_timeout=30, stdout=None) as migrator:
        applied = await migrator.upgrade()
    print("APPLIED", ",".join(applied), flush=True)


asyncio.run(main())
"""


def test_six_processes_upgrade_one_database(tmp_path: Path, mysql_url: str) -> None:
    processes = 6
    migrations = run(make_migrations(mysql_url, tmp_path / "migrations", chain(10)))
    script = tmp_path / "upgrade.py"
    script.write_text(textwrap.dedent(UPGRADE_SCRIPT))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QUART_"))}
    env.update(
        DATABASE_URL=mysql_url,
        MIGRATIONS=str(migrations),
        BARRIER_DIR=str(barrier),
        PYTHONDONTWRITEBYTECODE="1",
    )
    children: list[tuple[subprocess.Popen[bytes], Path, Path]] = []
    for i in range(processes):
        out, err = tmp_path / f"child{i}.out", tmp_path / f"child{i}.err"
        with out.open("w") as out_file, err.open("w") as err_file:
            proc = subprocess.Popen(
                [sys.executable, str(script)],
                cwd=tmp_path,
                env=env,
                stdout=out_file,
                stderr=err_file,
            )
        children.append((proc, out, err))
    try:
        # Release them together once every one has imported its modules, so that they really race.
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < processes and time.monotonic() < deadline:
            if any(proc.poll() is not None for proc, _, _ in children):
                break
            time.sleep(0.05)
        (barrier / "go").touch()
        deadline = time.monotonic() + 120
        for proc, _, _ in children:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc, _, _ in children:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def report() -> str:
        return "\n".join(
            f"--- pid {proc.pid} exit {proc.returncode}\nstdout:\n{out.read_text()}\n"
            f"stderr (tail):\n{err.read_text()[-3000:]}"
            for proc, out, err in children
        )

    assert [proc.returncode for proc, _, _ in children] == [0] * processes, report()
    assert query(mysql_url, VERSION) == [("r10",)]
    assert query(mysql_url, LOG_COUNTS) == expected_log(10)
    assert query(mysql_url, f"SELECT count(*) FROM {LOG_TABLE}") == [(10,)]
    # One process applied the whole chain under the lock; the others found the work done.
    applied = sorted(out.read_text().strip() for _, out, _ in children)
    everything = "APPLIED " + ",".join(rev_id(i) for i in range(1, 11))
    assert applied == ["APPLIED"] * (processes - 1) + [everything], report()
    assert run(lock_holder(mysql_url)) is None


# -- 8. a revision that fails midway: MySQL has already committed its DDL -------------------------------------

GOOD = """
revision = "r1"
down_revision = None
branch_labels = None
depends_on = None
from alembic import op
import sqlalchemy as sa
def upgrade():
    op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))
def downgrade():
    op.drop_table("t")
"""

BAD = """
revision = "r2"
down_revision = "r1"
branch_labels = None
depends_on = None
from alembic import op
import sqlalchemy as sa
def upgrade():
    op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO no_such_table VALUES (1)")
def downgrade():
    op.drop_table("half")
"""


@pytest.mark.anyio
async def test_failed_revision_leaves_its_ddl_and_says_so(mysql_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    async with Migrator(mysql_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        (directory / "versions" / "r1_good.py").write_text(textwrap.dedent(GOOD))
        (directory / "versions" / "r2_bad.py").write_text(textwrap.dedent(BAD))
        with pytest.raises(MigrationFailedError) as failed:
            await migrator.upgrade()
        assert await lock_holder(mysql_url) is None  # released after the failure

        # What the database really has: r1 recorded, and r2's first statement, auto-committed by MySQL.
        assert sorted(await inspect_tables(mysql_url)) == [
            "alembic_version", "alembic_version_log", "half", "t",
        ]  # fmt: skip
        assert await run_query(mysql_url, VERSION) == [("r1",)]

        message = str(failed.value)
        assert failed.value.revision == "r2"
        assert failed.value.current_heads == ("r1",)
        assert "Revision r2 failed" in message and "no_such_table" in message
        assert "database is now at r1" in message
        # It does not claim a rollback it could not do...
        assert "rolled back" not in message
        assert "cannot roll back DDL" in message
        assert "CREATE TABLE half" in message and "Undo them" in message

        # ...and indeed the leftover table makes the fixed revision fail on the next run.
        (directory / "versions" / "r2_bad.py").write_text(
            textwrap.dedent(BAD).replace(
                '    op.execute("INSERT INTO no_such_table VALUES (1)")\n', ""
            )
        )
        with pytest.raises(MigrationFailedError) as again:
            await migrator.upgrade()
        assert "already exists" in str(again.value)
        # Only once the leftover is dropped by hand does the fixed revision go through.
        await execute(mysql_url, "DROP TABLE half")
        assert await migrator.upgrade() == ("r2",)


@pytest.mark.anyio
async def test_failed_revision_names_the_ddl_that_stayed(mysql_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    async with Migrator(mysql_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        (directory / "versions" / "r1_good.py").write_text(textwrap.dedent(GOOD))
        (directory / "versions" / "r2_bad.py").write_text(textwrap.dedent(BAD))
        with pytest.raises(MigrationFailedError) as failed:
            await migrator.upgrade()
    message = str(failed.value)
    assert "CREATE TABLE half" in message, message
    assert "before running upgrade again" in message or "undo" in message.lower(), message


# -- 9. URLs with a synchronous MySQL driver name the async one ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("mysql://u:secret@localhost/db", "mysql+asyncmy://"),
        ("mysql+pymysql://u:secret@localhost/db", "mysql+asyncmy://"),
        ("mariadb://u:secret@localhost/db", "mariadb+asyncmy://"),
    ],
)
def test_sync_driver_url_names_asyncmy(url: str, suggestion: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        Migrator(url)
    assert suggestion in str(error.value)
    assert "secret" not in str(error.value)


# -- 10. an unreachable server: retried while it may come up, reported with the password hidden --------------


@pytest.mark.anyio
async def test_unreachable_server_is_retried_then_reported(tmp_path: Path, mysql_url: str) -> None:
    directory = await make_migrations(mysql_url, tmp_path / "migrations", chain(1))
    server = make_url(mysql_url)
    refused = server.set(port=1, password="secret").render_as_string(hide_password=False)
    async with Migrator(refused, None, directory, stdout=None, connect_timeout=1) as migrator:
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachableError) as excinfo:
            await migrator.current()
    assert time.monotonic() - started >= 0.9  # connection refused is worth retrying
    assert "port 1" in str(excinfo.value) and "secret" not in str(excinfo.value)

    missing = server.set(database="am_no_such_database").render_as_string(hide_password=False)
    async with Migrator(missing, None, directory, stdout=None, connect_timeout=30) as migrator:
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachableError, match="Unknown database"):
            await migrator.current()
    assert time.monotonic() - started < 5  # a missing database is not coming up by itself


# -- 10. a revision blocked by an open transaction: lock_wait_timeout and retry ----------------------------------


async def _ddl_setup(mysql_url: str, tmp_path: Path) -> Path:
    directory = tmp_path / "migrations"
    async with Migrator(mysql_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        (directory / "versions" / "r1_t.py").write_text(
            'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
            "from alembic import op\nimport sqlalchemy as sa\n"
            "def upgrade():\n    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"
            "    op.execute('INSERT INTO t VALUES (1)')\ndef downgrade():\n    pass\n"
        )
        assert await migrator.upgrade() == ("r1",)
    (directory / "versions" / "r2_alter.py").write_text(
        'revision = "r2"\ndown_revision = "r1"\nbranch_labels = None\ndepends_on = None\n'
        "from alembic import op\nimport sqlalchemy as sa\n"
        "def upgrade():\n    op.add_column('t', sa.Column('note', sa.Text))\ndef downgrade():\n    pass\n"
    )
    return directory


@pytest.mark.anyio
async def test_blocked_alter_retries_and_reads_go_on(mysql_url: str, tmp_path: Path) -> None:
    directory = await _ddl_setup(mysql_url, tmp_path)
    engine = create_async_engine(mysql_url, poolclass=sa.pool.NullPool)
    holder = await engine.connect()
    reader = await engine.connect()
    await holder.execute(sa.text("SELECT * FROM t"))  # an open transaction: a metadata lock on t
    migrator = Migrator(
        mysql_url, None, directory, stdout=None, ddl_lock_timeout=1, ddl_retry_attempts=20,
        ddl_retry_backoff=0.2,
    )  # fmt: skip
    upgrade = asyncio.create_task(migrator.upgrade())
    slowest = 0.0
    try:
        # 5 s blocked: unguarded, a read would queue behind the ALTER for all of it.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            started = time.monotonic()
            # Bounded, so that a regression fails here instead of hanging behind the ALTER.
            result = await asyncio.wait_for(reader.execute(sa.text("SELECT count(*) FROM t")), 10)
            assert result.scalar() == 1
            await reader.commit()
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.05)
        assert not upgrade.done()
        await holder.commit()
        assert await asyncio.wait_for(upgrade, 30) == ("r2",)
    finally:
        await holder.close()
        await reader.close()
        await migrator.aclose()
        await engine.dispose()
    assert slowest < 3.0, slowest  # about one lock_wait_timeout (1 s), not the whole blocked 5 s
    columns = await run_query(
        mysql_url,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 't' "
        "AND table_schema = DATABASE() ORDER BY ordinal_position",
    )
    assert columns == [("id",), ("note",)]


@pytest.mark.anyio
async def test_blocker_that_never_commits_on_mariadb(mysql_url: str, tmp_path: Path) -> None:
    from async_migrate import DDLLockTimeoutError

    directory = await _ddl_setup(mysql_url, tmp_path)
    engine = create_async_engine(mysql_url, poolclass=sa.pool.NullPool)
    holder = await engine.connect()
    holder_id = (await holder.execute(sa.text("SELECT CONNECTION_ID()"))).scalar()
    await holder.execute(sa.text("SELECT * FROM t"))
    try:
        async with Migrator(
            mysql_url, None, directory, stdout=None, ddl_lock_timeout=1, ddl_retry_attempts=2,
            ddl_retry_backoff=0.1,
        ) as migrator:  # fmt: skip
            with pytest.raises(DDLLockTimeoutError) as failed:
                await migrator.upgrade()
    finally:
        await holder.close()
        await engine.dispose()
    message = str(failed.value)
    assert "Revision r2 could not get the table locks it needs" in message and "2 attempt(s)" in message
    assert f"connection id {holder_id}" in message and f"KILL {holder_id}" in message
    assert "Nothing of it was applied" in message
    assert await run_query(mysql_url, VERSION) == [("r1",)]
