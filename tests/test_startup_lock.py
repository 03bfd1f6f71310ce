"""The migration lock under real concurrency: many processes (and many tasks) booting one app against one
real database, a migrator killed with SIGKILL while it holds the lock, lock timeouts, cancellation, and the
startup checks that refuse to serve. Every database here is real (PostgreSQL on 127.0.0.1, MariaDB on
127.0.0.1, SQLite files); the tests that are the same on each run on each (``backend_url``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa
from quart import Quart
from quart.testing import app as quart_testing
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from async_migrate import Migrate, Migrator
from async_migrate.errors import (
    LockTimeoutError,
    MultipleHeadsError,
    UnknownRevisionError,
    exception_chain,
)
from async_migrate.locks import postgres_lock_key

from conftest import (
    CREATE_LOG,
    LOG_COUNTS,
    LOG_TABLE,
    VERSION,
    LockHolder,
    advisory_holders_sql,
    assert_lock_stays_free,
    chain,
    dbname,
    expected_log,
    lock_holder,
    log_insert,
    make_migrations,
    make_migrations_sync,
    query,
    rev_id,
    run_query,
    table_names,
    tables,
)

E = TypeVar("E", bound=BaseException)

# A revision that keeps its migrator busy (and the lock held) for 2 s, on each backend: PostgreSQL and
# MySQL sleep on the server; a SQLite upgrade runs in a worker thread, where time.sleep blocks nothing else.
SLEEP_2S = {
    "postgresql": 'op.execute("SELECT pg_sleep(2)")',
    "mysql": 'op.execute("SELECT SLEEP(2)")',
    "mariadb": 'op.execute("SELECT SLEEP(2)")',
    "sqlite": "time.sleep(2)",
}


# -- subprocesses ----------------------------------------------------------------------------------------------

APP_SCRIPT = """
import asyncio
import json
import logging
import os
import sys

from quart import Quart
from quart.testing.app import TestApp
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import Migrate

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s pid=%(process)d %(name)s %(levelname)s %(message)s")


async def main() -> int:
    # Everything is imported: report ready, then start together with the others.
    barrier = os.environ.get("BARRIER_DIR")
    if barrier:
        open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(barrier, "go")):
            await asyncio.sleep(0.01)
    app = Quart(__name__)
    engine = create_async_engine(os.environ["DATABASE_URL"])
    Migrate(app, None, directory=os.environ["MIGRATIONS"], engine=engine, auto_upgrade=True,
            lock_timeout=90, connect_timeout=60, healthz=True)
    try:
        async with TestApp(app, startup_timeout=60):
            response = await app.test_client().get("/healthz")
            body = await response.get_json()
            print("HEALTHZ", response.status_code, json.dumps(body), flush=True)
            return 0 if response.status_code == 200 else 3
    finally:
        await engine.dispose()


sys.exit(asyncio.run(main()))
"""

UPGRADE_SCRIPT = """
import asyncio
import logging
import os
import sys

from async_migrate import Migrator

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s pid=%(process)d %(name)s %(levelname)s %(message)s")


async def main() -> None:
    async with Migrator(os.environ["DATABASE_URL"], None, os.environ["MIGRATIONS"],
                        lock_timeout=60, connect_timeout=30, stdout=None) as migrator:
        applied = await migrator.upgrade()
    print("APPLIED", ",".join(applied), flush=True)


