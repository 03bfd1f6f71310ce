"""Shared fixtures: real SQLite files and a real PostgreSQL database per test, and small Quart projects
on disk for CLI tests run as subprocesses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

PG_SERVER = os.environ.get("ASYNC_MIGRATE_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_pg_admin(*statements))
        return
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _pg_admin(*statements)).result()


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
        message = f"PostgreSQL at {PG_SERVER} is unreachable ({_pg_problem})"
        if IN_CI:
            pytest.fail(message + "; CI=true never skips database tests", pytrace=False)
        pytest.skip(message)


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


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A real empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    return str(request.getfixturevalue("pg_url"))


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
    return asyncio.run(run_query(url, sql))


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
