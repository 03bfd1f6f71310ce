"""Safe autogenerate, end to end: base models -> upgrade -> changed models -> migrate -> the script and the
warnings; accepted renames keep the rows on upgrade and give the old name back on downgrade."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.operations import ops

from async_migrate import MigrationFailedError, Migrator, UnreviewedWarningsError
from async_migrate.review import _RULES, RenameCandidate, lint_rule

from conftest import Project, inspect_tables, query, run_query

pytestmark = pytest.mark.anyio

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

Models = Callable[[sa.MetaData], None]


def account(metadata: sa.MetaData, *extra: sa.Column, name: str = "account") -> sa.Table:  # type: ignore[type-arg]
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        *extra,
    )


def base(metadata: sa.MetaData) -> None:
    account(metadata)


@dataclass
class Case:
    changed: Models
    script_has: list[str] = field(default_factory=list)
    script_lacks: list[str] = field(default_factory=list)
    warns: list[str] = field(default_factory=list)  # each a substring of some warning
    quiet: bool = False  # no warning at all
    renames: str = "no"
    base: Models = base
    dialects: tuple[str, ...] = ("sqlite", "postgresql")
    naming: bool = True
    #: Where the generated script must fail as it is (the trap the warning is about).
    fails_on: tuple[str, ...] = ()


CASES: dict[str, Case] = {
    "rename column accepted": Case(
        lambda m: account_renamed_column(m),
        script_has=["new_column_name='full_name'"],
        script_lacks=["drop_column"],
        renames="yes",
    ),
    "rename column declined": Case(
        lambda m: account_renamed_column(m),
        script_has=["drop_column('name')", "add_column(sa.Column('full_name'"],
        warns=["possible rename of account.name to account.full_name", "data of name is LOST"],
        fails_on=("sqlite", "postgresql"),  # the NOT NULL full_name cannot be added to rows
    ),
    "rename table accepted": Case(
        lambda m: account(m, name="customer"),
        script_has=["op.rename_table('account', 'customer')"],
        script_lacks=["drop_table"],
        renames="yes",
    ),
    "rename table declined": Case(
        lambda m: account(m, name="customer"),
        script_has=["op.drop_table('account')", "op.create_table('customer'"],
        warns=["possible rename of table account to customer", "drops table account"],
    ),
    "case-only table rename accepted": Case(
        lambda m: account(m, name="Account"),
        script_has=[
            "op.rename_table('account', 'Account_renaming')",
            "'Account_renaming', 'Account'",
        ],
        renames="yes",
    ),
    "case-only table rename declined": Case(
        lambda m: account(m, name="Account"),
        warns=["possible rename of table account to Account", "refuse to create a name"],
        fails_on=("sqlite",),  # the seed's trap: SQLite sees "Account" as taken by "account"
    ),
    "type change is no rename": Case(
        lambda m: account(m, sa.Column("age", sa.Integer)),
        base=lambda m: account(m, sa.Column("nickname", sa.String(20))),
        script_lacks=["new_column_name='age'"],
        warns=["drops column account.nickname"],
        renames="yes",
    ),
    "drop table": Case(
        lambda m: sa.Table("other", m, sa.Column("id", sa.Integer, primary_key=True)),
        base=lambda m: (
            account(m),
            sa.Table("other", m, sa.Column("id", sa.Integer, primary_key=True)),
        ),
        warns=["drops table account and every row in it"],
    ),
    "drop column": Case(
        lambda m: account(m),
        base=lambda m: account(m, sa.Column("bio", sa.Text)),
        warns=["drops column account.bio and its data"],
    ),
    "not null add without server default": Case(
        lambda m: account(m, sa.Column("email", sa.String(100), nullable=False)),
        warns=["adds NOT NULL column account.email without a server_default"],
        fails_on=("sqlite", "postgresql"),  # the table has rows, as the warning says
    ),
    "not null add with server default": Case(
        lambda m: account(m, sa.Column("email", sa.String(100), nullable=False, server_default="")),
        quiet=True,
    ),
    "nullable add": Case(lambda m: account(m, sa.Column("email", sa.String(100))), quiet=True),
    "new table": Case(
        lambda m: (
            account(m),
            sa.Table(
                "note",
                m,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("account_id", sa.ForeignKey("account.id"), nullable=False, index=True),
                sa.Column("title", sa.String(50), nullable=False),
                sa.UniqueConstraint("title"),
            ),
        ),
        quiet=True,
    ),
    "new table with unnamed constraints": Case(
        lambda m: (
            account(m),
            sa.Table(
                "note",
                m,
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("account_id", sa.ForeignKey("account.id")),
                sa.UniqueConstraint("account_id"),
            ),
        ),
        warns=["creates an unnamed constraint", "naming_convention"],
        naming=False,
    ),
    "type narrowing": Case(
        lambda m: sa.Table(
            "account",
            m,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(50), nullable=False),
        ),
        warns=["narrows account.name from VARCHAR(200) to VARCHAR(50)"],
    ),
    "type widening": Case(
        lambda m: sa.Table(
            "account",
            m,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(400), nullable=False),
        ),
        quiet=True,
    ),
    "make column not null": Case(
        lambda m: account(m, sa.Column("bio", sa.Text, nullable=False)),
        base=lambda m: account(m, sa.Column("bio", sa.Text)),
        warns=["makes account.bio NOT NULL"],
        fails_on=("sqlite", "postgresql"),  # the rows have NULL there, as the warning says
    ),
    "index on existing table (postgresql)": Case(
        lambda m: account(m, sa.Column("email", sa.String(100), index=True)),
        warns=[
            "builds index ix_account_email on existing table account without postgresql_concurrently"
        ],
        dialects=("postgresql",),
    ),
    "index on existing table (sqlite)": Case(
        lambda m: account(m, sa.Column("email", sa.String(100), index=True)),
        quiet=True,
        dialects=("sqlite",),
    ),
}


def account_renamed_column(metadata: sa.MetaData) -> None:
    sa.Table(
        "account",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("full_name", sa.String(200), nullable=False),
    )


def metadata_of(models: Models, naming: bool = True) -> sa.MetaData:
    metadata = sa.MetaData(naming_convention=NAMING) if naming else sa.MetaData()
    models(metadata)
    return metadata


@pytest.mark.parametrize(
    ("name", "dialect"),
    [(name, dialect) for name in sorted(CASES) for dialect in CASES[name].dialects],
)
async def test_corpus(
    name: str,
    dialect: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    case = CASES[name]
    db_url = str(request.getfixturevalue("sqlite_url" if dialect == "sqlite" else "pg_url"))
    directory = tmp_path / "migrations"
    async with Migrator(db_url, metadata_of(case.base, case.naming), directory, stdout=None) as m:
        await m.init()
        await m.migrate("base")
        await m.upgrade()
        if "account" in (await inspect_tables(db_url)):
            await m.engine.dispose()
            await _insert_rows(db_url)
        m.metadata = metadata_of(case.changed, case.naming)
        caplog.clear()
        caplog.set_level(logging.WARNING, logger="async_migrate")
        script = await m.migrate("change", renames=case.renames)  # type: ignore[arg-type]
        assert script is not None
        text = Path(script.path).read_text()
        warnings = [r.getMessage() for r in caplog.records]
        for expected in case.script_has:
            assert expected in text, text
        for unexpected in case.script_lacks:
            assert unexpected not in text, text
        for expected in case.warns:  # reported, and written above its operation in the script
            assert any(expected in w for w in warnings), warnings
            assert any(
                expected in line
                for line in text.splitlines()
                if line.strip().startswith("# WARNING:")
            ), text
        if case.quiet:
            assert warnings == [] and "# WARNING" not in text, (warnings, text)
        if m.engine.dialect.name in case.fails_on:
            with pytest.raises(MigrationFailedError):
                await m.upgrade()
            return
        await m.upgrade()  # the script runs as generated
        await m.check()
        if case.renames == "yes" and "rename" in text:
            await _assert_rows_kept_through_downgrade(m, db_url)


async def _insert_rows(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO account (id, name) VALUES (1, 'Ada'), (2, 'Grace')")
        )
    await engine.dispose()


async def _assert_rows_kept_through_downgrade(m: Migrator, url: str) -> None:
    tables = await inspect_tables(url)
    renamed = next(t for t in tables if t.lower() in ("account", "customer"))
    column = "full_name" if "full_name" in tables[renamed] else "name"
    rows = await run_query(url, f'SELECT id, {column} FROM "{renamed}" ORDER BY id')
    assert rows == [(1, "Ada"), (2, "Grace")]
    await m.downgrade()
    assert await run_query(url, "SELECT id, name FROM account ORDER BY id") == rows


async def test_rename_asked_per_candidate(sqlite_url: str, tmp_path: Path) -> None:
    asked: list[str] = []

    def ask(candidate: RenameCandidate) -> bool:
        asked.append(candidate.question())
        return True

    async with Migrator(sqlite_url, metadata_of(base), tmp_path / "m", stdout=None) as m:
        await m.init()
        await m.migrate("base")
        await m.upgrade()
        m.metadata = metadata_of(account_renamed_column)
        script = await m.migrate("rename", renames=ask)
        assert script is not None and "new_column_name='full_name'" in Path(script.path).read_text()
    assert asked == ["Did you rename account.name to account.full_name?"]


async def test_custom_lint_rule_and_check_strict(sqlite_url: str, tmp_path: Path) -> None:
    @lint_rule
    def no_bio(op: ops.MigrateOperation, context: object) -> str | None:
        if isinstance(op, ops.AddColumnOp) and op.column.name == "bio":
            return "team rule: bios belong in the profile service"
        return None

    try:
        async with Migrator(sqlite_url, metadata_of(base), tmp_path / "m", stdout=None) as m:
            await m.init()
            await m.migrate("base")
            await m.upgrade()
            m.metadata = metadata_of(lambda md: account(md, sa.Column("bio", sa.Text)))
            script = await m.migrate("bio")
            assert script is not None
            path = Path(script.path)
            assert "# WARNING: team rule: bios belong in the profile service" in path.read_text()
            await m.upgrade()
            await m.check()  # the models match the database
            with pytest.raises(UnreviewedWarningsError, match="team rule"):
                await m.check(strict=True)
            path.write_text(
                path.read_text().replace("# WARNING: team rule", "# reviewed: team rule")
            )
            await m.check(strict=True)
    finally:
        _RULES.remove(no_bio)


RENAMED_MODELS = """
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


    class Base(DeclarativeBase):
        pass


    class Account(Base):
        __tablename__ = "account"
        id: Mapped[int] = mapped_column(primary_key=True)
        full_name: Mapped[str] = mapped_column(sa.String(100))