asyncio.run(main())
"""


def child_env(url: str, migrations: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "QUART_"))}
    env.update(DATABASE_URL=url, MIGRATIONS=str(migrations), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


class Child:
    """A Python subprocess running a script, its output going to files (no pipe can fill up)."""

    def __init__(self, tmp_path: Path, name: str, script: str, env: dict[str, str]) -> None:
        path = tmp_path / f"{name}.py"
        if not path.exists():
            path.write_text(textwrap.dedent(script))
        self.name = name
        self.out_path = tmp_path / f"{name}.{uuid.uuid4().hex[:6]}.out"
        self.err_path = self.out_path.with_suffix(".err")
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(path)], cwd=tmp_path, env=env, stdout=out, stderr=err
            )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def report(self) -> str:
        return (
            f"--- {self.name} pid {self.proc.pid} exit {self.proc.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr (tail):\n{self.stderr[-3000:]}"
        )


def wait_all(children: Sequence[Child], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        for child in children:
            child.wait(max(1.0, deadline - time.monotonic()))
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
    failed = [c for c in children if c.proc.returncode != 0]
    assert not failed, "\n".join(c.report() for c in failed)


# -- 1. many processes boot one app at once --------------------------------------------------------------------


def _boot_many(tmp_path: Path, url: str, processes: int) -> None:
    migrations = make_migrations_sync(url, tmp_path / "migrations", chain(30))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = child_env(url, migrations, BARRIER_DIR=str(barrier))
    children = [Child(tmp_path, "boot", APP_SCRIPT, env) for _ in range(processes)]
    # Release them all at once, once every one has imported its modules, so that they really race.
    deadline = time.monotonic() + 90
    while len(list(barrier.glob("ready-*"))) < processes and time.monotonic() < deadline:
        if any(c.proc.poll() is not None for c in children):
            break
        time.sleep(0.05)
    (barrier / "go").touch()
    wait_all(children, timeout=150)
    for child in children:
        assert child.stdout.startswith("HEALTHZ 200 "), child.report()
        assert '"status": "ok"' in child.stdout, child.report()
    assert query(url, VERSION) == [("r30",)]
    assert query(url, LOG_COUNTS) == expected_log(30)
    assert query(url, f"SELECT count(*) FROM {LOG_TABLE}") == [(30,)]
    # The ledger has each revision's row once, written by the one process that applied it.
    ledger = query(url, "SELECT revision, direction, pid FROM alembic_version_log ORDER BY id")
    assert [(rev, direction) for rev, direction, _ in ledger] == [
        (rev_id(i), "upgrade") for i in range(1, 31)
    ]
    assert len({pid for _, _, pid in ledger}) == 1
    # One process applied the whole chain under the lock; the others applied nothing.
    applied_lines = sorted(c.stderr.count("Applied upgrade ") for c in children)
    assert applied_lines == [0] * (processes - 1) + [30], "\n".join(c.report() for c in children)


def test_twelve_processes_boot_one_app_on_postgres(tmp_path: Path, pg_url: str) -> None:
    _boot_many(tmp_path, pg_url, 12)


def test_six_processes_boot_one_app_on_sqlite(tmp_path: Path, sqlite_url: str) -> None:
    _boot_many(tmp_path, sqlite_url, 6)


# -- 2. 200 starters in one process, more than the server's max_connections ------------------------------------


@pytest.mark.anyio
async def test_two_hundred_concurrent_starters_in_one_process(tmp_path: Path, pg_url: str) -> None:
    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(30))
    engines: list[AsyncEngine] = [
        create_async_engine(pg_url, poolclass=sa.pool.NullPool) for _ in range(200)
    ]
    try:
        migrators = [
            Migrator(engine, None, migrations, lock_timeout=120, connect_timeout=120, stdout=None)
            for engine in engines
        ]
        results = await asyncio.wait_for(
            asyncio.gather(*(m.upgrade() for m in migrators), return_exceptions=True), timeout=170
        )
    finally:
        await asyncio.gather(*(engine.dispose() for engine in engines))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} starters raised, e.g. {errors[0]!r}"
    applied = [rev for result in results for rev in result]  # type: ignore[union-attr]
    assert applied == [rev_id(i) for i in range(1, 31)]  # all of it by one starter, once
    assert sum(1 for r in results if r) == 1
    assert await run_query(pg_url, VERSION) == [("r30",)]
    assert await run_query(pg_url, LOG_COUNTS) == expected_log(30)


# -- 3. the holder is killed with SIGKILL in the middle of a slow revision -------------------------------------


def test_kill_9_of_the_holder_mid_revision_frees_the_lock(tmp_path: Path, pg_url: str) -> None:
    slow = ['if os.environ.get("AM_SLOW_REVISION"):', '    op.execute("SELECT pg_sleep(30)")']
    migrations = make_migrations_sync(pg_url, tmp_path / "migrations", chain(3, {2: slow}))
    key = postgres_lock_key(dbname(pg_url), "public", "alembic_version")

    a = Child(
        tmp_path, "upgrade", UPGRADE_SCRIPT, child_env(pg_url, migrations, AM_SLOW_REVISION="1")
    )
    try:
        deadline = time.monotonic() + 30
        holder: list[tuple[object, ...]] = []
        while time.monotonic() < deadline and a.proc.poll() is None:
            holder = query(
                pg_url,
                "SELECT a.pid FROM pg_stat_activity a "
                f"WHERE a.pid IN ({advisory_holders_sql(key)}) AND a.pid <> pg_backend_pid() "
                "AND a.state = 'active' AND a.query LIKE '%pg_sleep(30)%'",
            )
            if holder:
                break
            time.sleep(0.1)
        assert holder, "process A never held the lock while sleeping in r02\n" + a.report()
        os.kill(a.proc.pid, signal.SIGKILL)
        assert a.wait(10) == -signal.SIGKILL
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()
    # A committed r01 before it died; r02 was cut off mid-statement.
    assert query(pg_url, VERSION) == [("r01",)]

    started = time.monotonic()
    b = Child(tmp_path, "upgrade", UPGRADE_SCRIPT, child_env(pg_url, migrations))
    returncode = b.wait(60)
    elapsed = time.monotonic() - started
    assert returncode == 0, b.report()
    # Correctness bound, not a performance check: without client_connection_check_interval the killed
    # backend would keep running pg_sleep(30), and the lock, for ~30 s.
    assert elapsed < 15, f"B took {elapsed:.1f}s to get the lock\n{b.report()}"
    assert "APPLIED r02,r03" in b.stdout, b.report()
    assert query(pg_url, VERSION) == [("r03",)]
    assert query(pg_url, LOG_COUNTS) == expected_log(3)
    assert query(pg_url, advisory_holders_sql(key)) == []
    # The killed r02 took its ledger row with it: one row per revision, r02's from B.
    assert query(pg_url, "SELECT revision FROM alembic_version_log ORDER BY id") == [
        ("r01",), ("r02",), ("r03",),
    ]  # fmt: skip


# -- 4. lock timeout names the holder --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lock_timeout_names_the_holder(tmp_path: Path, backend_url: str) -> None:
    migrations = await make_migrations(backend_url, tmp_path / "migrations", chain(3))
    app_name = f"am-holder-{uuid.uuid4().hex[:8]}"
    async with LockHolder(backend_url, application_name=app_name) as holder:
        async with Migrator(backend_url, None, migrations, lock_timeout=1, stdout=None) as migrator:
            started = time.monotonic()
            with pytest.raises(LockTimeoutError) as excinfo:
                await asyncio.wait_for(migrator.upgrade(), timeout=30)
            elapsed = time.monotonic() - started
        assert await lock_holder(backend_url) == holder.session_id
    message = str(excinfo.value)
    assert "Gave up after waiting" in message
    for name in holder.names:  # pid and application_name; connection id and lock name; pid and file
        assert name in message, message
    for name in holder.who:
        assert excinfo.value.holder is not None and name in excinfo.value.holder
    assert elapsed < 10, elapsed
    assert await table_names(backend_url) == []


# -- 5. startup refuses, with clear errors, and writes nothing -------------------------------------------------


def quart_app(engine: AsyncEngine, migrations: Path, **settings: object) -> Quart:
    app = Quart(__name__)
    Migrate(
        app,
        None,
        directory=migrations,
        engine=engine,
        auto_upgrade=True,
        lock_timeout=10,
        connect_timeout=5,
        healthz=True,
        **settings,
    )
    return app


async def start_and_fail(app: Quart) -> BaseException:
    with pytest.raises(Exception) as excinfo:
        async with quart_testing.TestApp(app, startup_timeout=60):
            pass
    return excinfo.value


def in_chain(exc: BaseException, cls: type[E]) -> E | None:
    """The first exception of type ``cls`` in ``exc``'s cause/context chain."""
    return next((c for c in exception_chain(exc) if isinstance(c, cls)), None)


