"""The framework-free core, awaited inside a running event loop, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import (
    CommandError,
    ConfigurationError,
    DatabaseUnreachableError,
    MigrationFailedError,
    Migrator,
    ModelsDifferError,
    NotUpToDateError,
)

from conftest import (
    APP,
    LOG_COUNTS,
    MODELS_V1,
    Project,
    account_metadata,
    chain,
    expected_log,
    inspect_tables,
    lock_holder,
    make_migrations,
    rev_id,
    run,
    run_query,
    sqlite_lock_path,
)

pytestmark = pytest.mark.anyio


async def test_workflow_through_the_api(backend_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    out = io.StringIO()
    async with Migrator(backend_url, account_metadata(), directory, stdout=out) as migrator:
        await migrator.init()
        first = await migrator.migrate("create account")
        assert first is not None
        assert "op.create_table('account'" in Path(first.path).read_text()
        assert await migrator.current() == ()

        assert await migrator.upgrade() == (first.revision,)
        assert await migrator.current() == (first.revision,)
        assert await migrator.upgrade() == ()  # already at head: nothing applied
        await migrator.check()
        assert await migrator.migrate("nothing") is None
        assert len(list((directory / "versions").glob("*.py"))) == 1

        migrator.metadata = account_metadata(with_email=True)
        with pytest.raises(ModelsDifferError) as differ:
            await migrator.check()
        assert "add_column account.email" in str(differ.value)
        assert differ.value.diffs

        second = await migrator.migrate("add email")
        assert second is not None
        assert "add_column(sa.Column('email'" in Path(second.path).read_text()
        assert await migrator.upgrade() == (second.revision,)
        await migrator.check()
        assert (await inspect_tables(backend_url))["account"] == ["id", "name", "email"]
        assert await migrator.heads() == (second.revision,)
        assert [s.revision for s in await migrator.history()] == [second.revision, first.revision]
        assert [s.revision for s in await migrator.show("head")] == [second.revision]
        assert await migrator.branches() == ()

        assert await migrator.downgrade() == (second.revision,)
        assert await migrator.current() == (first.revision,)
        assert (await inspect_tables(backend_url))["account"] == ["id", "name"]
        assert await migrator.downgrade("base") == (first.revision,)
        assert await migrator.current() == ()
        assert await migrator.upgrade() == (first.revision, second.revision)

        out.truncate(0)
        assert await migrator.upgrade("base:head", sql=True) == ()
        assert "CREATE TABLE account" in out.getvalue()

        await migrator.stamp(first.revision)
        assert await migrator.current() == (first.revision,)
        await migrator.stamp("head")
        templates = dict(await migrator.list_templates())
        assert "async" in templates

    assert (await inspect_tables(backend_url))["account"] == ["id", "name", "email"]
    assert await lock_holder(backend_url) is None  # nobody holds the lock afterwards


async def test_app_engine_is_used_and_left_open(tmp_path: Path) -> None:
    # An in-memory database exists only inside its engine: migrations must run through that engine.
    engine = create_async_engine("sqlite+aiosqlite://", poolclass=sa.pool.StaticPool)
    directory = tmp_path / "migrations"
    migrator = Migrator(engine, account_metadata(), directory, stdout=None)
    await migrator.init()
    script = await migrator.migrate("first")
    assert script is not None
    assert await migrator.upgrade() == (script.revision,)
    await migrator.aclose()
    async with engine.connect() as conn:  # still open, and it has the table
        assert (await conn.execute(sa.text("SELECT count(*) FROM account"))).scalar() == 0
    await engine.dispose()


async def test_failed_revision_is_rolled_back_alone(db_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    async with Migrator(db_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        good = directory / "versions" / "r1_good.py"
        good.write_text(
            'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
            "from alembic import op\nimport sqlalchemy as sa\n"
            "def upgrade():\n    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"
            "def downgrade():\n    op.drop_table('t')\n"
        )
        bad = directory / "versions" / "r2_bad.py"
        bad.write_text(
            'revision = "r2"\ndown_revision = "r1"\nbranch_labels = None\ndepends_on = None\n'
            "from alembic import op\nimport sqlalchemy as sa\n"
            "def upgrade():\n"
            "    op.create_table('half', sa.Column('id', sa.Integer, primary_key=True))\n"
            "    op.execute('INSERT INTO no_such_table VALUES (1)')\n"
            "def downgrade():\n    pass\n"
        )
        with pytest.raises(MigrationFailedError) as failed:
            await migrator.upgrade()
        message = str(failed.value)
        assert failed.value.revision == "r2"
        assert failed.value.current_heads == ("r1",)
        assert "Revision r2 failed" in message and "rolled back" in message
        assert "database is now at r1" in message
    found = await inspect_tables(db_url)
    assert "t" in found
    assert "half" not in found  # the failed revision's DDL is gone, on SQLite too
    assert await run_query(db_url, "SELECT version_num FROM alembic_version") == [("r1",)]


@pytest.mark.parametrize("direction", ["upgrade", "downgrade"])
async def test_failed_revision_names_what_its_autocommit_block_left(
    pg_url: str, tmp_path: Path, direction: str
) -> None:
    """A rollback does not undo an autocommit_block(): the error lists its statements, which stayed, and
    says to undo them before running the same command again."""
    directory = tmp_path / "migrations"
    blocks = (
        "    with op.get_context().autocommit_block():\n"
        "        op.execute('CREATE TABLE stayed_a (id int)')\n"
        "        op.execute('CREATE TABLE stayed_b (id int)')\n"
        "    op.execute('INSERT INTO no_such_table VALUES (1)')\n"
    )
    up, down = (blocks, "    pass\n") if direction == "upgrade" else ("    pass\n", blocks)
    async with Migrator(pg_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        (directory / "versions" / "r1_blocks.py").write_text(
            'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
            f"from alembic import op\ndef upgrade():\n{up}def downgrade():\n{down}"
        )
        if direction == "downgrade":
            await migrator.upgrade()
        with pytest.raises(MigrationFailedError) as failed:
            await (migrator.upgrade() if direction == "upgrade" else migrator.downgrade("base"))
    message = str(failed.value)
    assert "CREATE TABLE stayed_a (id int); CREATE TABLE stayed_b (id int)" in message
    assert "stay applied" in message and f"before running {direction} again" in message
    assert "none of its changes were applied" not in message
    assert {"stayed_a", "stayed_b"} <= set(await inspect_tables(pg_url))
    expected = [] if direction == "upgrade" else [("r1",)]
    assert await run_query(pg_url, "SELECT version_num FROM alembic_version") == expected


async def test_migrate_refuses_when_database_is_behind(sqlite_url: str, tmp_path: Path) -> None:
    async with Migrator(sqlite_url, account_metadata(), tmp_path / "m", stdout=None) as migrator:
        await migrator.init()
        await migrator.migrate("first")
        migrator.metadata = account_metadata(with_email=True)
        with pytest.raises(NotUpToDateError, match="Run `upgrade` first"):
            await migrator.migrate("second")
    assert len(list((tmp_path / "m" / "versions").glob("*.py"))) == 1


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("postgresql://u:secret@localhost/db", "postgresql+asyncpg://"),
        ("postgresql+psycopg2://u:secret@localhost/db", "postgresql+asyncpg://"),
        ("sqlite:///app.db", "sqlite+aiosqlite://"),
    ],
)
async def test_sync_driver_url_names_the_async_driver(url: str, suggestion: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        Migrator(url)
    assert suggestion in str(error.value)
    assert "secret" not in str(error.value)


async def test_unreachable_database_message_hides_password(tmp_path: Path) -> None:
    migrator = Migrator(
        "postgresql+asyncpg://user:s3cr3t@127.0.0.1:1/nodb", None, tmp_path, stdout=None
    )
    (tmp_path / "env.py").write_text("")
    with pytest.raises(DatabaseUnreachableError) as error:
        await migrator.current()
    message = str(error.value)
    assert "127.0.0.1" in message and "port 1" in message and "nodb" in message
    assert "s3cr3t" not in message
    await migrator.aclose()


async def test_commands_before_init_say_to_run_init(sqlite_url: str, tmp_path: Path) -> None:
    async with Migrator(sqlite_url, None, tmp_path / "missing", stdout=None) as migrator:
        with pytest.raises(ConfigurationError, match="Run `init` first"):
            await migrator.upgrade()


def test_core_does_not_import_quart() -> None:
    code = "import sys, async_migrate, async_migrate.migrator; print('quart' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("def upgrade(:\n    pass\n", "line 6"),
        ("import no_such_module_here\ndef upgrade():\n    pass\n", "No module named 'no_such_module_here'"),
    ],
)
async def test_broken_script_is_named_and_nothing_applied(
    sqlite_url: str, tmp_path: Path, body: str, expected: str
) -> None:
    directory = tmp_path / "migrations"
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        broken = directory / "versions" / "r1_broken.py"
        broken.write_text(
            'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
            "from alembic import op\n" + body + "def downgrade():\n    pass\n"
        )
        with pytest.raises(CommandError) as error:
            await migrator.upgrade()
    assert str(broken) in str(error.value)
    assert expected in str(error.value)
    assert await inspect_tables(sqlite_url) == {}


async def test_cancelled_sqlite_upgrade_finishes_its_revision_before_letting_go(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A SQLite upgrade runs in a worker thread, which cancellation cannot stop half-way: the task waits for
    it, so the file lock is never released while the thread still migrates."""
    import asyncio
    import time

    from async_migrate.locks import SQLiteFileLock

    directory = tmp_path / "migrations"
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        await migrator.init()
        (directory / "versions" / "r1_slow.py").write_text(
            'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
            "import time\nfrom alembic import op\nimport sqlalchemy as sa\n"
            "def upgrade():\n    time.sleep(1.0)\n"
            "    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"
            "def downgrade():\n    pass\n"
        )
        task = asyncio.create_task(migrator.upgrade())
        await asyncio.sleep(0.4)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started > 0.4  # it waited for the revision to finish
        async with migrator.connect() as connection:
            assert await SQLiteFileLock(str(tmp_path / "app.db")).describe_holder(connection) is None
            assert await migrator.read_current_heads(connection) == ("r1",)
    assert "t" in await inspect_tables(sqlite_url)


