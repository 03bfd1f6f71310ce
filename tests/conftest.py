"""Shared fixtures and helpers: real SQLite files, a real PostgreSQL and MariaDB database per test
(``backend_url`` runs a test on each), histories of revisions written to disk, another session holding
the migration lock, and small Quart projects on disk for CLI tests run as subprocesses."""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import json
import os
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from async_migrate import Migrator
from async_migrate.locks import mysql_lock_name, postgres_lock_key
from async_migrate.sqlite_runner import sqlite_file_path

PG_SERVER = os.environ.get("ASYNC_MIGRATE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
MYSQL_SERVER = os.environ.get("ASYNC_MIGRATE_TEST_MYSQL", "mysql+asyncmy://root@127.0.0.1:3306")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code, also when an event loop is already running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def anyio_backend() -> str:
    # Quart and asyncpg are asyncio-only.
    return "asyncio"


async def _pg_admin(*statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        PG_SERVER.replace("postgresql+asyncpg", "postgresql") + "/postgres", timeout=5
    )
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_admin(*statements: str) -> None:
    """Run statements on the server's ``postgres`` database (from sync or async code)."""
    run(_pg_admin(*statements))


def unavailable(message: str) -> None:
    """Skip a test whose server or tool is missing; in CI fail instead: CI never skips them."""
    if IN_CI:
        pytest.fail(message + "; CI=true never skips database tests", pytrace=False)
    pytest.skip(message)


_pg_problem: str | None = None
_pg_checked = False


def require_postgres() -> None:
    """Skip (fail in CI) when the PostgreSQL server cannot be reached."""
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True
        try:
            pg_admin("SELECT 1")
        except (TimeoutError, OSError, ConnectionError) as exc:
            _pg_problem = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            if type(exc).__module__.startswith("asyncpg"):
                _pg_problem = f"{type(exc).__name__}: {exc}"
            else:
                raise
    if _pg_problem is not None:
        unavailable(f"PostgreSQL at {PG_SERVER} is unreachable ({_pg_problem})")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    require_postgres()
    name = f"am_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _mysql_admin(*statements: str) -> None:
    engine = create_async_engine(
        f"{MYSQL_SERVER}/", poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
            await conn.commit()
    finally:
        await engine.dispose()


def mysql_admin(*statements: str) -> None:
    """Run statements on the MySQL/MariaDB server, outside any test database."""
    run(_mysql_admin(*statements))


_mysql_problem: str | None = None
_mysql_checked = False


def require_mariadb() -> None:
    """Skip (fail in CI) when the MySQL/MariaDB server cannot be reached."""
    global _mysql_checked, _mysql_problem
    if not _mysql_checked:
        _mysql_checked = True
        try:
            mysql_admin("SELECT 1")
        except (TimeoutError, OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            _mysql_problem = f"{type(exc).__name__}: {exc}".splitlines()[0]
    if _mysql_problem is not None:
        unavailable(f"MySQL/MariaDB at {MYSQL_SERVER} is unreachable ({_mysql_problem})")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh, empty MariaDB database (``mysql+asyncmy://``), dropped afterwards."""
    require_mariadb()
    name = f"am_test_{uuid.uuid4().hex[:12]}"
    mysql_admin(f"CREATE DATABASE `{name}`")
    try:
        yield f"{MYSQL_SERVER}/{name}"
    finally:
        mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")


def as_mariadb(url: str) -> str:
    """The same database through SQLAlchemy's ``mariadb`` dialect name (``mariadb+<driver>://``)."""
    parsed = make_url(url)
    return parsed.set(drivername=f"mariadb+{parsed.get_driver_name()}").render_as_string(
        hide_password=False
    )


def dbname(url: str) -> str:
    return str(make_url(url).database)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["postgresql", "mysql", "mariadb"])
def server_url(request: pytest.FixtureRequest) -> str:
    """``backend_url`` without SQLite: for what only a database server has (e.g. a lock per version table;
    SQLite's lock is per file)."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    url = str(request.getfixturevalue("mysql_url"))
    return url if request.param == "mysql" else as_mariadb(url)


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "mariadb"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real empty database on each backend this project supports: a SQLite file, PostgreSQL, and the
    MariaDB server through SQLAlchemy's ``mysql`` and its ``mariadb`` dialect. For tests that are the
    same on each."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    url = str(request.getfixturevalue("mysql_url"))
    return url if request.param == "mysql" else as_mariadb(url)


async def inspect_tables(url: str) -> dict[str, list[str]]:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as conn:

            def read(sync_conn: sa.Connection) -> dict[str, list[str]]:
                inspector = sa.inspect(sync_conn)
                return {
                    table: [c["name"] for c in inspector.get_columns(table)]
                    for table in inspector.get_table_names()
                }

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def table_names(url: str) -> list[str]:
    """The database's table names, sorted."""
    return sorted(await inspect_tables(url))


def tables(url: str) -> dict[str, list[str]]:
    """The database's tables and their column names, read through a fresh engine."""
    return asyncio.run(inspect_tables(url))


async def run_query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(sa.text(sql))).all()]
    finally:
        await engine.dispose()


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    return run(run_query(url, sql))


async def execute(url: str, sql: str) -> None:
    """Run one statement and commit it."""
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
    finally:
        await engine.dispose()


def account_metadata(with_email: bool = False) -> sa.MetaData:
    """``account(id, name)``, and ``email`` when asked: the models of the workflow tests."""
    metadata = sa.MetaData()
    columns = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(100))]
    if with_email:
        columns.append(sa.Column("email", sa.String(200)))
    sa.Table("account", metadata, *columns)
    return metadata


