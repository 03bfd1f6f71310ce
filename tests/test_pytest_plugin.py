"""The pytest plugin, run by pytest's own ``pytester`` (in process) on a project with migrations: a good history passes
every built-in test; each hidden fault fails the right test, naming the right revision."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

# Imported here, once: pytester drops the modules a test imported when it ends, and SQLAlchemy's (and
# asyncpg's compiled ones) do not survive being imported a second time in one process.
import asyncpg  # noqa: F401
import pytest
import sqlalchemy.dialects.postgresql.asyncpg
import sqlalchemy.dialects.sqlite.aiosqlite  # noqa: F401

pytest_plugins = ["pytester"]

MODELS = '''
import sqlalchemy as sa

metadata = sa.MetaData()
account = sa.Table(
    "account", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False, index=True),
    sa.Column("email", sa.String(100)),
    sa.Column("status", sa.Enum("active", "closed", name="account_status")),
    {extra}
)
'''

SCRIPT = '''"""{rev}

Revision ID: {rev}
Revises: {down}
"""
from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None

STATUS = sa.Enum("active", "closed", name="account_status")


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''

GOOD = {
    "r1": (
        None,
        ['op.create_table("account", sa.Column("id", sa.Integer, primary_key=True), '
         'sa.Column("name", sa.String(50), nullable=False))',
         'op.create_index("ix_account_name", "account", ["name"])'],
        ['op.drop_index("ix_account_name", "account")', 'op.drop_table("account")'],
    ),
    "r2": (
        "r1",
        ['op.add_column("account", sa.Column("email", sa.String(100)))'],
        ['with op.batch_alter_table("account") as batch:', '    batch.drop_column("email")'],
    ),
    "r3": (
        "r2",
        ["STATUS.create(op.get_bind(), checkfirst=True)",
         'op.add_column("account", sa.Column("status", STATUS))',
         'op.execute("UPDATE account SET status = \'active\'")'],
        ['with op.batch_alter_table("account") as batch:', '    batch.drop_column("status")',
         "STATUS.drop(op.get_bind(), checkfirst=True)"],
    ),
}  # fmt: skip

CONFTEST = '''
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
import models


@pytest.fixture
def async_migrate_config(tmp_path):
    url = os.environ.get("PLUGIN_TEST_URL") or f"sqlite+aiosqlite:///{tmp_path}/test.db"
    return {"url": url, "metadata": models.metadata, "directory": os.environ["PLUGIN_TEST_MIGRATIONS"]}
'''


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrations folder from the package's template, made once (before any pytester snapshot)."""
    from conftest import make_migrations_sync

    folder = tmp_path_factory.mktemp("template") / "migrations"
    make_migrations_sync(f"sqlite+aiosqlite:///{folder.parent}/unused.db", folder, [])
    return folder