def describe_chain(exc: BaseException) -> str:
    return "\n".join(f"{type(c).__name__}: {c}" for c in exception_chain(exc))


@pytest.mark.anyio
async def test_startup_refuses_two_heads(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_migrate")
    revisions = [
        ("base1", None, [CREATE_LOG, log_insert("base1")]),
        ("heada", "base1", [log_insert("heada")]),
        ("headb", "base1", [log_insert("headb")]),
    ]
    migrations = await make_migrations(pg_url, tmp_path / "migrations", revisions)
    engine = create_async_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        error = await start_and_fail(quart_app(engine, migrations))
    finally:
        await engine.dispose()
    # TestApp reports a failed before_serving hook as LifespanError carrying the hook's message.
    assert isinstance(error, quart_testing.LifespanError), describe_chain(error)
    cause = in_chain(error, MultipleHeadsError)
    assert cause is not None and set(cause.heads) == {"heada", "headb"}, describe_chain(error)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for text in (str(error), logged):
        assert "heada" in text and "headb" in text, text
        assert "merge" in text, text
    assert await table_names(pg_url) == []


async def stamp_unknown(url: str, revision: str) -> None:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                sa.text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            )
            await conn.execute(sa.text(f"INSERT INTO alembic_version VALUES ('{revision}')"))
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_startup_refuses_database_ahead_of_scripts(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_migrate")
    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(2))
    await stamp_unknown(pg_url, "f00dfeed9999")
    engine = create_async_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        error = await start_and_fail(quart_app(engine, migrations))
    finally:
        await engine.dispose()
    assert isinstance(error, quart_testing.LifespanError), describe_chain(error)
    cause = in_chain(error, UnknownRevisionError)
    assert cause is not None and cause.revisions == ("f00dfeed9999",), describe_chain(error)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    for text in (str(error), logged):
        assert "f00dfeed9999" in text, text
        assert "stamp --purge" in text, text
    assert await table_names(pg_url) == ["alembic_version"]
    assert await run_query(pg_url, VERSION) == [("f00dfeed9999",)]


