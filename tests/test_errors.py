"""Every failure is one clear message with its fix, exit code 1, no traceback, and the database unchanged.

Each case's key phrase must also stand in the README's "When it goes wrong" table, so the table cannot
drift from what the tool says.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from async_migrate import ConfigurationError

from conftest import MODELS_V2, Project, query, tables

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SECRET = "Sup3rS3cretPw"


def readme_table_phrases() -> list[str]:
    """The key phrase of each row of the README's table (its "The message says" column)."""
    section = README.split("## When it goes wrong", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| ")]
    return [m for row in rows[1:] for m in re.findall(r"`([^`]+)`", row[2])]


def assert_clean_failure(result: object, phrase: str) -> None:
    returncode = result.returncode
    stderr = result.stderr
    assert returncode == 1, (returncode, stderr)
    assert phrase in stderr, stderr
    assert "Traceback" not in stderr
    assert phrase in README, f"README's 'When it goes wrong' table lacks {phrase!r}"


def use_config_uri_app(project: Project) -> None:
    """The project's app takes its database URL from SQLALCHEMY_DATABASE_URI (so async_migrate parses it)."""
    (project.path / "app.py").write_text(
        "import os\nfrom quart import Quart\nfrom async_migrate import Migrate\nfrom models import Base\n"
        "app = Quart(__name__)\napp.config['SQLALCHEMY_DATABASE_URI'] = os.environ['DATABASE_URL']\n"
        "Migrate(app, Base)\n"
    )


def write_revision(project: Project, rev: str, down: str | None, body: str) -> None:
    (project.path / "migrations" / "versions" / f"{rev}_x.py").write_text(
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n"
        "from alembic import op\nimport sqlalchemy as sa\n"
        f"def upgrade():\n{body}\ndef downgrade():\n    pass\n"
    )


CREATE_T = "    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n"


def test_unknown_revision_in_database(project: Project) -> None:
    project.db("init")
    write_revision(project, "r1", None, CREATE_T)
    project.db("upgrade")
    project.db("stamp", "--purge", "r1")
    from conftest import pg_admin  # noqa: F401 - keeps the import list honest for both backends

    query_url = project.url
    _exec(query_url, "UPDATE alembic_version SET version_num = 'deadbeef0000'")
    for command in (["upgrade"], ["current"], ["downgrade"], ["migrate", "-m", "x"]):
        result = project.quart("db", *command)
        assert_clean_failure(result, "which the migration scripts don't know")
        assert "deadbeef0000" in result.stderr and "stamp --purge" in result.stderr
    assert query(query_url, "SELECT version_num FROM alembic_version") == [("deadbeef0000",)]
    project.db("stamp", "--purge", "r1")  # the documented fix works
    assert project.db("current").stdout.strip() == "r1 (head)"


def _exec(url: str, sql: str) -> None:
    import asyncio

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    async def run() -> None:
        engine = create_async_engine(url, poolclass=sa.pool.NullPool)
        async with engine.begin() as conn:
            await conn.execute(sa.text(sql))
        await engine.dispose()

    asyncio.run(run())


def test_multiple_heads(project: Project) -> None:
    project.db("init")
    write_revision(project, "r1", None, CREATE_T)
    write_revision(project, "r2a", "r1", "    pass\n")
    write_revision(project, "r2b", "r1", "    pass\n")
    result = project.quart("db", "upgrade")
    assert_clean_failure(result, "so 'head' is ambiguous")
    assert "r2a" in result.stderr and "r2b" in result.stderr and "merge" in result.stderr
    assert "t" not in tables(project.url)
    project.db("upgrade", "heads")  # still possible on purpose
    assert sorted(query(project.url, "SELECT version_num FROM alembic_version")) == [
        ("r2a",),
        ("r2b",),
    ]


def test_broken_script(project: Project) -> None:
    project.db("init")
    write_revision(project, "r1", None, "    op.create_table('t'\n")
    result = project.quart("db", "upgrade")
    assert_clean_failure(result, "Cannot load")
    assert "r1_x.py, line" in result.stderr
    assert tables(project.url) == {}
    result = project.quart("db", "-v", "upgrade")
    assert result.returncode == 1 and "Traceback" in result.stderr  # -v shows it


def test_failing_revision_rolled_back(project: Project) -> None:
    project.db("init")
    write_revision(project, "r1", None, CREATE_T)
    write_revision(
        project,
        "r2",
        "r1",
        "    op.create_table('half', sa.Column('id', sa.Integer))\n"
        "    op.execute('INSERT INTO no_such_table VALUES (1)')\n",
    )
    result = project.quart("db", "upgrade")
    assert_clean_failure(result, "Its transaction was rolled back")
    assert "Revision r2 failed" in result.stderr and "now at r1" in result.stderr
    assert "half" not in tables(project.url)


def test_init_twice_migrate_behind_downgrade_below_base(project: Project) -> None:
    project.db("init")
    assert_clean_failure(project.quart("db", "init"), "already set up")
    assert_clean_failure(project.quart("db", "downgrade"), "nothing to downgrade")
    project.db("migrate", "-m", "first")
    project.write_models(MODELS_V2)
    assert_clean_failure(
        project.quart("db", "migrate", "-m", "second"),
        "a new revision generated now would repeat the pending ones",
    )
    assert len(project.versions()) == 1
    assert_clean_failure(
        project.quart("db", "migrate", "--sql"), "--sql cannot be used with autogenerate"
    )
    # Without a revision it is head:-1, as in Flask-Migrate; a single revision cannot be offline.
    assert_clean_failure(
        project.quart("db", "downgrade", "--sql", "base"), "downgrade --sql needs a range"
    )


def test_sync_driver_url(project: Project) -> None:
    use_config_uri_app(project)
    project.db("init")
    project.url = project.url.replace("+aiosqlite", "").replace("+asyncpg", "")
    result = project.quart("db", "current")
    assert_clean_failure(result, "uses the synchronous driver")
    assert "+aiosqlite://" in result.stderr or "+asyncpg://" in result.stderr


def test_driver_not_installed(project: Project) -> None:
    # aiomysql is an asyncio driver SQLAlchemy knows, and not a dependency of ours.
    pytest.importorskip("sqlalchemy.dialects.mysql.aiomysql")
    if importlib.util.find_spec("aiomysql") is not None:
        pytest.skip("aiomysql is installed here")
    use_config_uri_app(project)
    project.db("init")
    project.url = f"mysql+aiomysql://root:{SECRET}@127.0.0.1/test"
    result = project.quart("db", "upgrade")
    assert_clean_failure(result, "is not installed")
    assert "pip install aiomysql" in result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres:{pw}@127.0.0.1:1/nodb",
        "postgresql+asyncpg://postgres:{pw}@no-such-host.invalid/nodb",
        "sqlite+aiosqlite:////no/such/dir/app.db",
    ],
)
def test_unreachable_database(project: Project, url: str) -> None:
    project.db("init")
    project.url = url.format(pw=SECRET)
    result = project.quart("db", "upgrade")
    assert_clean_failure(result, "Could not connect to the database")
    assert SECRET not in result.stdout + result.stderr


