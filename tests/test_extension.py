"""The Quart extension: every accepted kind of ``db`` and engine, the factory pattern, configure callbacks,
module-level functions, the CLI wiring in-process, and the readiness endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from quart import Quart
from quart.testing import app as quart_testing_app
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import async_migrate
from async_migrate import ConfigurationError, Migrate, Migrator

from conftest import inspect_tables, query, run_query


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "widget"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(50))


class Database:
    """An object with .metadata and .engine, as apps often have."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.metadata = Base.metadata
        self.engine = engine


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A migrations folder with one revision creating ``widget``, made through the API."""
    import asyncio

    directory = tmp_path / "migrations"

    async def make() -> None:
        scratch = f"sqlite+aiosqlite:///{tmp_path / 'scratch.db'}"
        async with Migrator(scratch, Base.metadata, directory, stdout=None) as migrator:
            await migrator.init()
            await migrator.migrate("widgets", rev_id="w1")

    asyncio.run(make())
    return directory


def _db_and_engine(kind: str, url: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(db, Migrate kwargs, app config) for each way of telling Migrate about the database."""
    engine = create_async_engine(url)
    if kind == "metadata+engine":
        return Base.metadata, {"engine": engine}, {}
    if kind == "base+sessionmaker":
        return Base, {"engine": async_sessionmaker(engine)}, {}
    if kind == "base+callable":
        return Base, {"engine": lambda: engine}, {}
    if kind == "db-object":
        return Database(engine), {}, {}
    if kind == "config-uri":
        return Base.metadata, {}, {"SQLALCHEMY_DATABASE_URI": url}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["metadata+engine", "base+sessionmaker", "base+callable", "db-object", "config-uri"]
)
def test_every_kind_of_db_and_engine(kind: str, db_url: str, migrations: Path) -> None:
    db, kwargs, config = _db_and_engine(kind, db_url)
    app = Quart(__name__)
    app.config.update(config)
    Migrate(app, db, directory=migrations, **kwargs)
    runner = app.test_cli_runner()

    result = runner.invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "widget" in _tables(db_url)
    result = runner.invoke(args=["db", "current"])
    assert result.output.strip() == "w1 (head)"
    result = runner.invoke(args=["db", "check"])
    assert result.exit_code == 0, result.output


def _tables(url: str) -> dict[str, list[str]]:
    from conftest import tables

    return tables(url)


def test_unknown_db_object_is_refused() -> None:
    app = Quart(__name__)
    with pytest.raises(ConfigurationError, match="MetaData"):
        Migrate(app, object(), engine=create_async_engine("sqlite+aiosqlite://"))


def test_missing_database_says_how_to_give_one(migrations: Path) -> None:
    app = Quart(__name__)
    Migrate(app, Base, directory=migrations)
    result = app.test_cli_runner().invoke(args=["db", "current"])
    assert result.exit_code == 1
    assert "SQLALCHEMY_DATABASE_URI" in result.output


