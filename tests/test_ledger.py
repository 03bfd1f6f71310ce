"""The ledger: a row per revision applied, reverted or stamped; verify, recover, adoption, offline SQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.util import CommandError as AlembicCommandError

from async_migrate import Migrator, asyncpg_simple_query, ledger_checks
from async_migrate.database import Database
from async_migrate.errors import (
    CommandError,
    ConfigurationError,
    EditedScriptError,
    LedgerFindingsError,
    MigrationFailedError,
    MissingScriptError,
    UnknownRevisionError,
)

from conftest import (
    CREATE_LOG,
    LOG_COUNTS,
    LOG_TABLE,
    VERSION,
    chain,
    execute,
    log_insert,
    make_migrations,
    make_migrations_sync,
    pg_admin,
    rev_id,
    run_query,
)

pytestmark = pytest.mark.anyio

LEDGER = "alembic_version_log"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def script_of(migrations: Path, n: int) -> Path:
    return migrations / "versions" / f"{rev_id(n)}_rev.py"


def cli(url: str, migrations: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``async-migrate --url ... -d ... <args>`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "async_migrate", "--url", url, "-d", str(migrations), *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


async def test_rows_of_upgrade_downgrade_and_stamp(tmp_path: Path, backend_url: str) -> None:
    migrations = await make_migrations(backend_url, tmp_path / "migrations", chain(3))
    async with Migrator(backend_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        await migrator.downgrade("-1")
        await migrator.stamp("head")
        entries = await migrator.log()
    assert [(e.revision, e.direction) for e in reversed(entries)] == [
        ("r01", "upgrade"), ("r02", "upgrade"), ("r03", "upgrade"), ("r03", "downgrade"),
        ("r03", "stamp"),
    ]  # fmt: skip
    for entry in entries:
        assert entry.checksum == sha256(migrations / "versions" / f"{entry.revision}_rev.py")
        assert entry.script == f"{entry.revision}_rev.py"
        assert entry.message == entry.revision
        assert entry.started_at is not None and entry.finished_at is not None
        assert entry.started_at <= entry.finished_at
        assert entry.duration is not None and 0 <= entry.duration < 60
        assert (entry.host, entry.pid) == (socket.gethostname(), os.getpid())
        assert entry.tool_version
        if not backend_url.startswith("sqlite"):
            assert entry.db_user and entry.db_user.split("@")[0] in ("postgres", "root")
    # The source is kept whole: what recover writes back.
    stored = await run_query(backend_url, f"SELECT source FROM {LEDGER} WHERE revision = 'r02'")
    assert stored == [(script_of(migrations, 2).read_text(),)]


async def test_a_failed_revision_leaves_no_row(tmp_path: Path, db_url: str) -> None:
    failing = chain(3, {3: ['op.execute("SELECT * FROM no_such_table")']})
    migrations = await make_migrations(db_url, tmp_path / "migrations", failing)
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        with pytest.raises(MigrationFailedError):
            await migrator.upgrade()
        assert await migrator.current(quiet=True) == ("r02",)
        assert [e.revision for e in await migrator.log()] == ["r02", "r01"]


async def test_no_ledger_when_turned_off(tmp_path: Path, db_url: str) -> None:
    migrations = await make_migrations(db_url, tmp_path / "migrations", chain(2))
    async with Migrator(db_url, None, migrations, stdout=None, ledger=False) as migrator:
        await migrator.upgrade()
        with pytest.raises(ConfigurationError, match="turned off"):
            await migrator.log()
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        assert await migrator.log() == []  # no table: nothing recorded, nothing made by reading


async def test_renamed_ledger_table(tmp_path: Path, sqlite_url: str) -> None:
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(2))
    async with Migrator(sqlite_url, None, migrations, stdout=None, ledger_table="history") as m:
        await m.upgrade()
    assert await run_query(sqlite_url, "SELECT revision FROM history ORDER BY id") == [
        ("r01",), ("r02",),
    ]  # fmt: skip


async def test_a_database_migrated_before_the_ledger_is_adopted(
    tmp_path: Path, db_url: str
) -> None:
    migrations = await make_migrations(db_url, tmp_path / "migrations", chain(3))
    async with Migrator(db_url, None, migrations, stdout=None, ledger=False) as migrator:
        await migrator.upgrade("r02")
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        entries = list(reversed(await migrator.log()))
        assert await migrator.verify() == []
    assert [(e.revision, e.direction) for e in entries] == [
        ("r01", "adopted"), ("r02", "adopted"), ("r03", "upgrade"),
    ]  # fmt: skip
    assert entries[0].checksum == sha256(script_of(migrations, 1))
    assert entries[0].finished_at is None and entries[0].duration is None


async def test_an_edited_script_is_reported_with_its_diff_and_blocks_upgrade(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    migrations = await make_migrations(db_url, tmp_path / "migrations", chain(3))
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade("r02")
        edited = script_of(migrations, 1)
        edited.write_text(
            edited.read_text().replace("    pass\n", "    op.drop_table('boot_log')\n")
        )
        findings = await migrator.verify()
        assert [(f.kind, f.revision) for f in findings] == [("edited", "r01")]
        assert "+    op.drop_table('boot_log')" in findings[0].diff
        assert "as applied (upgrade at " in findings[0].diff
        with pytest.raises(LedgerFindingsError):
            await migrator.verify_or_raise()
        with pytest.raises(EditedScriptError, match=r"r01 \(.*r01_rev.py\).*verify") as refused:
            await migrator.upgrade()
        assert refused.value.revisions == ("r01",)
        assert await migrator.current(quiet=True) == ("r02",)  # nothing ran
        migrator.allow_edited = True
        with caplog.at_level(logging.WARNING, "async_migrate"):
            assert await migrator.upgrade() == ("r03",)
        assert "were edited after they ran: r01" in caplog.text
        migrator.allow_edited = False
        assert await migrator.accept_edited() == ["r01"]
        assert await migrator.verify() == []
        await migrator.downgrade("r02")
        assert await migrator.upgrade() == ("r03",)  # accepted: no longer refused


async def test_comments_and_layout_are_not_an_edit(tmp_path: Path, sqlite_url: str) -> None:
    body = ["# WARNING: review me", 'op.execute("SELECT 1")']
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(2, {1: body}))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade("r01")
        script = script_of(migrations, 1)
        text = script.read_text()
        # The review's warning deleted, a formatter's quotes, the message reworded: the same code.
        tidied = text.replace("    # WARNING: review me\n", "").replace('"SELECT 1"', "'SELECT 1'")
        script.write_text(tidied.replace('"""r01', '"""r01, reviewed', 1))
        assert await migrator.verify() == []
        assert await migrator.upgrade() == ("r02",)


def test_verify_and_log_on_the_command_line(tmp_path: Path, sqlite_url: str) -> None:
    migrations = tmp_path / "migrations"
    asyncio.run(make_migrations(sqlite_url, migrations, chain(3)))
    assert cli(sqlite_url, migrations, "upgrade", "r02").returncode == 0
    verified = cli(sqlite_url, migrations, "verify")
    assert verified.returncode == 0, verified.stderr
    assert "Verified" in verified.stdout
    logged = cli(sqlite_url, migrations, "log", "-n", "1")
    assert logged.returncode == 0 and "upgrade   r02 r02" in logged.stdout, logged
    assert len(logged.stdout.splitlines()) == 1
    rows = json.loads(cli(sqlite_url, migrations, "log", "--json").stdout)
    assert [row["revision"] for row in rows] == ["r02", "r01"] and rows[0]["finished_at"].endswith(
        "Z"
    )
    script = script_of(migrations, 1)
    script.write_text(script.read_text() + "\nEDITED = True\n")
    found = cli(sqlite_url, migrations, "verify")
    assert found.returncode == 1
    assert found.stdout.startswith("EDITED: Revision r01 was edited after it was applied")
    assert "+EDITED = True" in found.stdout
    blocked = cli(sqlite_url, migrations, "upgrade")
    assert blocked.returncode == 1 and "Error: Not upgrading: 1 script(s)" in blocked.stderr, (
        blocked
    )
    allowed = cli(sqlite_url, migrations, "upgrade", "--allow-edited")
    assert allowed.returncode == 0 and "were edited after they ran: r01" in allowed.stderr, allowed
    accepted = cli(sqlite_url, migrations, "verify", "--accept")
    assert accepted.returncode == 0 and "Accepted the edited script(s) r01" in accepted.stdout
    assert cli(sqlite_url, migrations, "verify").returncode == 0


async def test_a_deleted_script_is_recovered_byte_for_byte(tmp_path: Path, db_url: str) -> None:
    migrations = await make_migrations(db_url, tmp_path / "migrations", chain(3))
    last = script_of(migrations, 3)
    last.write_bytes(last.read_bytes().replace(b"\n", b"\r\n"))  # odd bytes must come back too
    original = last.read_bytes()
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        last.unlink()
        with pytest.raises(
            UnknownRevisionError, match=r"keeps a copy of the script of r03.*`recover`"
        ):
            await migrator.current()
        assert [(f.kind, f.revision) for f in await migrator.verify()] == [("missing", "r03")]
        assert await migrator.recover() == [last]
        assert last.read_bytes() == original
        assert await migrator.recover() == []  # nothing missing now
        assert await migrator.downgrade("-1") == ("r03",)
        assert await migrator.current(quiet=True) == ("r02",)


async def test_a_script_deleted_mid_history_is_recovered(tmp_path: Path, db_url: str) -> None:
    migrations = await make_migrations(db_url, tmp_path / "migrations", chain(3))
    middle = script_of(migrations, 2)
    original = middle.read_bytes()
    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        middle.unlink()
        with pytest.raises(MissingScriptError, match=r"r03_rev.py names 'r02'.*`recover`"):
            await migrator.history()
        assert [(f.kind, f.revision) for f in await migrator.verify()] == [("missing", "r02")]
        assert await migrator.recover() == [middle]
        assert middle.read_bytes() == original
        assert await migrator.downgrade("base") == ("r03", "r02", "r01")


async def test_recover_never_overwrites_a_different_file(tmp_path: Path, sqlite_url: str) -> None:
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(2))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        second = script_of(migrations, 2)
        second.unlink()
        (migrations / "versions" / "r02_rev.txt").write_text("unrelated")
        second.with_suffix(".py").write_text("# someone else's file, no revision header\n")
        with pytest.raises(CommandError, match="already exists and is a different file"):
            await migrator.recover()
        assert second.read_text() == "# someone else's file, no revision header\n"
        with pytest.raises(CommandError, match="no copy of nope"):
            await migrator.recover(["nope"])


async def test_revisions_stamped_over_are_reported_as_never_applied(
    tmp_path: Path, sqlite_url: str
) -> None:
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(3))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.stamp("r03")
        found = await migrator.verify()
        assert [(f.kind, f.revision) for f in found] == [
            ("never_applied", "r01"), ("never_applied", "r02"),
        ]  # fmt: skip
        with pytest.raises(LedgerFindingsError, match="r01 is older than"):
            await migrator.verify_or_raise()


async def test_a_database_without_a_ledger_cannot_be_verified(
    tmp_path: Path, sqlite_url: str
) -> None:
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(2))
    async with Migrator(sqlite_url, None, migrations, stdout=None, ledger=False) as migrator:
        await migrator.upgrade()
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        assert [f.kind for f in await migrator.verify()] == ["no_ledger"]
        await migrator.verify_or_raise(ignore_no_ledger=True)  # what check --strict does


async def test_offline_sql_writes_the_ledger_too(tmp_path: Path, pg_url: str) -> None:
    import io

    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(2))
    out = io.StringIO()
    async with Migrator(pg_url, None, migrations, stdout=out) as migrator:
        await migrator.upgrade(sql=True)
    script = out.getvalue()
    assert f"CREATE TABLE IF NOT EXISTS {LEDGER}" in script
    assert script.count(f"INSERT INTO {LEDGER}") == 2
    # The script, run as a DBA would, leaves the same rows.
    import asyncpg

    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(script)
    finally:
        await connection.close()
    rows = await run_query(
        pg_url, f"SELECT revision, direction, checksum FROM {LEDGER} ORDER BY id"
    )
    assert rows == [
        ("r01", "upgrade", sha256(script_of(migrations, 1))),
        ("r02", "upgrade", sha256(script_of(migrations, 2))),
    ]


async def test_a_ledger_that_cannot_be_written_rolls_the_revision_back(
    tmp_path: Path, pg_url: str
) -> None:
    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(2))
    role = "am_ledger_test"
    database = pg_url.rsplit("/", 1)[1]
    pg_admin(
        f"DROP ROLE IF EXISTS {role}",
        f"CREATE ROLE {role} LOGIN",
        f"GRANT ALL ON DATABASE {database} TO {role}",
    )
    try:
        await execute(pg_url, f"GRANT ALL ON SCHEMA public TO {role}")
        async with Migrator(pg_url, None, migrations, stdout=None) as migrator:
            await migrator.upgrade("r01")
        await execute(pg_url, f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await execute(pg_url, f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        await execute(pg_url, f"REVOKE INSERT ON {LEDGER} FROM {role}")
        limited = pg_url.replace("postgres@", f"{role}@")
        async with Migrator(limited, None, migrations, stdout=None) as migrator:
            with pytest.raises(
                CommandError, match=r"could not record revision r02.*permission denied"
            ):
                await migrator.upgrade()
            assert await migrator.current(quiet=True) == ("r01",)
        assert await run_query(pg_url, f"SELECT rev FROM {LOG_TABLE}") == [("r01",)]
    finally:
        await execute(pg_url, f"DROP OWNED BY {role}")
        pg_admin(f"DROP ROLE IF EXISTS {role}")


async def test_doctor_reports_what_verify_finds(tmp_path: Path, sqlite_url: str) -> None:
    migrations = await make_migrations(sqlite_url, tmp_path / "migrations", chain(2))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        assert (await migrator.doctor()).healthy
        script_of(migrations, 2).unlink()
        diagnosis = await migrator.doctor()
    assert not diagnosis.healthy
    assert any("`recover r02` writes it back" in problem for problem in diagnosis.problems), (
        diagnosis
    )


async def test_the_ledger_lives_beside_a_version_table_in_another_schema(
    tmp_path: Path, pg_url: str
) -> None:
    await execute(pg_url, "CREATE SCHEMA meta")
    migrations = await make_migrations(pg_url, tmp_path / "migrations", chain(2))
    async with Migrator(
        pg_url, None, migrations, stdout=None, version_table_schema="meta"
    ) as migrator:
        await migrator.upgrade()
        assert [e.revision for e in await migrator.log()] == ["r02", "r01"]
        assert await migrator.verify() == []
    assert await run_query(pg_url, f"SELECT count(*) FROM meta.{LEDGER}") == [(2,)]


# Every character a literal could trip on: quotes, backslashes (and a backslash before a quote), dollar
# quoting, placeholders of every paramstyle, a NUL-free control character, non-ASCII text.
AWKWARD_TEXT = "it's \\ a \\' $1 $$ $tag$ %s %(name)s :name ? \t ünïcødé ✓ \x07 '' \\\\n"


async def _upgrade_delete_and_recover_an_awkward_script(tmp_path: Path, url: str) -> None:
    migrations = await make_migrations(url, tmp_path / "migrations", chain(2))
    last = script_of(migrations, 2)
    source = last.read_text(encoding="utf-8").replace('"""', f'r"""{AWKWARD_TEXT}\n\n', 1)
    last.write_bytes(f"{source}\n# {AWKWARD_TEXT}\n".encode())
    original = last.read_bytes()
    async with Migrator(url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
        entries = await migrator.log()
        assert entries[0].message == AWKWARD_TEXT.strip()
        assert entries[0].checksum == sha256(last)
        last.unlink()
        assert await migrator.recover() == [last]
        assert last.read_bytes() == original
        assert await migrator.verify() == []


async def test_a_script_with_awkward_text_is_kept_byte_for_byte(
    tmp_path: Path, backend_url: str
) -> None:
    await _upgrade_delete_and_recover_an_awkward_script(tmp_path, backend_url)


async def test_awkward_text_is_kept_where_backslashes_are_escapes(
    tmp_path: Path, pg_url: str
) -> None:
    # A server that reads a backslash in '...' as an escape (standard_conforming_strings off, as before
    # PostgreSQL 9.1): the ledger's literals must mean the same there.
    pg_admin(f'ALTER DATABASE "{pg_url.rsplit("/", 1)[1]}" SET standard_conforming_strings = off')
    await _upgrade_delete_and_recover_an_awkward_script(tmp_path, pg_url)


BRANCHED = [
    ("r01", None, [CREATE_LOG, log_insert("r01")]),
    ("r02a", "r01", [log_insert("r02a")]),
    ("r02b", "r01", [log_insert("r02b")]),
    ("r03", ("r02a", "r02b"), [log_insert("r03")]),
]


async def test_branches_and_merges_move_the_version_table_and_the_ledger_together(
    tmp_path: Path, db_url: str
) -> None:
    # A branch inserts a version row, a merge deletes one and updates the other, base deletes the last:
    # each must land in the version table exactly as Alembic says, with its ledger row.
    migrations = await make_migrations(db_url, tmp_path / "migrations", BRANCHED)

    async def versions() -> set[str]:
        return {str(row[0]) for row in await run_query(db_url, VERSION)}

    async with Migrator(db_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade("r02a")
        assert await versions() == {"r02a"}
        await migrator.upgrade("r02b")
        assert await versions() == {"r02a", "r02b"}
        await migrator.upgrade("heads")
        assert await versions() == {"r03"}
        await migrator.downgrade("r01")
        assert await versions() == {"r01"}
        await migrator.downgrade("base")
        assert await versions() == set()
        entries = await migrator.log()
    assert [(e.revision, e.direction) for e in reversed(entries)] == [
        ("r01", "upgrade"), ("r02a", "upgrade"), ("r02b", "upgrade"), ("r03", "upgrade"),
        ("r03", "downgrade"), *sorted([("r02a", "downgrade"), ("r02b", "downgrade")]),
        ("r01", "downgrade"),
    ] or [(e.revision, e.direction) for e in reversed(entries)][5:7] == [
        ("r02b", "downgrade"), ("r02a", "downgrade"),
    ]  # fmt: skip
    assert len(entries) == 8


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "no-ledger"])
async def test_a_revision_that_moves_the_version_row_itself_is_rolled_back(
    tmp_path: Path, db_url: str, ledger: bool
) -> None:
    # Alembic's check that its UPDATE changed one row holds with the ledger as without it.
    moves = 'op.execute("DELETE FROM alembic_version")'
    revisions = [*chain(1), ("r02", "r01", [log_insert("r02"), moves])]
    migrations = await make_migrations(db_url, tmp_path / "migrations", revisions)
    async with Migrator(db_url, None, migrations, stdout=None, ledger=ledger) as migrator:
        await migrator.upgrade("r01")
        with pytest.raises(CommandError, match=r"expected to match one row.*0 found.*rolled back"):
            await migrator.upgrade()
        assert await migrator.current(quiet=True) == ("r01",)
        if ledger:
            assert [e.revision for e in await migrator.log()] == ["r01"]
    assert await run_query(db_url, LOG_COUNTS) == [("r01", 1)]


async def _held_on_a_migration_connection(
    pg_url: str, work: Callable[[sa.Connection], None]
) -> None:
    """``work`` on a migration connection of ``pg_url`` (as the runner sets one up), holding the version
    table's statements, in a transaction that ``work`` leaves to be committed."""
    database = Database(pg_url)
    try:
        async with database.connect(time.monotonic() + 30) as connection:

            def run(sync_connection: sa.Connection) -> None:
                with asyncpg_simple_query.holding_version_statements(
                    sync_connection, "alembic_version", None
                ):
                    with sync_connection.begin():
                        work(sync_connection)

            await connection.run_sync(run)
    finally:
        await database.aclose()


