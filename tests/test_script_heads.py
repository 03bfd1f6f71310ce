"""The no-op fast path knows the heads without importing every script, and never misses a change."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from async_migrate import Migrator, MultipleHeadsError, UnknownRevisionError
from async_migrate.script_heads import CACHE_FILE, cached, locations_of
from async_migrate.sqlite_runner import read_version_table

pytestmark = pytest.mark.anyio


def write_rev(directory: Path, rev: str, down: object, extra: str = "") -> Path:
    path = directory / "versions" / f"{rev}_r.py"
    path.write_text(
        f'"""{rev}\n\nRevision ID: {rev}\n"""\nfrom alembic import op\n\n'
        f"revision: str = {rev!r}\ndown_revision = {down!r}  # parent\n"
        f"branch_labels = None\ndepends_on = None\n{extra}\n"
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    return path


def alembic_heads(directory: Path) -> tuple[str, ...]:
    config = Config()
    config.set_main_option("script_location", str(directory))
    return tuple(sorted(ScriptDirectory.from_config(config).get_heads()))


def script(directory: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(directory))
    return ScriptDirectory.from_config(config)


def cached_heads(script: ScriptDirectory) -> tuple[str, ...] | None:
    """The heads the fast path knows for ``script``'s folders (None: only Alembic's full load can tell)."""
    locations = locations_of(script)
    found = cached(locations, script.dir) if locations is not None else None
    return found.heads if found is not None else None


@pytest.fixture
async def migrations(tmp_path: Path, sqlite_url: str) -> Path:
    directory = tmp_path / "migrations"
    async with Migrator(sqlite_url, None, directory, stdout=None) as migrator:
        await migrator.init()
    return directory


async def test_headers_agree_with_alembic_on_branches_and_merges(migrations: Path) -> None:
    write_rev(migrations, "a", None)
    write_rev(migrations, "b1", "a")
    write_rev(migrations, "b2", "a")
    write_rev(migrations, "m", ("b1", "b2"))
    write_rev(migrations, "c", "m")
    write_rev(migrations, "d", "a")
    assert cached_heads(script(migrations)) == alembic_heads(migrations) == ("c", "d")
    cache = json.loads((migrations / CACHE_FILE).read_text())
    assert cache["heads"] == ["c", "d"]


async def test_unusual_header_falls_back_to_alembic(migrations: Path) -> None:
    write_rev(migrations, "a", None)
    path = write_rev(migrations, "b", "a")
    path.write_text(path.read_text().replace("down_revision = 'a'", "down_revision = PARENT"))
    path.write_text("PARENT = 'a'\n" + path.read_text())
    assert cached_heads(script(migrations)) is None
    assert alembic_heads(migrations) == ("b",)


async def test_a_stale_cache_is_never_trusted(migrations: Path) -> None:
    write_rev(migrations, "a", None)
    assert cached_heads(script(migrations)) == ("a",)
    write_rev(migrations, "b", "a")  # a new file changes the fingerprint
    assert cached_heads(script(migrations)) == ("b",)
    path = migrations / "versions" / "b_r.py"
    path.write_text(path.read_text().replace("down_revision = 'a'", "down_revision = None"))
    os.utime(path, ns=(1, 1))  # even an edit with an old mtime changes size or mtime_ns
    assert cached_heads(script(migrations)) == ("a", "b")


async def test_an_edit_that_keeps_size_and_mtime_is_seen(migrations: Path) -> None:
    # A build with fixed modification times, or `touch -r`: only the change time tells.
    write_rev(migrations, "a", None)
    write_rev(migrations, "b", "a")
    path = write_rev(migrations, "c", "a")
    assert cached_heads(script(migrations)) == ("b", "c")
    before = path.stat()
    path.write_text(path.read_text().replace("down_revision = 'a'", "down_revision = 'b'"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert cached_heads(script(migrations)) == ("c",)


async def test_upgrade_never_misses_an_added_edited_or_removed_script(
    migrations: Path, sqlite_url: str
) -> None:
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        write_rev(migrations, "a", None)
        assert await migrator.upgrade() == ("a",)
        assert await migrator.upgrade() == ()  # the fast path
        assert (migrations / CACHE_FILE).exists()

        write_rev(migrations, "b", "a")  # added
        assert await migrator.upgrade() == ("b",)

        write_rev(migrations, "c", "a")  # a second head by an edit elsewhere
        with pytest.raises(MultipleHeadsError):
            await migrator.upgrade()
        (migrations / "versions" / "c_r.py").unlink()

        (migrations / "versions" / "b_r.py").unlink()  # removed: the database is at b
        with pytest.raises(UnknownRevisionError):
            await migrator.upgrade()


async def test_a_script_that_lands_during_the_load_is_not_missed(
    migrations: Path, sqlite_url: str
) -> None:
    """A version file written while Alembic imports the scripts (a deploy copying files as a replica
    starts) may be missed by that load; the cache must not record the heads of that load under a
    fingerprint that includes it, or every later start would say "at head" with the file pending."""
    body = repr(
        'revision = "b"\ndown_revision = "a"\nbranch_labels = None\ndepends_on = None\n'
        "def upgrade():\n    pass\ndef downgrade():\n    pass\n"
    )
    landing = (
        "import pathlib as _pathlib\n"
        "_b = _pathlib.Path(__file__).with_name('b_r.py')\n"
        f"if not _b.exists():\n    _b.write_text({body})\n"
    )
    write_rev(migrations, "a", None, extra=landing)
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        assert await migrator.upgrade() == ("a",)  # b arrived while a was being imported
        assert (migrations / "versions" / "b_r.py").exists()
        assert await migrator.upgrade() == ("b",)
        assert await migrator.upgrade() == ()
        assert await migrator.current(quiet=True) == ("b",)


async def test_poisoned_cache_with_wrong_fingerprint_is_ignored(
    migrations: Path, sqlite_url: str
) -> None:
    write_rev(migrations, "a", None)
    (migrations / CACHE_FILE).write_text(
        json.dumps({"format": 1, "fingerprint": "not-this-one", "heads": []})
    )
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        assert await migrator.upgrade() == ("a",)


async def test_read_only_migrations_folder_works(migrations: Path, sqlite_url: str) -> None:
    if os.geteuid() == 0:
        # root writes anyway: simulate the failure with a directory where the file must go
        (migrations / CACHE_FILE).mkdir()
    else:
        migrations.chmod(0o555)
    write_rev(migrations, "a", None)
    try:
        async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
            assert await migrator.upgrade() == ("a",)
            assert await migrator.upgrade() == ()
    finally:
        migrations.chmod(0o755)


async def test_current_at_head_prints_alembics_own_line(migrations: Path, sqlite_url: str) -> None:
    """`current` at a head answers from the cache; its line is the one Alembic prints (merge points too)."""
    write_rev(migrations, "a", None)
    write_rev(migrations, "b1", "a")
    write_rev(migrations, "b2", "a")
    write_rev(migrations, "m", ("b1", "b2"))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
    expected = script(migrations).get_revision("m").cmd_format(verbose=False)
    assert expected == "m (head) (mergepoint)"
    for source in ("script headers", "Alembic's full load"):
        (migrations / CACHE_FILE).unlink()
        if source == "Alembic's full load":
            async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
                migrator.script_directory()  # the full load writes the cache
        output = io.StringIO()
        async with Migrator(sqlite_url, None, migrations, stdout=output) as migrator:
            assert await migrator.current() == ("m",)
        assert output.getvalue() == expected + "\n", source
        assert json.loads((migrations / CACHE_FILE).read_text())["current_lines"] == {"m": expected}


async def test_current_leaves_effective_heads_to_alembic(migrations: Path, sqlite_url: str) -> None:
    """A head that another revision depends on is an "effective head": the header parse cannot word
    that, so `current` lets Alembic print it."""
    write_rev(migrations, "a", None)
    write_rev(migrations, "b", "a")
    path = write_rev(migrations, "c", None)
    path.write_text(path.read_text().replace("depends_on = None", "depends_on = 'b'"))
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade("b")
    output = io.StringIO()
    async with Migrator(sqlite_url, None, migrations, stdout=output) as migrator:
        assert await migrator.current() == ("b",)
    assert output.getvalue() == "b (effective head)\n"


async def test_current_off_head_is_alembics_answer(migrations: Path, sqlite_url: str) -> None:
    write_rev(migrations, "a", None)
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        await migrator.upgrade()
    write_rev(migrations, "b", "a")  # the database is now one behind
    output = io.StringIO()
    async with Migrator(sqlite_url, None, migrations, stdout=output) as migrator:
        assert await migrator.current() == ("a",)
    assert output.getvalue() == "a\n"


async def test_version_locations_in_alembic_ini_are_honoured(
    migrations: Path, sqlite_url: str
) -> None:
    """With version_locations set, the fast path reads those folders (through Alembic), never the
    default versions folder: a stale copy there must not make a new revision look applied."""
    other = migrations / "other"
    other.mkdir()
    ini = migrations / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "[alembic]\n", "[alembic]\nversion_locations = %(here)s/other\n", 1
        )
    )
    write_rev(migrations, "x", None)  # the stale copy, in versions/
    (other / "x_r.py").write_text((migrations / "versions" / "x_r.py").read_text())
    async with Migrator(sqlite_url, None, migrations, stdout=None) as migrator:
        assert await migrator.upgrade() == ("x",)
        (other / "y_r.py").write_text(
            (migrations / "versions" / "x_r.py")
            .read_text()
            .replace("revision: str = 'x'", "revision: str = 'y'")
            .replace("down_revision = None", "down_revision = 'x'")
        )
        assert await migrator.upgrade() == ("y",)
        assert await migrator.upgrade() == ()


def sqlite_project(tmp_path: Path, *, upgraded: bool) -> tuple[Path, Path, str]:
    """A migrations folder with one revision "a", and its SQLite file (at "a" when ``upgraded``):
    (migrations folder, database file, URL)."""
    directory = tmp_path / "migrations"
    database = tmp_path / "app.db"
    url = f"sqlite+aiosqlite:///{database}"

    async def setup() -> None:
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.init()
            write_rev(directory, "a", None)
            if upgraded:
                assert await migrator.upgrade() == ("a",)

    asyncio.run(setup())
    return directory, database, url


def test_noop_upgrade_and_current_at_head_load_neither_alembic_nor_the_driver(
    tmp_path: Path,
) -> None:
    """What every replica start pays when there is nothing to do: no Alembic import, no engine."""
    directory, _, url = sqlite_project(tmp_path, upgraded=True)
    probe = f"""
