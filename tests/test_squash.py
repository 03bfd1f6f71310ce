"""Squash: a 300-revision history (renames, indexes, an enum, check constraints, data migrations) into one
baseline; fresh databases, databases in the middle of the old history, and databases at head."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from async_migrate import CommandError, ConfigurationError, Migrator, UnknownRevisionError
from async_migrate.schema_snapshot import rows_of, schema_difference, schema_of

from conftest import dbname, make_migrations, pg_admin, unavailable

pytestmark = pytest.mark.anyio

REVISIONS = 300


def rev(i: int) -> str:
    return f"s{i:03d}"


def step(i: int) -> tuple[list[str], list[str]]:
    """Revision number i's upgrade and downgrade: a cycle of five kinds of change over five tables."""
    t = f"t{i - i % 5:03d}"
    kind = i % 5
    if kind == 0:
        enum = ', sa.Column("status", sa.Enum("new", "done", name="status_enum"))' if i == 0 else ""
        return (
            [f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), '
             f'sa.Column("name", sa.String(40), nullable=False), '
             f'sa.Column("qty", sa.Integer, nullable=False, server_default="0"){enum}, '
             f'sa.CheckConstraint("qty >= 0", name="ck_{t}_qty"))',
             f'op.create_index("ix_{t}_name", "{t}", ["name"])'],
            [f'op.drop_index("ix_{t}_name", "{t}")', f'op.drop_table("{t}")',
             *(['sa.Enum(name="status_enum").drop(op.get_bind(), checkfirst=True)'] if i == 0 else [])],
        )  # fmt: skip
    if kind == 1:
        return (
            [f'op.add_column("{t}", sa.Column("note", sa.String(80)))'],
            [f'with op.batch_alter_table("{t}") as b:', '    b.drop_column("note")'],
        )
    if kind == 2:  # a rename
        return (
            [f'with op.batch_alter_table("{t}") as b:',
             '    b.alter_column("note", new_column_name="remark", existing_type=sa.String(80))'],
            [f'with op.batch_alter_table("{t}") as b:',
             '    b.alter_column("remark", new_column_name="note", existing_type=sa.String(80))'],
        )  # fmt: skip
    if kind == 3:
        return (
            [f'op.create_index("ix_{t}_remark", "{t}", ["remark"], unique=False)'],
            [f'op.drop_index("ix_{t}_remark", "{t}")'],
        )
    return (  # a data migration
        [f"op.execute(\"INSERT INTO {t} (id, name, qty, remark) VALUES ({i}, 'seed {i}', 1, 'r')\")"],
        [f'op.execute("DELETE FROM {t} WHERE id = {i}")'],
    )


SCRIPT = '''"""step {i}"""
from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{up}


def downgrade() -> None:
{down_body}
'''


async def history(url: str, directory: Path, size: int = REVISIONS) -> Path:
    migrations = await make_migrations(url, directory, [])
    for i in range(size):
        up, down = step(i)
        (migrations / "versions" / f"{rev(i)}_step.py").write_text(
            SCRIPT.format(
                i=i, rev=rev(i), down=rev(i - 1) if i else None,
                up="\n".join("    " + line for line in up),
                down_body="\n".join("    " + line for line in down),
            )
        )
    return migrations


def pg_schema(url: str) -> list[str]:
    """``pg_dump -s`` of a database, without its comments, settings and the tool's own tables."""
    if shutil.which("pg_dump") is None:
        unavailable("pg_dump is not on PATH (apt-get install postgresql-client)")
    dump = subprocess.run(
        ["pg_dump", "-s", url.replace("+asyncpg", "")], capture_output=True, text=True, check=True
    ).stdout
    return [
        line
        for line in dump.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "\\restrict", "\\unrestrict"))
        and "set_config" not in line
        and "alembic_version" not in line
    ]


async def state(url: str, directory: Path) -> dict[str, object]:
    async with Migrator(url, None, directory, stdout=None) as migrator:
        return {**await schema_of(migrator), **await rows_of(migrator)}


def another(db_url: str, tmp_path: Path, label: str) -> Iterator[str]:
    """Another empty database of the same kind."""
    if db_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{tmp_path / label}.db"
        return
    name = f"{dbname(db_url)}_{label}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield db_url.rsplit("/", 1)[0] + "/" + name
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def second_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    yield from another(db_url, tmp_path, "second")


@pytest.fixture
def middle_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    yield from another(db_url, tmp_path, "middle")