def test_factory_pattern_and_configure_callback(sqlite_url: str, migrations: Path) -> None:
    migrate = Migrate(directory=migrations, command="database")
    seen: list[str] = []

    @migrate.configure
    def use_custom_version_table(config: Any) -> Any:
        settings = config.attributes["async_migrate"]
        settings["configure_kwargs"]["version_table"] = "custom_version"
        seen.append(config.get_main_option("script_location"))
        return config

    def create_app() -> Quart:
        app = Quart(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = sqlite_url
        migrate.init_app(app, Base)
        return app

    app = create_app()
    assert app.extensions["migrate"].migrate is migrate
    result = app.test_cli_runner().invoke(args=["database", "upgrade"])
    assert result.exit_code == 0, result.output
    assert seen and seen[0] == str(migrations)
    assert query(sqlite_url, "SELECT version_num FROM custom_version") == [("w1",)]


@pytest.mark.anyio
async def test_module_level_functions_use_the_current_app(sqlite_url: str, migrations: Path) -> None:
    app = Quart(__name__)
    engine = create_async_engine(sqlite_url)
    Migrate(app, Base, directory=migrations, engine=engine)
    async with app.app_context():
        assert await async_migrate.upgrade() == ("w1",)
        assert await async_migrate.current() == ("w1",)
        assert await async_migrate.heads() == ("w1",)
        await async_migrate.check()
        assert await async_migrate.downgrade() == ("w1",)
        assert await async_migrate.current() == ()
    await engine.dispose()
    assert "widget" not in await inspect_tables(sqlite_url)


@pytest.mark.anyio
async def test_healthz_reports_readiness(sqlite_url: str, migrations: Path) -> None:
    app = Quart(__name__)
    engine = create_async_engine(sqlite_url)
    Migrate(app, Base, directory=migrations, engine=engine, healthz=True)
    client = app.test_client()

    response = await client.get("/healthz")
    assert response.status_code == 503
    body = await response.get_json()
    assert body["status"] == "behind" and body["revision"] == [] and body["heads"] == ["w1"]

    async with app.app_context():
        await async_migrate.upgrade()
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert (await response.get_json())["revision"] == ["w1"]
    await engine.dispose()


@pytest.mark.anyio
async def test_auto_upgrade_before_serving(db_url: str, migrations: Path) -> None:
    app = Quart(__name__)
    engine = create_async_engine(db_url)
    Migrate(app, Base, directory=migrations, engine=engine, auto_upgrade=True)

    @app.get("/count")
    async def count() -> dict[str, int]:
        async with engine.connect() as conn:
            return {"n": (await conn.execute(sa.text("SELECT count(*) FROM widget"))).scalar_one()}

    async with quart_testing_app.TestApp(app, startup_timeout=60):
        response = await app.test_client().get("/count")
        assert (await response.get_json()) == {"n": 0}
    assert await run_query(db_url, "SELECT version_num FROM alembic_version") == [("w1",)]
    await engine.dispose()


def test_auto_upgrade_from_app_config(sqlite_url: str, migrations: Path) -> None:
    app = Quart(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=sqlite_url, MIGRATE_AUTO_UPGRADE=True)
    Migrate(app, Base, directory=migrations)
    assert app.before_serving_funcs
    assert app.extensions["migrate"].settings["MIGRATE_AUTO_UPGRADE"] is True


def test_module_level_init_multidb_is_the_cli_init(tmp_path: Path, sqlite_url: str) -> None:
    """``await async_migrate.init(multidb=True)`` writes the same environment as ``quart db init
    --multidb``: the async-multidb template."""
    import asyncio

    from async_migrate.alembic_bridge import TEMPLATES_DIRECTORY

    def app_with(directory: Path) -> Quart:
        app = Quart(__name__)
        app.config["SQLALCHEMY_DATABASE_URI"] = sqlite_url
        Migrate(app, Base, directory=directory)
        return app

    api_app = app_with(tmp_path / "api")

    async def init_through_the_api() -> None:
        async with api_app.app_context():
            await async_migrate.init(multidb=True)

    asyncio.run(init_through_the_api())
    result = app_with(tmp_path / "cli").test_cli_runner().invoke(args=["db", "init", "--multidb"])
    assert result.exit_code == 0, result.output
    template = TEMPLATES_DIRECTORY / "async-multidb"
    for folder in ("api", "cli"):
        assert (tmp_path / folder / "env.py").read_text() == (template / "env.py").read_text()
        assert (tmp_path / folder / "script.py.mako").read_text() == (
            template / "script.py.mako"
        ).read_text()
        assert (tmp_path / folder / "versions").is_dir()


@pytest.mark.anyio
async def test_ledger_settings_and_an_edited_script_at_startup(
    sqlite_url: str, migrations: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Migrate(ledger=False) is a setting, not a context.configure() option.
    off = Quart(__name__)
    off.config["SQLALCHEMY_DATABASE_URI"] = sqlite_url
    Migrate(off, Base, directory=migrations, ledger=False)
    assert off.extensions["migrate"].migrator(off).ledger is False
    # w1 applied, then its code edited, then a second revision: the startup upgrade warns and goes on.
    async with Migrator(sqlite_url, Base.metadata, migrations, stdout=None) as migrator:
        await migrator.upgrade()
    script = next((migrations / "versions").glob("w1_*.py"))
    script.write_text(script.read_text() + "\nEDITED = True\n")
    (migrations / "versions" / "w2_more.py").write_text(
        '"""more"""\nrevision = "w2"\ndown_revision = "w1"\n\n\ndef upgrade():\n    pass\n\n\n'
        "def downgrade():\n    pass\n"
    )
    refusing = Quart(__name__)
    refusing.config.update(
        SQLALCHEMY_DATABASE_URI=sqlite_url, MIGRATE_AUTO_UPGRADE=True,
        MIGRATE_STARTUP_REFUSE_EDITED=True,
    )  # fmt: skip
    Migrate(refusing, Base, directory=migrations)
    with pytest.raises(quart_testing_app.LifespanError, match=r"Not upgrading: .* ran: w1"):
        async with quart_testing_app.TestApp(refusing, startup_timeout=60):
            pass
    assert await run_query(sqlite_url, "SELECT version_num FROM alembic_version") == [("w1",)]
    warning = Quart(__name__)
    warning.config.update(SQLALCHEMY_DATABASE_URI=sqlite_url, MIGRATE_AUTO_UPGRADE=True)
    Migrate(warning, Base, directory=migrations)
    with caplog.at_level("WARNING", "async_migrate"):
        async with quart_testing_app.TestApp(warning, startup_timeout=60):
            pass
    assert "were edited after they ran: w1" in caplog.text
    assert await run_query(sqlite_url, "SELECT version_num FROM alembic_version") == [("w2",)]