MALFORMED = [
    "postgres ql://user:Pw1FrontPart%25Pw1TailPart@127.0.0.1/db",  # unparseable
    "postgresql+asyncpg://user:Pw1FrontPart@Pw1TailPart@127.0.0.1/db",  # an unencoded '@'
    "postgresql+asyncpg://user:Pw1FrontPart@Pw1TailPart:9@127.0.0.1/db",  # its tail taken for a port
    "postgresql+asyncpg://user:Pw1FrontPart@[Pw1TailPart@127.0.0.1/db",  # a host that does not parse
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_never_shows_any_of_its_password(url: str) -> None:
    from async_migrate import Migrator
    from async_migrate.urls import render_url

    with pytest.raises(ConfigurationError) as error:
        Migrator(url)
    message = str(error.value)
    assert "Pw1" not in message and "Pw1" not in render_url(url), message
    assert "percent-encode" in message
    assert "\n" not in message


def test_a_malformed_url_from_the_app_config_is_one_clean_paragraph(project: Project) -> None:
    use_config_uri_app(project)
    project.db("init")
    for url in MALFORMED:
        project.url = url
        for args in (["current"], ["-v", "upgrade"]):
            result = project.quart("db", *args)
            assert result.returncode == 1, result.stderr
            assert "Pw1" not in result.stdout + result.stderr, result.stderr
            if args[0] != "-v":
                assert_clean_failure(result, "percent-encode")


def test_no_password_anywhere(pg_url: str, tmp_path: Path) -> None:
    # Trust authentication accepts any password, so a URL with one really connects.
    from conftest import APP, MODELS_V1

    root = tmp_path / "p"
    root.mkdir()
    (root / "app.py").write_text(__import__("textwrap").dedent(APP))
    secret_url = pg_url.replace("postgres@", f"postgres:{SECRET}@")
    project = Project(root, secret_url)
    project.write_models(MODELS_V1)
    outputs = []
    for command in (
        ["init"],
        ["migrate", "-m", "first"],
        ["upgrade"],
        ["current", "-v"],
        ["history", "-v", "-i"],
        ["upgrade", "--sql", "base:head"],
        ["doctor"],
        ["check"],
    ):
        result = project.db(*command)
        outputs.append(result.stdout + result.stderr)
    project.write_models(MODELS_V2)
    for command in (["check"], ["doctor"], ["upgrade", "nosuchrev"], ["-v", "upgrade", "nosuchrev"]):
        result = project.quart("db", *command)
        assert result.returncode == 1
        outputs.append(result.stdout + result.stderr)
    everything = "\n".join(outputs)
    assert "***" in everything  # the URL is shown, with the password hidden
    assert SECRET not in everything


def test_doctor(project: Project) -> None:
    project.db("init")
    project.db("migrate", "-m", "first")
    result = project.quart("db", "doctor")
    assert result.returncode == 1
    assert "1 revision(s) not applied yet" in result.stdout
    project.db("upgrade")
    result = project.db("doctor")
    assert "Healthy" in result.stdout and "Models match the database." in result.stdout
    project.write_models(MODELS_V2)
    result = project.quart("db", "doctor")
    assert result.returncode == 1
    assert "add_column account.email" in result.stdout
    _exec(project.url, "DELETE FROM alembic_version")
    result = project.quart("db", "doctor")
    assert result.returncode == 1
    assert "quart db stamp <revision>" in result.stdout and "account" in result.stdout
    assert tables(project.url)["account"] == ["id", "name"]  # read-only


def test_readme_table_lists_only_real_messages() -> None:
    phrases = readme_table_phrases()
    assert len(phrases) >= 10
    tested = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for phrase in phrases:
        assert phrase in tested, f"README phrase {phrase!r} is checked by no test"


def test_lock_timeout_names_the_holder(pg_url: str, tmp_path: Path) -> None:
    import asyncio

    import asyncpg

    from async_migrate.locks import postgres_lock_key

    from conftest import APP, MODELS_V1

    root = tmp_path / "p"
    root.mkdir()
    (root / "app.py").write_text(__import__("textwrap").dedent(APP))
    project = Project(root, pg_url)
    project.write_models(MODELS_V1)
    project.db("init")
    project.db("migrate", "-m", "first")
    database = pg_url.rsplit("/", 1)[1]

    async def hold_and_upgrade() -> tuple[object, int]:
        holder = await asyncpg.connect(
            pg_url.replace("+asyncpg", ""), server_settings={"application_name": "stuck-deploy"}
        )
        try:
            key = postgres_lock_key(database, "public", "alembic_version")
            await holder.execute("SELECT pg_advisory_lock($1)", key)
            pid = holder.get_server_pid()
            result = await asyncio.to_thread(project.quart, "db", "upgrade", "--lock-timeout", "1")
            return result, pid
        finally:
            await holder.close()

    result, pid = asyncio.run(hold_and_upgrade())
    assert_clean_failure(result, "Gave up after waiting")
    assert f"pid {pid}" in result.stderr and "stuck-deploy" in result.stderr
    assert "account" not in tables(pg_url)


# -- a broken history, a broken version table, a database that cannot be written ---------------------------


def _rev(directory: Path, rev: str, down: object, body: str = "    pass\n", depends: object = None) -> None:
    (directory / "versions" / f"{rev}_x.py").write_text(
        f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\n"
        f"depends_on = {depends!r}\nfrom alembic import op\nimport sqlalchemy as sa\n"
        f"def upgrade():\n{body}def downgrade():\n    pass\n"
    )


def _version_rows(db: Path, *rows: str) -> None:
    import sqlite3

    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        connection.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in rows])