async def test_asyncpg_migration_ddl_in_one_round_trip_app_untouched(
    pg_url: str, tmp_path: Path
) -> None:
    """On asyncpg the migration connection sends DDL by the simple query protocol (one round trip, as
    psycopg does), which also accepts two statements in one DDL; the app's connections of the same engine
    keep SQLAlchemy's prepared statements, which refuse that."""
    engine = create_async_engine(pg_url)
    directory = tmp_path / "migrations"
    try:
        async with Migrator(engine, None, directory, stdout=None) as migrator:
            await migrator.init()
            (directory / "versions" / "r1_two.py").write_text(
                'revision = "r1"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
                "from alembic import op\nimport sqlalchemy as sa\n"
                "def upgrade():\n"
                "    op.execute(sa.DDL('CREATE TABLE one (id int); CREATE TABLE two (id int)'))\n"
                "def downgrade():\n    pass\n"
            )
            assert await migrator.upgrade() == ("r1",)
        assert {"one", "two"} <= set(await inspect_tables(pg_url))
        async with engine.connect() as app_connection:
            with pytest.raises(sa.exc.DBAPIError, match="multiple commands"):
                await app_connection.execute(sa.DDL("CREATE TABLE three (id int); SELECT 1"))
    finally:
        await engine.dispose()