import asyncio, io, sys
from async_migrate import Migrator

async def probe():
    out = io.StringIO()
    async with Migrator({url!r}, None, {str(directory)!r}, stdout=out) as m:
        assert await m.upgrade() == ()
        assert await m.current() == ("a",)
    print(out.getvalue().strip(), "alembic" in sys.modules, "aiosqlite" in sys.modules)

asyncio.run(probe())
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["a", "(head)", "False", "False"]


def test_a_replica_waiting_for_another_ones_upgrade_loads_no_alembic(tmp_path: Path) -> None:
    """A replica that finds work but not the lock waits; when the holder brings the database to head,
    it returns having imported neither Alembic nor any revision script."""
    directory, database, url = sqlite_project(tmp_path, upgraded=False)
    waiter = f"""
import asyncio, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from async_migrate import Migrator

async def main():
    async with Migrator({url!r}, None, {str(directory)!r}, stdout=None, lock_timeout=60) as m:
        assert await m.upgrade() == ()
    print("alembic" in sys.modules)  # no Alembic: no script can have been loaded either

asyncio.run(main())
"""
    with open(f"{database}.migrate-lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # this test is the migrator holding the lock
        process = subprocess.Popen(
            [sys.executable, "-c", waiter], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            assert process.stderr is not None
            for line in process.stderr:  # wait until it is really waiting for the lock
                if "Waiting up to" in line or time.monotonic() > deadline:
                    break

            async def migrate() -> None:
                async with Migrator(url, None, directory, stdout=None, lock=False) as migrator:
                    assert await migrator.upgrade() == ("a",)

            asyncio.run(migrate())
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "Another migrator brought" in stderr
    assert stdout.split() == ["False"]


def test_plain_sqlite_version_read_never_guesses(tmp_path: Path) -> None:
    """The no-op check's plain sqlite3 read answers only when it plainly can; None sends the caller to
    its engine, which waits for locks and creates nothing it should not."""
    database = tmp_path / "app.db"
    url = make_url(f"sqlite:///{database}")
    assert read_version_table(url, "alembic_version") is None
    assert not database.exists()  # read-only: a missing file is not created

    setup = sqlite3.connect(database)
    setup.execute("CREATE TABLE other (id INTEGER)")
    setup.commit()
    assert read_version_table(url, "alembic_version") is None  # no version table yet

    setup.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    setup.execute("INSERT INTO alembic_version VALUES ('a')")
    setup.commit()
    assert read_version_table(url, "alembic_version") == ("a",)

    setup.execute("BEGIN EXCLUSIVE")  # a writer, e.g. a migration, holds the file
    try:
        assert read_version_table(url, "alembic_version") is None
    finally:
        setup.rollback()
        setup.close()
    assert read_version_table(make_url(f"sqlite:///{database}?timeout=5"), "alembic_version") is None


def test_unknown_revision_is_refused_at_once_while_another_holds_the_lock(tmp_path: Path) -> None:
    """A database at a revision no script has (a newer release migrated it) is refused by every replica
    at its first look, from the known revision ids, not one replica at a time after a turn at the lock."""
    directory, database, url = sqlite_project(tmp_path, upgraded=True)
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'zzz'")
        connection.commit()

    async def start() -> None:
        async with Migrator(url, None, directory, stdout=None, lock_timeout=5) as migrator:
            await migrator.upgrade()

    with open(f"{database}.migrate-lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # another replica holds the lock meanwhile
        with pytest.raises(UnknownRevisionError, match="zzz, which the migration scripts don't know"):
            asyncio.run(start())


@pytest.mark.anyio
async def test_scripts_loaded_again_in_one_process_see_every_change(tmp_path: Path) -> None:
    """The revision map is kept between commands of one process only while the files are the same."""
    from conftest import LOG_TABLE, chain, make_migrations, query, revision_source

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    migrations = await make_migrations(url, tmp_path / "m", chain(2))
    past = time.time() - 60  # settled files: their map is kept for the next command
    for path in [migrations / "versions", *(migrations / "versions").iterdir()]:
        os.utime(path, (past, past))
    async with Migrator(url, None, migrations, stdout=None) as migrator:
        assert await migrator.heads() == ("r02",)
        assert await migrator.upgrade("r01") == ("r01",)
        second = migrations / "versions" / "r02_rev.py"
        # The same size, other code: the map of the last load must not be used for it.
        second.write_text(second.read_text().replace("VALUES ('r02')", "VALUES ('x02')"))
        (migrations / "versions" / "r03_rev.py").write_text(revision_source("r03", "r02", []))
        assert await migrator.heads() == ("r03",)
        assert await migrator.upgrade() == ("r02", "r03")
        (migrations / "versions" / "r03_rev.py").unlink()
        assert await migrator.heads() == ("r02",)
    assert query(url, f"SELECT rev FROM {LOG_TABLE} ORDER BY id") == [("r01",), ("x02",)]