def _dangling(d: Path, db: Path) -> None:
    _rev(d, "r01", "nope")


def _dangling_dependency(d: Path, db: Path) -> None:
    _rev(d, "r01", None, depends="nope")


def _cycle(d: Path, db: Path) -> None:
    _rev(d, "r01", "r02")
    _rev(d, "r02", "r01")


def _duplicate(d: Path, db: Path) -> None:
    _rev(d, "r01", None)
    (d / "versions" / "r01_copy.py").write_text((d / "versions" / "r01_x.py").read_text())


def _prefix(d: Path, db: Path) -> None:
    _rev(d, "abcd1111", None)
    _rev(d, "abcd2222", "abcd1111")


def _one_branch_twice(d: Path, db: Path) -> None:
    _rev(d, "r01", None)
    _rev(d, "r02", "r01")
    _rev(d, "r03", "r02")
    _version_rows(db, "r01", "r03")


def _empty_row(d: Path, db: Path) -> None:
    _rev(d, "r01", None)
    _version_rows(db, "")


def _period(d: Path, db: Path) -> None:
    _rev(d, "r01", None, "    raise RuntimeError('no context.')\n")


def _flask_env(d: Path, db: Path) -> None:
    _rev(d, "r01", None)
    (d / "env.py").write_text(
        "import logging\nfrom flask import current_app\nfrom alembic import context\n"
        "config = context.config\n"
        "config.set_main_option('sqlalchemy.url', str(current_app.extensions['migrate'].db.engine.url))\n"
    )