"""


def _cli_project(tmp_path: Path, sqlite_url: str) -> Project:
    import textwrap

    from conftest import APP, MODELS_V1

    root = tmp_path / "p"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(APP))
    project = Project(root, sqlite_url)
    project.write_models(MODELS_V1)
    project.db("init")
    project.db("migrate", "-m", "first")
    project.db("upgrade")
    project.write_models(RENAMED_MODELS)
    return project


def test_cli_renames_option_and_warnings(tmp_path: Path, sqlite_url: str) -> None:
    project = _cli_project(tmp_path, sqlite_url)
    before = set(project.versions())
    result = project.db("migrate", "-m", "declined")  # not a terminal: no, with a loud warning
    assert (
        "WARNING: remove_column account.name: possible rename of account.name to account.full_name"
        in (result.stderr)
    )
    [declined] = set(project.versions()) - before
    assert "drop_column('name')" in declined.read_text()
    declined.unlink()
    result = project.db("migrate", "-m", "accepted", "--renames=yes")
    assert "Renamed account.name -> account.full_name" in result.stderr
    project.db("upgrade")
    assert query(sqlite_url, "SELECT full_name FROM account") == []
    strict = project.quart("db", "check", "--strict")
    assert strict.returncode == 0, strict.stderr


def test_cli_asks_on_a_terminal(tmp_path: Path, sqlite_url: str) -> None:
    import os
    import pty
    import subprocess
    import sys

    project = _cli_project(tmp_path, sqlite_url)
    before = set(project.versions())
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "quart", "--app", "app", "db", "migrate", "-m", "asked"],
        cwd=project.path,
        env=project.env(),
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    import select

    seen = b""
    while b"[y/N]" not in seen:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, f"no prompt within 60 s: {seen!r}"
        chunk = os.read(leader, 1024)
        assert chunk, seen
        seen += chunk
    assert b"Did you rename account.name to account.full_name? [y/N]" in seen
    os.write(leader, b"y\n")
    assert process.wait(timeout=60) == 0
    try:
        while os.read(leader, 1024):
            pass
    except OSError:
        pass
    os.close(leader)
    [asked] = set(project.versions()) - before
    assert "new_column_name='full_name'" in asked.read_text()


def test_cli_prints_each_review_warning_once(tmp_path: Path, sqlite_url: str) -> None:
    """``quart db migrate`` prints each finding once (not also as a log line), and writes it into the
    script once."""
    project = _cli_project(tmp_path, sqlite_url)
    before = set(project.versions())
    result = project.db("migrate", "-m", "declined")
    finding = "possible rename of account.name to account.full_name"
    assert result.stderr.count(finding) == 1, result.stderr
    assert f"WARNING: remove_column account.name: {finding}" in result.stderr
    [script] = set(project.versions()) - before
    assert script.read_text().count(finding) == 1