def _move_version(connection: sa.Connection, from_: str, to: str) -> int:
    version = sa.table("alembic_version", sa.column("version_num"))
    statement = version.update().values(version_num=sa.literal_column(f"'{to}'"))
    return connection.execute(
        statement.where(version.c.version_num == sa.literal_column(f"'{from_}'"))
    ).rowcount


async def test_a_held_version_statement_is_sent_at_commit_at_the_latest(pg_url: str) -> None:
    await execute(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    await execute(pg_url, "INSERT INTO alembic_version VALUES ('a')")

    def move(connection: sa.Connection) -> None:
        assert _move_version(connection, "a", "b") == 1  # held: nothing sent yet
        connection.exec_driver_sql("CREATE TABLE made_with_it (id int)")  # sends it first

    await _held_on_a_migration_connection(pg_url, move)
    assert await run_query(pg_url, VERSION) == [("b",)]

    await _held_on_a_migration_connection(pg_url, lambda c: _move_version(c, "b", "c"))
    assert await run_query(pg_url, VERSION) == [("c",)]  # sent by the commit itself


async def test_a_version_statement_that_missed_is_never_committed(pg_url: str) -> None:
    # Its row-count check fails while another statement runs; whoever ran that one swallows the error:
    # the commit must still refuse, and take back everything of the transaction.
    await execute(pg_url, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
    await execute(pg_url, "INSERT INTO alembic_version VALUES ('a')")

    def careless(connection: sa.Connection) -> None:
        connection.exec_driver_sql("CREATE TABLE made_with_it (id int)")
        _move_version(connection, "not-a", "b")
        with contextlib.suppress(Exception):
            connection.exec_driver_sql("CREATE TABLE made_after_it (id int)")

    with pytest.raises(AlembicCommandError, match=r"expected to match one row.*0 found"):
        await _held_on_a_migration_connection(pg_url, careless)
    assert await run_query(pg_url, VERSION) == [("a",)]
    tables = await run_query(pg_url, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'made%'")
    assert tables == []


def test_checksums_are_kept_between_processes_and_an_edit_in_place_is_still_caught(
    tmp_path: Path, sqlite_url: str
) -> None:
    # Each upgrade checks every applied script against the ledger; later processes reuse the checksums
    # of unchanged files (.async_migrate-digests.json). A rewrite that keeps the size and the
    # modification time (a build with fixed mtimes) must still be read again.
    migrations = make_migrations_sync(sqlite_url, tmp_path / "migrations", chain(3))
    cache = migrations / ledger_checks.DIGESTS_FILE
    assert cli(sqlite_url, migrations, "upgrade", "r01").returncode == 0
    assert cli(sqlite_url, migrations, "upgrade", "r02").returncode == 0
    files = json.loads(cache.read_text())["files"]
    assert [Path(path).name for path in files] == [script_of(migrations, 1).name]

    first = script_of(migrations, 1)
    before = first.stat()
    first.write_text(
        first.read_text().replace(
            "def downgrade() -> None:\n    pass", "def downgrade() -> None:\n    1/0 "
        )
    )
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert first.stat().st_size == before.st_size and first.stat().st_mtime_ns == before.st_mtime_ns
    refused = cli(sqlite_url, migrations, "upgrade")
    assert refused.returncode != 0 and "edited after they ran: r01" in refused.stderr

    cache.write_text("{not json")  # a damaged cache is computed again, not trusted
    refused = cli(sqlite_url, migrations, "upgrade")
    assert refused.returncode != 0 and "edited after they ran: r01" in refused.stderr
    assert cli(sqlite_url, migrations, "upgrade", "--allow-edited").returncode == 0