def project(
    pytester: pytest.Pytester,
    scripts: dict[str, tuple[str | None, list[str], list[str]]],
    extra_model: str = "",
) -> Path:
    """A project: models.py, migrations/ (the package's template and the given scripts), tests/."""
    root = pytester.path
    (root / "models.py").write_text(textwrap.dedent(MODELS).format(extra=extra_model))
    migrations = root / "migrations"
    shutil.copytree(pytester._request.getfixturevalue("template"), migrations)
    for rev, (down, up, back) in scripts.items():
        (migrations / "versions" / f"{rev}_step.py").write_text(
            SCRIPT.format(
                rev=rev, down=down, upgrade="\n".join("    " + line for line in up),
                downgrade="\n".join("    " + line for line in back),
            )
        )
    (root / "tests").mkdir()
    (root / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    pytester.makeini("[pytest]\n")
    os.environ["PLUGIN_TEST_MIGRATIONS"] = str(migrations)
    return migrations


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("PLUGIN_TEST_URL", raising=False)
    monkeypatch.setenv("PLUGIN_TEST_MIGRATIONS", "")
    if request.param == "postgresql":
        url = str(request.getfixturevalue("pg_url"))
        monkeypatch.setenv("PLUGIN_TEST_URL", url)
        return url
    return "sqlite"


def run_tests(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest("--async-migrate", "-p", "no:cacheprovider", "-q", "tests")


def outcome_of(result: pytest.RunResult) -> dict[str, str]:
    """Each built-in test's outcome, by check name."""
    found = {}
    for line in result.stdout.lines:
        for word in ("PASSED", "FAILED"):
            if line.startswith(word) or line.endswith(word):
                for part in line.split():
                    if "::test_" in part:
                        found[part.split("::test_")[1]] = word
    return found


def failures(result: pytest.RunResult) -> dict[str, str]:
    """The failure message of each failed built-in test, by check name: the ``[name] ...`` line of its
    report, for each test the short summary lists as failed."""
    failed = {
        line.split("::test_", 1)[1].split(" ", 1)[0]
        for line in result.stdout.lines
        if line.startswith("FAILED tests/conftest.py::test_")
    }
    found = {}
    for line in result.stdout.lines:
        for name in failed:
            if line.startswith(f"[{name}] "):
                found[name] = line[len(name) + 3 :]
    assert set(found) == failed, result.stdout.str()
    return found


def test_a_good_history_passes_every_built_in_test(
    pytester: pytest.Pytester, database: str
) -> None:
    project(pytester, GOOD)
    result = run_tests(pytester)
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=7)


def test_the_plugin_is_off_unless_asked(pytester: pytest.Pytester) -> None:
    project(pytester, GOOD)
    result = pytester.runpytest("-p", "no:cacheprovider", "-q", "tests")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()


def fails_exactly(result: pytest.RunResult, expected: dict[str, str]) -> None:
    found = failures(result)
    assert set(found) == set(expected), result.stdout.str()
    for name, phrase in expected.items():
        assert phrase in found[name], (name, found[name])


def test_a_downgrade_that_forgets_a_column(pytester: pytest.Pytester, database: str) -> None:
    faulty = {**GOOD, "r2": (GOOD["r2"][0], GOOD["r2"][1], ["pass"])}
    project(pytester, faulty)
    result = run_tests(pytester)
    fails_exactly(
        result,
        {
            "downgrade_leaves_no_trace": "The downgrade of revision r2 does not undo its upgrade",
            "stairway": "The upgrade after its downgrade of revision r2 failed",
        },
    )
    assert "email" in failures(result)["downgrade_leaves_no_trace"]


def test_a_downgrade_that_drops_a_table_its_upgrade_did_not_create(
    pytester: pytest.Pytester, database: str
) -> None:
    down = [*GOOD["r2"][2], 'op.drop_index("ix_account_name", "account")', 'op.drop_table("account")']
    project(pytester, {**GOOD, "r2": (GOOD["r2"][0], GOOD["r2"][1], down)})
    result = run_tests(pytester)
    fails_exactly(
        result,
        {
            "downgrade_leaves_no_trace": "revision r2 does not undo its upgrade: ",
            "stairway": "revision r2 failed",
            "up_down_consistency": "Revision r1 failed",
        },
    )
    assert "table account is gone" in failures(result)["downgrade_leaves_no_trace"]


def test_a_model_column_missing_from_the_scripts(pytester: pytest.Pytester) -> None:
    project(pytester, GOOD, extra_model='sa.Column("phone", sa.String(20)),')
    result = run_tests(pytester)
    fails_exactly(result, {"model_matches_ddl": "phone"})


def test_two_heads(pytester: pytest.Pytester) -> None:
    branch = {"r2b": ("r1", ["pass"], ["pass"])}
    project(pytester, {**GOOD, **branch})
    result = run_tests(pytester)
    found = failures(result)
    assert "single_head" in found, result.stdout.str()
    assert "2 heads (" in found["single_head"] and "r2b" in found["single_head"]
    assert "quart db merge" in found["single_head"]


def test_an_enum_type_left_behind(pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_TEST_URL", pg_url)
    up, down = GOOD["r3"][1], GOOD["r3"][2][:2]  # the column dropped, the type forgotten
    project(pytester, {**GOOD, "r3": ("r2", up, down)})
    result = run_tests(pytester)
    fails_exactly(
        result,
        {"downgrade_leaves_no_trace": "revision r3 does not undo its upgrade: enum type account_status is left behind"},
    )


def test_a_database_that_is_not_empty_is_refused(
    pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import execute, run

    run(execute(pg_url, "CREATE TABLE precious (id integer)"))
    monkeypatch.setenv("PLUGIN_TEST_URL", pg_url)
    project(pytester, GOOD)
    result = run_tests(pytester)
    assert "need an empty, throwaway database" in result.stdout.str()
    assert "table precious" in result.stdout.str()
    from conftest import query

    assert query(pg_url, "SELECT count(*) FROM precious") == [(0,)]


def test_data_migration_helpers(pytester: pytest.Pytester, database: str) -> None:
    project(pytester, GOOD)
    (pytester.path / "tests" / "test_data.py").write_text(
        textwrap.dedent(
            """
            import asyncio


            def test_status_is_filled_in(migration_runner):
                async def go():
                    await migration_runner.upgrade_to("r2")
                    await migration_runner.insert("account", [{"id": 1, "name": "ann"}])
                    await migration_runner.upgrade_to("r3")
                    assert await migration_runner.rows("account") == [
                        {"id": 1, "name": "ann", "email": None, "status": "active"}
                    ]
                    assert await migration_runner.downgrade_to("r1") == ("r3", "r2")
                    assert await migration_runner.current() == ("r1",)

                asyncio.run(go())
            """
        )
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "-q", "tests/test_data.py")
    assert result.ret == 0, result.stdout.str()
    result.assert_outcomes(passed=1)


def test_an_unreviewed_warning(pytester: pytest.Pytester) -> None:
    up = ["# WARNING: the review flagged this operation", *GOOD["r3"][1]]
    project(pytester, {**GOOD, "r3": ("r2", up, GOOD["r3"][2])})
    result = run_tests(pytester)
    fails_exactly(result, {"lint_clean": "r3_step.py: the review flagged this operation"})