@pytest.mark.anyio
async def test_startup_serves_database_ahead_when_allowed(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_migrate")
    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(2))
    await stamp_unknown(pg_url, "f00dfeed9999")
    engine = create_async_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        app = quart_app(engine, migrations, allow_db_ahead=True)
        async with quart_testing.TestApp(app, startup_timeout=60):
            pass
    finally:
        await engine.dispose()
    assert any(
        r.levelno == logging.WARNING and "f00dfeed9999" in r.getMessage() for r in caplog.records
    )
    assert await table_names(pg_url) == ["alembic_version"]
    assert await run_query(pg_url, VERSION) == [("f00dfeed9999",)]


# -- 6. a waiter that gets the lock after the holder finished does nothing --------------------------------------


@pytest.mark.anyio
async def test_waiter_rereads_and_does_nothing(
    tmp_path: Path, backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_migrate")
    backend = make_url(backend_url).get_backend_name()
    migrations = await make_migrations(
        backend_url, tmp_path / "migrations", chain(3, {2: [SLEEP_2S[backend]]})
    )
    async with (
        Migrator(backend_url, None, migrations, lock_timeout=30, stdout=None) as first,
        Migrator(backend_url, None, migrations, lock_timeout=30, stdout=None) as second,
    ):
        first_task = asyncio.create_task(first.upgrade())
        for _ in range(200):
            if await lock_holder(backend_url) is not None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the first migrator never took the lock")
        second_result = await asyncio.wait_for(second.upgrade(), timeout=30)
        first_result = await asyncio.wait_for(first_task, timeout=30)
    assert first_result == ("r01", "r02", "r03")
    assert second_result == ()
    assert any("while this one waited" in r.getMessage() for r in caplog.records)
    assert await run_query(backend_url, LOG_COUNTS) == expected_log(3)
    assert await run_query(backend_url, VERSION) == [("r03",)]


# -- 7. cancelled while waiting: never takes the lock afterwards -----------------------------------------------


@pytest.mark.anyio
async def test_cancelled_waiter_never_takes_the_lock(
    tmp_path: Path, backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="async_migrate")
    migrations = await make_migrations(backend_url, tmp_path / "migrations", chain(3))
    async with LockHolder(backend_url) as holder:
        async with Migrator(backend_url, None, migrations, lock_timeout=60, stdout=None) as migrator:
            task = asyncio.create_task(migrator.upgrade())
            for _ in range(200):
                if any("Waiting up to" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the migrator never started waiting")
            await asyncio.sleep(0.5)  # well inside its polling
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await holder.release()
    await assert_lock_stays_free(backend_url)
    # A replica waiting its turn is told who holds the lock, not how to kill a healthy migrator.
    [waiting] = [r.getMessage() for r in caplog.records if "Waiting up to" in r.getMessage()]
    assert holder.who[0] in waiting and "to stop it" not in waiting, waiting


@pytest.mark.anyio
async def test_waiters_cancelled_at_any_moment_never_take_the_lock(
    tmp_path: Path, backend_url: str
) -> None:
    """Cancellation can land in the backoff sleep, in connect, or in the middle of the lock query itself."""
    migrations = await make_migrations(backend_url, tmp_path / "migrations", chain(3))
    migrators = [
        Migrator(backend_url, None, migrations, lock_timeout=60, stdout=None) for _ in range(24)
    ]
    async with LockHolder(backend_url) as holder:
        try:
            tasks = [asyncio.create_task(m.upgrade()) for m in migrators]
            for i, task in enumerate(tasks):
                await asyncio.sleep(0.003 * (i % 7) + 0.04)
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        finally:
            await asyncio.gather(*(m.aclose() for m in migrators))
        assert await lock_holder(backend_url) == holder.session_id
        await holder.release()
    await assert_lock_stays_free(backend_url)


@pytest.mark.anyio
async def test_status_reports_a_running_migration(tmp_path: Path, backend_url: str) -> None:
    migrations = await make_migrations(backend_url, tmp_path / "migrations", chain(1))
    async with Migrator(backend_url, None, migrations, stdout=None) as migrator:
        assert (await migrator.status()).migrating is False
        async with LockHolder(backend_url):
            assert (await migrator.status()).migrating is True


# -- 8. two version tables in one database don't block each other ---------------------------------------------


@pytest.mark.anyio
async def test_other_version_table_is_not_blocked(tmp_path: Path, server_url: str) -> None:
    migrations = await make_migrations(server_url, tmp_path / "migrations", chain(3))
    async with LockHolder(server_url, version_table="alembic_version"):
        async with Migrator(
            server_url, None, migrations, lock_timeout=1, stdout=None, version_table="other_version"
        ) as migrator:
            applied = await asyncio.wait_for(migrator.upgrade(), timeout=30)
    assert applied == ("r01", "r02", "r03")
    assert await table_names(server_url) == [LOG_TABLE, "other_version", "other_version_log"]
    assert await run_query(server_url, "SELECT version_num FROM other_version") == [("r03",)]
    assert await run_query(server_url, LOG_COUNTS) == expected_log(3)


@pytest.mark.anyio
async def test_one_sqlite_file_through_a_symlink_is_one_lock(tmp_path: Path) -> None:
    """Two replicas reaching one SQLite file by two paths take one lock: the second waits for the
    first (and names it) instead of migrating beside it."""
    real = tmp_path / "real.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    real_url, link_url = f"sqlite+aiosqlite:///{real}", f"sqlite+aiosqlite:///{link}"
    migrations = await make_migrations(real_url, tmp_path / "migrations", chain(3))
    async with LockHolder(real_url) as holder:
        async with Migrator(link_url, None, migrations, lock_timeout=1, stdout=None) as migrator:
            with pytest.raises(LockTimeoutError) as excinfo:
                await asyncio.wait_for(migrator.upgrade(), timeout=30)
    assert all(name in str(excinfo.value) for name in holder.names), str(excinfo.value)
    assert await table_names(real_url) == []
    async with Migrator(link_url, None, migrations, stdout=None) as migrator:
        assert await migrator.upgrade() == ("r01", "r02", "r03")
    assert await run_query(real_url, LOG_COUNTS) == expected_log(3)


# -- 9. the lock key derivation is pinned ------------------------------------------------------------------------


def test_lock_key_derivation_is_pinned() -> None:
    # This value must NEVER change between releases: replicas of an old and a new release that derive
    # different keys would both take "the" lock and migrate one database at once.
    assert postgres_lock_key("db", "public", "alembic_version") == -8429163753555300100
    assert postgres_lock_key("db", "public", "other_version") != -8429163753555300100
    assert postgres_lock_key("db", "other", "alembic_version") != -8429163753555300100
    assert postgres_lock_key("db2", "public", "alembic_version") != -8429163753555300100


# -- 10. SQLite: the file lock works across processes -----------------------------------------------------------


def test_sqlite_file_lock_across_processes(tmp_path: Path, sqlite_url: str) -> None:
    slow = ["time.sleep(3)"]
    migrations = make_migrations_sync(sqlite_url, tmp_path / "migrations", chain(2, {2: slow}))
    lock_file = Path(str(make_url(sqlite_url).database) + ".migrate-lock")
    env = child_env(sqlite_url, migrations)

    a = Child(tmp_path, "upgrade", UPGRADE_SCRIPT, env)
    b: Child | None = None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and a.proc.poll() is None:
            if lock_file.exists() and f"pid {a.proc.pid} " in lock_file.read_text():
                break
            time.sleep(0.05)
        else:
            pytest.fail("process A never took the file lock\n" + a.report())
        b = Child(tmp_path, "upgrade", UPGRADE_SCRIPT, env)
        wait_all([a, b], timeout=60)
    finally:
        for child in (a, b):
            if child is not None and child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
    assert b is not None
    assert "APPLIED r01,r02" in a.stdout, a.report()
    assert b.stdout.strip() == "APPLIED", b.report()
    assert "while this one waited" in b.stderr, b.report()
    assert query(sqlite_url, VERSION) == [("r02",)]
    assert query(sqlite_url, LOG_COUNTS) == expected_log(2)
    assert sorted(tables(sqlite_url)) == ["alembic_version", "alembic_version_log", LOG_TABLE]


HYPERCORN_APP = """
import os
from quart import Quart
from async_migrate import Migrate

app = Quart(__name__)
app.config["MIGRATE_STARTUP_TIMEOUT"] = 1.5
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
Migrate(app, None, directory=os.environ["MIGRATIONS"], auto_upgrade=True)
"""


def test_hypercorn_start_kept_waiting_fails_in_words_before_its_startup_timeout(
    tmp_path: Path, sqlite_url: str
) -> None:
    """A replica waiting for another's long migration: Hypercorn (startup_timeout 6 s here) would cancel
    it with a bare LifespanTimeoutError; the startup budget ends the wait first, saying why."""
    directory = make_migrations_sync(sqlite_url, tmp_path / "migrations", chain(2))
    (tmp_path / "served.py").write_text(HYPERCORN_APP)
    (tmp_path / "hypercorn.toml").write_text("startup_timeout = 6\n")

    async def start_while_locked() -> subprocess.CompletedProcess[str]:
        async with LockHolder(sqlite_url):
            return await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "hypercorn", "-c", "hypercorn.toml", "-b", "127.0.0.1:0", "served:app"],
                cwd=tmp_path,
                env={**os.environ, "DATABASE_URL": sqlite_url, "MIGRATIONS": str(directory)},
                capture_output=True,
                text=True,
                timeout=60,
            )

    result = asyncio.run(start_while_locked())
    output = result.stdout + result.stderr
    # Hypercorn 0.18 exits 0 even so (its worker process ended "normally"): the log is what tells.
    assert "MIGRATE_STARTUP_TIMEOUT" in output and "Gave up after waiting" in output, output
    assert "LifespanTimeoutError" not in output and "Running on" not in output, output
    assert query(sqlite_url, "SELECT name FROM sqlite_master WHERE name = 'alembic_version'") == []


@pytest.mark.anyio
async def test_startup_budget_does_not_cut_a_migration_under_way(tmp_path: Path, sqlite_url: str) -> None:
    from async_migrate.startup import startup_upgrade

    slow = {i: ["time.sleep(0.4)"] for i in range(1, 4)}
    directory = await make_migrations(sqlite_url, tmp_path / "migrations", chain(3, slow))
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        await startup_upgrade(migrator, startup_timeout=0.5)
    assert await run_query(sqlite_url, LOG_COUNTS) == expected_log(3)