async def test_squash_keeps_every_database_working(
    tmp_path: Path, db_url: str, second_url: str, middle_url: str
) -> None:
    migrations = await history(db_url, tmp_path / "migrations")
    # The reference: the whole old chain on a fresh database; and a database left in the middle of it.
    async with Migrator(second_url, None, migrations, stdout=None) as old:
        await old.upgrade()
    reference = await state(second_url, migrations)
    assert "enum type status_enum" in reference or db_url.startswith("sqlite")
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        with pytest.raises(CommandError, match=r"s004 \(op.execute\).*--keep-data.*--drop-data"):
            await migrator.squash(message="baseline")
        baseline = await migrator.squash(message="baseline", keep_data=True)
        assert baseline.name == "s299_baseline.py"
        archived = sorted((migrations / "versions" / "squashed" / "s299").glob("*.py"))
        assert len(archived) == REVISIONS and not list((migrations / "versions").glob("s0*_step.py"))
        # A fresh database: one revision, the same schema and seed rows as the 300.
        assert await migrator.upgrade() == ("s299",)
        assert schema_difference(reference, await state(db_url, migrations)) == []
        if not db_url.startswith("sqlite"):
            assert pg_schema(db_url) == pg_schema(second_url)  # pg_dump -s, to the letter
        assert await migrator.squash_check() == []
        assert await migrator.downgrade("base") == ("s299",)
        assert await schema_of(migrator) == {}
    # A database at head before the squash is untouched by it: nothing to do.
    async with Migrator(second_url, None, migrations, stdout=None) as at_head:
        assert await at_head.upgrade() == ()
    await middle(tmp_path, migrations, middle_url, reference)


async def middle(tmp_path: Path, migrations: Path, url: str, reference: dict[str, object]) -> None:
    """A database in the middle of the squashed history: refused with the way out, which works."""
    archive = migrations / "versions" / "squashed" / "s299"
    async with Migrator(url, None, migrations, stdout=None) as migrator:
        migrator.configure_callbacks.append(
            lambda config: (config.set_main_option("version_locations", str(archive)), config)[1]
        )
        assert len(await migrator.upgrade("s149")) == 150
    async with Migrator(url, None, migrations, stdout=None) as migrator:
        with pytest.raises(UnknownRevisionError, match=r"s149, which a squash replaced.*--through-squashed"):
            await migrator.upgrade()
        applied = await migrator.upgrade(through_squashed=True)
        # The archived scripts took it from s149 to s299, where the baseline is: nothing more to do.
        assert applied == tuple(rev(i) for i in range(150, 300))
        assert await migrator.current(quiet=True) == ("s299",)
    assert schema_difference(reference, await state(url, migrations)) == []


async def test_squash_check_finds_a_baseline_that_differs(tmp_path: Path, sqlite_url: str) -> None:
    migrations = await history(sqlite_url, tmp_path / "migrations", size=10)
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        baseline = await migrator.squash(to="s007", message="base", drop_data=True)
        assert sorted(p.name for p in (migrations / "versions").glob("*.py")) == [
            "s007_base.py", "s008_step.py", "s009_step.py",
        ]  # fmt: skip
        assert await migrator.squash_check() == []
        baseline.write_text(baseline.read_text().replace("length=80", "length=81", 1))
        differences = await migrator.squash_check()
        assert differences and differences[0].startswith("s007: table t000 differs") and "VARCHAR(81)" in differences[0], differences
        assert await migrator.upgrade() == ("s007", "s008", "s009")


def test_squash_on_the_command_line(tmp_path: Path) -> None:
    import asyncio
    import os
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    migrations = asyncio.run(history(url, tmp_path / "migrations", size=12))
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "async_migrate", "--url", url, "-d", str(migrations), *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    assert cli("upgrade", "s006").returncode == 0
    refused = cli("squash", "--to", "s009")
    assert refused.returncode == 1 and "--keep-data" in refused.stderr, refused
    done = cli("squash", "--to", "s009", "--keep-data", "-m", "first years")
    assert done.returncode == 0 and "s009_first_years.py" in done.stdout, done
    checked = cli("squash", "--check")
    assert checked.returncode == 0 and "Every baseline creates" in checked.stdout, checked
    stuck = cli("upgrade")
    assert stuck.returncode == 1 and "--through-squashed" in stuck.stderr, stuck
    through = cli("upgrade", "--through-squashed")
    assert through.returncode == 0, through
    assert cli("current").stdout.startswith("s011 (head)")


async def test_squash_refuses_a_multi_database_project(tmp_path: Path) -> None:
    main = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    users = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    migrator = Migrator(main, None, tmp_path / "m", stdout=None, binds={"users": (users, None)})
    async with migrator:
        await migrator.init()
        with pytest.raises(ConfigurationError, match="single-database project"):
            await migrator.squash()