# -- histories of revisions on disk ---------------------------------------------------------------------------

LOG_TABLE = "boot_log"
LOG_COUNTS = f"SELECT rev, count(*) FROM {LOG_TABLE} GROUP BY rev ORDER BY rev"
VERSION = "SELECT version_num FROM alembic_version"

CREATE_LOG = (
    f'op.create_table("{LOG_TABLE}", sa.Column("id", sa.Integer, primary_key=True), '
    'sa.Column("rev", sa.Text, nullable=False))'
)


def rev_id(n: int) -> str:
    return f"r{n:02d}"


def revision_source(revision: str, down_revision: str | None, body: Iterable[str]) -> str:
    """One Alembic revision file, in the format the template writes."""
    lines = list(body) or ["pass"]
    upgrade = "\n".join("    " + line for line in lines)
    return (
        f'"""{revision}\n\nRevision ID: {revision}\nRevises: {down_revision}\n"""\n'
        "import os\n"
        "import time\n\n"
        "from alembic import op\n"
        "import sqlalchemy as sa\n\n"
        f"revision = {revision!r}\n"
        f"down_revision = {down_revision!r}\n"
        "branch_labels = None\n"
        "depends_on = None\n\n\n"
        f"def upgrade() -> None:\n{upgrade}\n\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def log_insert(revision: str) -> str:
    return f"op.execute(\"INSERT INTO {LOG_TABLE} (rev) VALUES ('{revision}')\")"


def chain(
    n: int, extra: dict[int, Sequence[str]] | None = None
) -> list[tuple[str, str | None, list[str]]]:
    """A linear chain r01..rNN: r01 creates the log table, every revision logs its id once.
    ``extra`` adds lines to revision number i (before its insert)."""
    revisions = []
    for i in range(1, n + 1):
        body = [CREATE_LOG] if i == 1 else []
        body += list((extra or {}).get(i, ()))
        body.append(log_insert(rev_id(i)))
        revisions.append((rev_id(i), rev_id(i - 1) if i > 1 else None, body))
    return revisions


async def make_migrations(
    url: str, directory: Path, revisions: Iterable[tuple[str, str | None, Sequence[str]]]
) -> Path:
    """``Migrator.init`` from the package's template, then the revision files written by hand."""
    async with Migrator(url, None, directory, stdout=None) as migrator:
        await migrator.init()
    versions = directory / "versions"
    versions.mkdir(exist_ok=True)
    for revision, down, body in revisions:
        (versions / f"{revision}_rev.py").write_text(revision_source(revision, down, body))
    return directory


def make_migrations_sync(
    url: str, directory: Path, revisions: Iterable[tuple[str, str | None, Sequence[str]]]
) -> Path:
    return run(make_migrations(url, directory, revisions))


def expected_log(n: int) -> list[tuple[object, ...]]:
    return [(rev_id(i), 1) for i in range(1, n + 1)]


# -- another migrator holding the migration lock ---------------------------------------------------------------


def sqlite_lock_path(url: str) -> Path:
    return Path(f"{sqlite_file_path(make_url(url).database)}.migrate-lock")


def advisory_holders_sql(key: int) -> str:
    """pids holding the PostgreSQL advisory lock ``key`` in the current database."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return (
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
        f"AND classid::bigint = {unsigned >> 32} AND objid::bigint = {unsigned & 0xFFFFFFFF} "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )


class LockHolder:
    """Another session holding the migration lock of ``version_table``, as another migrator would: a
    session advisory lock on PostgreSQL, a named lock on MySQL/MariaDB, the flock beside a SQLite file.

    :attr:`who` is what a description of the holding session says (PostgreSQL: its pid and
    application_name; MySQL: its connection id; SQLite: this pid); :attr:`names` is that and the lock
    itself (MySQL: the lock's name; SQLite: the lock file), as a lock timeout's message says them.
    """

    def __init__(
        self,
        url: str,
        version_table: str = "alembic_version",
        application_name: str = "am-test-holder",
    ) -> None:
        self.url = url
        self.version_table = version_table
        self.application_name = application_name
        self.backend = make_url(url).get_backend_name()
        self.who: list[str] = []
        self.names: list[str] = []
        self.session_id = 0
        self._pg: Any = None
        self._mysql: AsyncConnection | None = None
        self._file: IO[str] | None = None
        self._engine = create_async_engine(url, poolclass=sa.pool.NullPool)

    async def __aenter__(self) -> LockHolder:
        if self.backend == "postgresql":
            import asyncpg

            self._pg = await asyncpg.connect(
                self.url.replace("postgresql+asyncpg://", "postgresql://"),
                server_settings={"application_name": self.application_name},
                timeout=10,
            )
            key = postgres_lock_key(dbname(self.url), "public", self.version_table)
            await self._pg.execute("SELECT pg_advisory_lock($1)", key)
            self.session_id = int(await self._pg.fetchval("SELECT pg_backend_pid()"))
            self.who = [f"pid {self.session_id}", self.application_name]
            self.names = self.who
        elif self.backend in ("mysql", "mariadb"):
            self._mysql = await self._engine.connect()
            name = mysql_lock_name(dbname(self.url), self.version_table)
            self.session_id = int(
                (await self._mysql.execute(sa.text("SELECT CONNECTION_ID()"))).scalar_one()
            )
            got = (await self._mysql.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name})).scalar()
            await self._mysql.commit()
            assert got == 1, f"could not take {name!r}"
            self.who = [f"connection id {self.session_id}"]
            self.names = [*self.who, name]
        else:
            path = sqlite_lock_path(self.url)
            self._file = open(path, "a+")
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.write(f"pid {os.getpid()} on host {socket.gethostname()} since now\n")
            self._file.flush()
            self.session_id = os.getpid()
            self.who = [f"pid {os.getpid()}"]
            self.names = [*self.who, str(path)]
        return self

    async def release(self) -> None:
        if self._pg is not None:
            key = postgres_lock_key(dbname(self.url), "public", self.version_table)
            assert await self._pg.fetchval("SELECT pg_advisory_unlock($1)", key) is True
        elif self._mysql is not None:
            name = mysql_lock_name(dbname(self.url), self.version_table)
            released = (
                await self._mysql.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
            ).scalar()
            await self._mysql.commit()
            assert released == 1
        elif self._file is not None:
            self._file.truncate(0)
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    async def __aexit__(self, *exc_info: object) -> None:
        if self._pg is not None:
            await self._pg.close()
        if self._mysql is not None:
            await self._mysql.close()
        if self._file is not None:
            self._file.close()
        await self._engine.dispose()


async def lock_holder(url: str, version_table: str = "alembic_version") -> int | None:
    """Who holds the migration lock of ``version_table`` now: the PostgreSQL pid, the MySQL connection id,
    (SQLite) some process's pid; None when nobody does."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        key = postgres_lock_key(dbname(url), "public", version_table)
        rows = await run_query(url, advisory_holders_sql(key))
        return int(str(rows[0][0])) if rows else None
    if backend in ("mysql", "mariadb"):
        name = mysql_lock_name(dbname(url), version_table)
        value = (await run_query(url, f"SELECT IS_USED_LOCK('{name}')"))[0][0]
        return None if value is None else int(str(value))
    path = sqlite_lock_path(url)
    if not path.exists():
        return None
    with open(path, "a+") as probe:
        try:
            fcntl.flock(probe.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            probe.seek(0)
            found = probe.read().split()
            return int(found[1]) if len(found) > 1 and found[1].isdigit() else -1
        fcntl.flock(probe.fileno(), fcntl.LOCK_UN)
    return None


async def other_sessions(url: str) -> int:
    """How many other sessions are connected to the database (none on a SQLite file)."""
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
    elif backend in ("mysql", "mariadb"):
        sql = (
            "SELECT count(*) FROM information_schema.PROCESSLIST "
            f"WHERE DB = '{dbname(url)}' AND ID <> CONNECTION_ID()"
        )
    else:
        return 0
    return int(str((await run_query(url, sql))[0][0]))


async def assert_lock_stays_free(url: str, version_table: str = "alembic_version") -> None:
    """Nobody holds the lock, nobody takes it later, nothing was written, no session was left behind."""
    # Give a leaked poller every chance to take the lock it must not take.
    for _ in range(10):
        assert await lock_holder(url, version_table) is None
        await asyncio.sleep(0.2)
    assert await inspect_tables(url) == {}
    for _ in range(20):  # a closed session may take a moment to leave the server's session list
        if (leftover := await other_sessions(url)) == 0:
            break
        await asyncio.sleep(0.1)
    assert leftover == 0


MODELS_V1 = """
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Account(Base):
        __tablename__ = "account"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(sa.String(100))
"""

MODELS_V2 = (
    MODELS_V1
    + """
        email: Mapped[str | None] = mapped_column(sa.String(200))
"""
)

APP = """
    import os

    from quart import Quart
    from sqlalchemy.ext.asyncio import create_async_engine

    from async_migrate import Migrate
    from models import Base

    app = Quart(__name__)
    engine = create_async_engine(os.environ["DATABASE_URL"])
    migrate = Migrate(app, Base, engine=engine)
"""


@dataclass
class Project:
    """A Quart app on disk (``app.py`` + ``models.py``) with a ``quart`` CLI to run against it."""

    path: Path
    url: str

    def write_models(self, source: str) -> None:
        (self.path / "models.py").write_text(textwrap.dedent(source))

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("QUART_", "PYTEST_")) and k != "DATABASE_URL"
        }
        env.update(
            DATABASE_URL=self.url,
            PYTHONPATH=str(self.path),
            PYTHONDONTWRITEBYTECODE="1",
            **extra,
        )
        return env

    def quart(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``quart --app app <args>`` in a subprocess."""
        return subprocess.run(
            [sys.executable, "-m", "quart", "--app", "app", *args],
            cwd=self.path,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
        )

    def db(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``quart db <args>``, asserting success."""
        result = self.quart("db", *args, **env)
        assert result.returncode == 0, (
            f"quart db {' '.join(args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
        return result

    def versions(self) -> list[Path]:
        return sorted((self.path / "migrations" / "versions").glob("*.py"))


@pytest.fixture
def project(tmp_path: Path, db_url: str) -> Project:
    """A fresh project against each database kind."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(APP))
    proj = Project(root, db_url)
    proj.write_models(MODELS_V1)
    return proj


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_json(url: str) -> tuple[int, object]:
    """GET ``url``: the status and the JSON body, also of an error status."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
