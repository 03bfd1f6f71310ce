"""pytest plugin: the test kit's checks (:mod:`async_migrate.testkit`) as tests of your migrations.

Registered through the ``pytest11`` entry point and off unless asked: ``pytest --async-migrate``, or
``async_migrate_tests = true`` in the ini file. The tests appear under ``tests/conftest.py`` (the ini option
``async_migrate_tests_path`` moves them), so that its fixtures reach them, as
``tests/conftest.py::test_stairway`` and so on. They need one fixture, ``async_migrate_config``, returning a
:class:`~async_migrate.migrator.Migrator`, or a mapping with ``url``, ``metadata`` and ``directory`` (and
any other Migrator keyword), for an empty throwaway database::

    @pytest.fixture
    def async_migrate_config(tmp_path):
        return {"url": f"sqlite+aiosqlite:///{tmp_path}/test.db", "metadata": Base.metadata,
                "directory": "migrations"}

Each test starts on the empty database (it refuses one that is not) and leaves it empty. For tests of
data migrations, the ``migration_runner`` fixture: ``await migration_runner.upgrade_to("abc1")``,
``await migration_runner.insert("account", [{...}])``, ``await migration_runner.rows("account")``.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from .migrator import Migrator
from .testkit import CHECKS, SCRIPTS_ONLY, CheckFailed, require_empty, run_check

ENABLE_OPTION = "--async-migrate"
ENABLE_INI = "async_migrate_tests"
PATH_INI = "async_migrate_tests_path"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("async_migrate", "async_migrate's migration tests")
    group.addoption(
        ENABLE_OPTION,
        action="store_true",
        default=False,
        help="Add async_migrate's built-in tests of the migration scripts (single head, upgrade, "
        "models match, up/down, stairway, downgrade leaves no trace, lint)",
    )
    parser.addini(ENABLE_INI, "Add async_migrate's built-in migration tests", type="bool")
    parser.addini(
        PATH_INI,
        "The conftest.py the built-in migration tests appear under (its fixtures reach them)",
        default="tests/conftest.py",
    )


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption(ENABLE_OPTION) or config.getini(ENABLE_INI))


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    config = parent.config
    if not _enabled(config):
        return None
    if file_path.resolve() != (config.rootpath / str(config.getini(PATH_INI))).resolve():
        return None
    return MigrationTests.from_parent(parent, path=file_path)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _enabled(session.config) and not any(
        isinstance(item.parent, MigrationTests) for item in session.items
    ):
        warnings.warn(
            pytest.PytestConfigWarning(
                f"async_migrate's migration tests are on, but {session.config.getini(PATH_INI)} was "
                f"not collected: run pytest on the folder that holds it, or set {PATH_INI} in the ini "
                "file to your conftest.py."
            ),
            stacklevel=1,
        )


class MigrationTests(pytest.File):
    """The built-in tests, one per check, under the conftest.py they take their fixtures from."""

    def collect(self) -> Iterator[pytest.Item]:
        for name in CHECKS:
            yield pytest.Function.from_parent(self, name=f"test_{name}", callobj=_test_of(name))


def _test_of(name: str) -> Any:
    def test(async_migrate_config: Any) -> None:
        asyncio.run(_run_check(name, async_migrate_config))

    test.__name__ = f"test_{name}"
    test.__doc__ = f"async_migrate's {name} check of the migration scripts."
    return test


async def _run_check(name: str, config: Any) -> None:
    migrator = migrator_from(config)
    failed: CheckFailed | None = None
    try:
        if name not in SCRIPTS_ONLY:
            await require_empty(migrator)
        await run_check(name, migrator)
    except CheckFailed as exc:
        failed = exc
    finally:
        await migrator.aclose()
    if failed is not None:  # outside the except block: the report is the message alone
        pytest.fail(f"[{name}] {failed}", pytrace=False)


def migrator_from(config: Any) -> Migrator:
    """The Migrator ``async_migrate_config`` stands for: itself, or one made from a mapping."""
    if isinstance(config, Migrator):
        return config
    if isinstance(config, Mapping) and "url" in config:
        options = {k: v for k, v in config.items() if k not in ("url", "metadata", "directory")}
        options.setdefault("stdout", None)
        return Migrator(
            config["url"], config.get("metadata"), config.get("directory", "migrations"), **options
        )
    raise pytest.UsageError(
        "async_migrate_config must return a Migrator, or a mapping with url, metadata and directory "
        f"(and other Migrator keywords); it returned {config!r}."
    )


@pytest.fixture
def async_migrate_config() -> Any:
    """Override this in your conftest.py: the Migrator (or url, metadata, directory) the migration tests
    run on, for an empty throwaway database."""
    raise pytest.UsageError(
        "async_migrate's migration tests need the async_migrate_config fixture: define it in your "
        "conftest.py, returning a Migrator or {'url': ..., 'metadata': ..., 'directory': ...} for an "
        "empty throwaway database (a SQLite file under tmp_path, or a PostgreSQL database made for "
        "the test session)."
    )


class MigrationRunner:
    """Steps through the history on the test database, with its data: for tests of data migrations.
    Every method is awaited in the test's own event loop, and gives its connections back before it
    returns."""

    def __init__(self, migrator: Migrator) -> None:
        self.migrator = migrator

    async def upgrade_to(self, revision: str = "heads") -> tuple[str, ...]:
        """Upgrade to ``revision``; the revisions applied."""
        try:
            return await self.migrator.upgrade(revision)
        finally:
            await self.migrator.aclose()

    async def downgrade_to(self, revision: str) -> tuple[str, ...]:
        """Downgrade to ``revision``; the revisions undone."""
        try:
            return await self.migrator.downgrade(revision)
        finally:
            await self.migrator.aclose()

    async def current(self) -> tuple[str, ...]:
        try:
            return await self.migrator.current(quiet=True)
        finally:
            await self.migrator.aclose()

    async def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` into ``table`` as the database has it now (its columns read from it)."""
        try:
            async with self.migrator.engine.begin() as connection:
                found = await connection.run_sync(
                    lambda c: sa.Table(table, sa.MetaData(), autoload_with=c)
                )
                if rows:
                    await connection.execute(found.insert(), [dict(row) for row in rows])
        finally:
            await self.migrator.aclose()

    async def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table``, as dicts, in primary key order."""
        try:
            async with self.migrator.engine.connect() as connection:
                found = await connection.run_sync(
                    lambda c: sa.Table(table, sa.MetaData(), autoload_with=c)
                )
                order = list(found.primary_key.columns) or list(found.columns)
                result = await connection.execute(sa.select(found).order_by(*order))
                return [dict(row._mapping) for row in result]
        finally:
            await self.migrator.aclose()


@pytest.fixture
def migration_runner(async_migrate_config: Any) -> MigrationRunner:
    """A :class:`MigrationRunner` on the database of ``async_migrate_config``."""
    return MigrationRunner(migrator_from(async_migrate_config))
