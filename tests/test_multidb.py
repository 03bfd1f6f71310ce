"""Several databases, one history: each database has its own version table and its own lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
import sqlalchemy as sa
from quart import Quart
from quart.testing import app as quart_testing_app
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import LockTimeoutError, Migrate, Migrator
from async_migrate.locks import postgres_lock_key

from conftest import inspect_tables, run_query

pytestmark = pytest.mark.anyio


def main_models(with_title: bool = False) -> sa.MetaData:
    metadata = sa.MetaData()
    columns = [sa.Column("id", sa.Integer, primary_key=True)]
    if with_title:
        columns.append(sa.Column("title", sa.String(50)))
    sa.Table("post", metadata, *columns)
    return metadata


def user_models(with_email: bool = False) -> sa.MetaData:
    metadata = sa.MetaData()
    columns = [sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50))]
    if with_email:
        columns.append(sa.Column("email", sa.String(100)))
    sa.Table("app_user", metadata, *columns)
    return metadata


async def test_workflow_across_two_databases(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    migrator = Migrator(
        sqlite_url, main_models(), directory, stdout=None, binds={"users": (pg_url, user_models())}
    )
    async with migrator:
        await migrator.init()
        assert (directory / "env.py").read_text().count("engine_name=name") == 2  # the multidb env
        first = await migrator.migrate("first")
        assert first is not None
        text = Path(first.path).read_text()
        upgrade_main = text.split("def upgrade_() -> None:")[1].split("def downgrade_()")[0]
        upgrade_users = text.split("def upgrade_users() -> None:")[1].split("def downgrade_users")[0]
        assert "create_table('post'" in upgrade_main and "app_user" not in upgrade_main
        assert "create_table('app_user'" in upgrade_users and "post" not in upgrade_users

        assert await migrator.upgrade() == (first.revision, first.revision)  # once per database
        assert await migrator.current_by_bind() == {"": (first.revision,), "users": (first.revision,)}
        ledgers = ["alembic_version", "alembic_version_log"]
        assert sorted(await inspect_tables(sqlite_url)) == [*ledgers, "post"]
        assert sorted(await inspect_tables(pg_url)) == [*ledgers, "app_user"]
        # A ledger per database, each with its own row for the revision.
        logs = await migrator.log_by_bind()
        assert {name: [e.revision for e in rows] for name, rows in logs.items()} == {
            "": [first.revision], "users": [first.revision],
        }  # fmt: skip
        assert await migrator.verify() == []
        await migrator.check()
        assert await migrator.migrate("nothing") is None
        assert (await migrator.status()).at_head

        migrator.binds["users"] = (migrator.binds["users"][0], user_models(with_email=True))
        second = await migrator.migrate("email")
        assert second is not None
        text = Path(second.path).read_text()
        assert "add_column(sa.Column('email'" in text.split("def upgrade_users")[1]
        upgrade_main = text.split("def upgrade_() -> None:")[1].split("def downgrade_()")[0]
        assert "op." not in upgrade_main and "pass" in upgrade_main
        assert await migrator.upgrade() == (second.revision, second.revision)  # each version table
    assert "email" in (await inspect_tables(pg_url))["app_user"]
    assert await run_query(sqlite_url, "SELECT version_num FROM alembic_version") == [
        (second.revision,)
    ]


async def test_each_database_has_its_own_lock(sqlite_url: str, pg_url: str, tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    async with Migrator(
        sqlite_url, main_models(), directory, stdout=None, binds={"users": (pg_url, user_models())}
    ) as migrator:
        await migrator.init()
        first = await migrator.migrate("first")
        assert first is not None
        holder = await asyncpg.connect(
            pg_url.replace("+asyncpg", ""), server_settings={"application_name": "users-holder"}
        )
        try:
            key = postgres_lock_key(pg_url.rsplit("/", 1)[1], "public", "alembic_version")
            await holder.execute("SELECT pg_advisory_lock($1)", key)
            migrator.lock_timeout = 1
            with pytest.raises(LockTimeoutError, match="users-holder"):
                await migrator.upgrade()
        finally:
            await holder.close()
        # The main database, behind its own (file) lock, was upgraded; users was not touched.
        assert await migrator.current_by_bind() == {"": (first.revision,), "users": ()}
        assert await migrator.upgrade() == (first.revision,)


def test_quart_multidb_cli_and_startup(tmp_path: Path) -> None:
    main_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    users_url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    app = Quart(__name__)
    main_engine = create_async_engine(main_url)
    Migrate(
        app,
        main_models(),
        directory=tmp_path / "migrations",
        engine=main_engine,
        binds={"users": (users_url, user_models())},
    )
    runner = app.test_cli_runner()
    for args in (["init", "--multidb"], ["migrate", "-m", "first"]):
        result = runner.invoke(args=["db", *args])
        assert result.exit_code == 0, result.output

    started = Quart(__name__)
    Migrate(
        started,
        main_models(),
        directory=tmp_path / "migrations",
        engine=main_engine,
        binds={"users": (users_url, user_models())},
        auto_upgrade=True,
    )

    async def boot() -> None:
        async with quart_testing_app.TestApp(started, startup_timeout=60):
            pass
        await main_engine.dispose()

    asyncio.run(boot())
    assert "post" in asyncio.run(inspect_tables(main_url))
    assert "app_user" in asyncio.run(inspect_tables(users_url))
    result = runner.invoke(args=["db", "current"])
    assert result.exit_code == 0, result.output
    assert "Database users:" in result.output and result.output.count("(head)") == 2
    result = runner.invoke(args=["db", "doctor"])
    assert result.exit_code == 0, result.output


def test_bind_url_from_sqlalchemy_binds(tmp_path: Path) -> None:
    """A bind given as a db alone takes its URL from SQLALCHEMY_BINDS, as Flask-SQLAlchemy apps have it."""
    main_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    users_url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    app = Quart(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=main_url, SQLALCHEMY_BINDS={"users": users_url})
    Migrate(app, main_models(), directory=tmp_path / "migrations", binds={"users": user_models()})
    runner = app.test_cli_runner()
    for args in (["init", "--multidb"], ["migrate", "-m", "first"], ["upgrade"]):
        result = runner.invoke(args=["db", *args])
        assert result.exit_code == 0, result.output
    assert "app_user" in asyncio.run(inspect_tables(users_url))
    assert "post" in asyncio.run(inspect_tables(main_url))

    broken = Quart(__name__)
    broken.config["SQLALCHEMY_DATABASE_URI"] = main_url
    Migrate(broken, main_models(), directory=tmp_path / "migrations", binds={"users": user_models()})
    result = broken.test_cli_runner().invoke(args=["db", "current"])
    assert result.exit_code == 1
    assert "SQLALCHEMY_BINDS['users']" in result.output