BROKEN = {
    "dangling down_revision": (_dangling, "head", ["r01_x.py names 'nope'", "no script has that revision id"]),
    "dangling depends_on": (_dangling_dependency, "head", ["r01_x.py names 'nope'", "depends_on"]),
    "cycle": (_cycle, "head", ["Revisions r01, r02 form a cycle"]),
    "duplicate id": (_duplicate, "head", ["Several scripts have the revision id 'r01'", "r01_copy.py"]),
    "ambiguous prefix": (_prefix, "abcd", ["'abcd' is the start of several revision ids (abcd1111, abcd2222)"]),
    "one branch twice": (_one_branch_twice, "head", ["two revisions of one line of history", "stamp --purge"]),
    "empty version row": (_empty_row, "head", ["'' (an empty version_num)", "delete that row"]),
    "doubled period": (_period, "head", ["no context. Its transaction"]),
    "Flask-Migrate env.py": (_flask_env, "head", ["is Flask-Migrate's env.py", "quart db init"]),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_history_or_version_table_is_one_clear_paragraph(case: str, tmp_path: Path) -> None:
    import asyncio
    import warnings

    from async_migrate import AsyncMigrateError, Migrator

    setup, target, phrases = BROKEN[case]
    db, directory = tmp_path / "app.db", tmp_path / "migrations"
    url = f"sqlite+aiosqlite:///{db}"

    async def attempt() -> AsyncMigrateError:
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.init()
            setup(directory, db)
            with pytest.raises(AsyncMigrateError) as error:
                await migrator.upgrade(target)
            return error.value

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of Alembic's beside the error
        error = asyncio.run(attempt())
    message = str(error)
    for phrase in phrases:
        assert phrase in message, message
    assert ".." not in message and "\n" not in message and "KeyError" not in message, message
    assert "restore the script" not in message or case == "empty version row", message
    assert query(url, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'alembic%'") == [(0,)]


def test_a_broken_history_through_the_cli(project: Project) -> None:
    project.db("init")
    for setup, phrase in (
        (_dangling, "no script has that revision id"),
        (_cycle, "form a cycle"),
        (_duplicate, "Several scripts have the revision id"),
    ):
        for old in (project.path / "migrations" / "versions").glob("*.py"):
            old.unlink()
        setup(project.path / "migrations", Path(""))
        for args in (["upgrade"], ["heads"], ["history"]):
            result = project.quart("db", *args)
            assert_clean_failure(result, phrase)
            assert "Warning" not in result.stderr, result.stderr


def test_sqlite_that_cannot_be_written_is_not_a_script_to_fix(tmp_path: Path) -> None:
    import asyncio
    import sqlite3

    from async_migrate import DatabaseUnreachableError, MigrationFailedError, Migrator

    db, directory = tmp_path / "app.db", tmp_path / "migrations"
    sqlite3.connect(db).close()

    async def run_all() -> None:
        async with Migrator(f"sqlite+aiosqlite:///{db}", None, directory, stdout=None) as migrator:
            await migrator.init()
        _rev(directory, "r01", None, "    op.create_table('t', sa.Column('id', sa.Integer, primary_key=True))\n")
        read_only = f"sqlite+aiosqlite:///file:{db}?mode=ro&uri=true"
        async with Migrator(read_only, None, directory, stdout=None) as migrator:
            with pytest.raises(MigrationFailedError) as failed:
                await migrator.upgrade()
        message = str(failed.value)
        assert "readonly database" in message and "cannot be written here" in message, message
        assert "Fix the revision script" not in message
        # A file: URI is one file, with its lock beside it.
        async with Migrator(f"sqlite+aiosqlite:///file:{db}?uri=true", None, directory, stdout=None) as m:
            assert await m.upgrade() == ("r01",)
        assert (tmp_path / "app.db.migrate-lock").exists()
        missing = f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'app.db'}"
        async with Migrator(missing, None, directory, stdout=None) as migrator:
            with pytest.raises(DatabaseUnreachableError) as unreachable:
                await migrator.current()
        assert "folder exists" in str(unreachable.value)
        assert "server is running" not in str(unreachable.value)

    asyncio.run(run_all())


def test_postgresql_errors_are_named_by_postgresql(pg_url: str, tmp_path: Path) -> None:
    import asyncio

    from async_migrate import MigrationFailedError, Migrator

    directory = tmp_path / "migrations"

    async def run_all() -> str:
        async with Migrator(pg_url, None, directory, stdout=None) as migrator:
            await migrator.init()
            _rev(directory, "r01", None, "    op.execute('SELECT 1/0')\n")
            with pytest.raises(MigrationFailedError) as failed:
                await migrator.upgrade()
            return str(failed.value)

    message = asyncio.run(run_all())
    assert "DivisionByZeroError: division by zero" in message, message


PERMISSION_SCRIPT = """
import asyncio, sys
from async_migrate import AsyncMigrateError, Migrator

async def main(url, directory, command):
    async with Migrator(url, None, directory, stdout=None) as migrator:
        if command == "init":
            await migrator.init()
        elif command == "revision":
            await migrator.revision(message="x")
        else:
            print("APPLIED", await migrator.upgrade())

try:
    asyncio.run(main(*sys.argv[1:]))
except AsyncMigrateError as exc:
    print(f"ERROR {type(exc).__name__}: {exc}")
    sys.exit(1)
"""


def test_folders_this_process_may_not_write_are_named(tmp_path: Path) -> None:
    """As a user without write access (root drops to nobody: root may write anywhere): init under a
    read-only parent, revision into a read-only versions/, SQLite in a read-only folder, and a lock file
    another user made. Each is one paragraph naming the folder; nothing is written."""
    import asyncio
    import os
    import shutil
    import sqlite3
    import subprocess
    import sys
    import tempfile

    from async_migrate import Migrator

    base = Path(tempfile.mkdtemp(prefix="am-perm-", dir="/tmp"))
    base.chmod(0o755)
    # setpriv (util-linux): subprocess's user= cannot reach the interpreter under /root (mode 700).
    as_other_user = (
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
    )

    def attempt(url: str, directory: Path, command: str) -> str:
        result = subprocess.run(
            [*as_other_user, sys.executable, "-c", PERMISSION_SCRIPT, url, str(directory), command],
            capture_output=True, text=True, timeout=60, cwd=base,
        )  # fmt: skip
        assert "Traceback" not in result.stderr, result.stderr
        return result.stdout

    try:
        (base / "ro").mkdir(mode=0o555)
        said = attempt(f"sqlite+aiosqlite:///{base / 'ro' / 'app.db'}", base / "ro" / "migrations", "init")
        assert f"Cannot write {base / 'ro' / 'migrations'}: Permission denied" in said, said
        assert f"write access to {base / 'ro'}" in said and not (base / "ro" / "migrations").exists()

        project, data = base / "project", base / "data"
        data.mkdir()
        data.chmod(0o777)  # mkdir's mode is cut by the umask
        url = f"sqlite+aiosqlite:///{data / 'app.db'}"

        async def prepare() -> None:
            async with Migrator(url, None, project / "migrations", stdout=None) as migrator:
                await migrator.init()
                await migrator.revision(message="first")

        asyncio.run(prepare())
        sqlite3.connect(data / "app.db").close()
        (data / "app.db").chmod(0o666)
        lockless = base / "lockless"  # a read-only folder: no lock file can be made there
        lockless.mkdir()
        shutil.copy(data / "app.db", lockless / "app.db")
        (lockless / "app.db").chmod(0o666)
        lockless.chmod(0o555)
        versions = project / "migrations" / "versions"
        before = sorted(versions.iterdir())
        versions.chmod(0o555)
        said = attempt(url, project / "migrations", "revision")
        assert "Cannot write" in said and f"write access to {versions}" in said, said
        assert sorted(versions.iterdir()) == before

        # A lock file left by another user (root) is locked through a read-only handle.
        (data / "app.db.migrate-lock").touch(mode=0o644)
        said = attempt(url, project / "migrations", "upgrade")
        assert said.startswith("APPLIED ("), said

        said = attempt(f"sqlite+aiosqlite:///{lockless / 'app.db'}", project / "migrations", "upgrade")
        assert "Cannot create the migration lock file" in said, said
        assert f"write access to {lockless}" in said, said
    finally:
        for folder in base.rglob("*"):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