async def test_cancelled_sqlite_upgrade_stops_at_the_next_revision_boundary(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite migrates in a worker thread: a cancellation (Ctrl-C, ``wait_for``) used to wait for every
    remaining revision. Now the revision running finishes, none after it starts, and the log says where
    the database is."""
    slow = {i: ["__import__('time').sleep(0.2)"] for i in range(1, 11)}
    directory = await make_migrations(sqlite_url, tmp_path / "migrations", chain(10, slow))
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        with caplog.at_level("WARNING", "async_migrate"), pytest.raises(TimeoutError):
            await asyncio.wait_for(migrator.upgrade(), 0.5)
    version = await run_query(sqlite_url, "SELECT version_num FROM alembic_version")
    reached = int(str(version[0][0])[1:]) if version else 0
    assert reached < 10
    if reached:
        assert await run_query(sqlite_url, LOG_COUNTS) == expected_log(reached)
    interrupted = [r.getMessage() for r in caplog.records if "Interrupted" in r.getMessage()]
    assert interrupted and f"is at {rev_id(reached) if reached else 'base'}" in interrupted[0]
    with open(sqlite_lock_path(sqlite_url), "a") as lock_file:  # the lock was given back
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        await migrator.upgrade()
    assert await run_query(sqlite_url, LOG_COUNTS) == expected_log(10)


async def test_startup_upgrade_cut_by_the_servers_startup_timeout_says_what_to_do(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server cancels a startup hook that outlasts its budget (Hypercorn: LifespanTimeoutError and no
    more); the log says the startup was cut, where the database is left, and to migrate in a Job."""
    from async_migrate.startup import startup_upgrade

    slow = {i: ["__import__('time').sleep(0.2)"] for i in range(1, 6)}
    directory = await make_migrations(sqlite_url, tmp_path / "migrations", chain(5, slow))
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        with caplog.at_level("INFO", "async_migrate"), pytest.raises(TimeoutError):
            await asyncio.wait_for(startup_upgrade(migrator), 0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "was cancelled after" in errors[0] and "startup_timeout" in errors[0]
    assert "Job" in errors[0] and "MIGRATE_AUTO_UPGRADE = False" in errors[0]
    version = await run_query(sqlite_url, "SELECT version_num FROM alembic_version")
    assert version != [("r05",)]


def test_ctrl_c_of_quart_db_upgrade_on_sqlite_stops_at_a_revision_boundary(tmp_path: Path) -> None:
    """A real `quart db upgrade` process, SIGINT while revision 3 of 10 runs: exit non-zero, a line that
    says where the database is, and that is where it is."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(APP))
    project = Project(root, url)
    project.write_models(MODELS_V1)
    slow = {i: ["time.sleep(0.3)"] for i in range(1, 11)}
    run(make_migrations(url, root / "migrations", chain(10, slow)))
    process = subprocess.Popen(
        [sys.executable, "-m", "quart", "--app", "app", "db", "upgrade"],
        cwd=root, env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A test run from a background job inherits SIGINT ignored; a user's terminal does not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    # The whole run is one transaction on SQLite: its progress shows in the log lines, not the file.
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if "Applied upgrade r02" in line:
            os.kill(process.pid, signal.SIGINT)
            break
    output = "".join(seen) + process.communicate(timeout=60)[0]
    assert process.returncode != 0, output
    reached = run_query_sync(url, "SELECT version_num FROM alembic_version")
    assert len(reached) == 1 and reached[0][0] in ("r02", "r03"), (reached, output)
    at = str(reached[0][0])
    assert f"after {int(at[1:])} revision(s)" in output and f"is at {at}." in output, output
    assert "Traceback" not in output, output
    assert run_query_sync(url, LOG_COUNTS) == expected_log(int(at[1:]))


def test_upgrade_cancelled_while_connecting_leaves_no_thread_behind(tmp_path: Path) -> None:
    """asyncio.run(wait_for(upgrade(), tiny)): nothing of aiosqlite's may report to the closed loop."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    run(make_migrations(url, tmp_path / "migrations", chain(2)))
    script = (
        "import asyncio, sys\n"
        "from async_migrate import Migrator\n"
        "async def main():\n"
        "    async with Migrator(sys.argv[1], None, sys.argv[2], stdout=None) as migrator:\n"
        "        await asyncio.wait_for(migrator.upgrade(), 0.0005)\n"
        "for _ in range(5):\n"
        "    try:\n"
        "        asyncio.run(main())\n"
        "    except TimeoutError:\n"
        "        pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, url, str(tmp_path / "migrations")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Event loop is closed" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def run_query_sync(url: str, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(str(make_url(url).database))) as connection:
        try:
            return [tuple(row) for row in connection.execute(sql).fetchall()]
        except sqlite3.OperationalError:
            return []

