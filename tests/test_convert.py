"""``convert_flask_migrate`` on real Flask-Migrate folders (tests/data/flask_migrate: made by ``flask db
init`` and ``flask db migrate`` with Flask-Migrate 4.1.0, see its README), then the real thing: a Migrator
upgrades a fresh SQLite file with the Flask-Migrate revision, and lists it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from async_migrate import Migrator
from async_migrate.alembic_bridge import TEMPLATES_DIRECTORY
from async_migrate.convert import ConversionReport, convert_flask_migrate
from async_migrate.errors import CommandError

from conftest import run, tables

DATA = Path(__file__).parent / "data" / "flask_migrate"
SINGLE_REVISION = "28a194956b5b"  # versions/28a194956b5b_create_user.py
MULTIDB_REVISION = "277306fa97ca"  # versions/277306fa97ca_create_note_and_user.py

# What the user added to the single fixture's alembic.ini after `flask db init`.
USER_OPTIONS = "file_template = %%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s\ntruncate_slug_length = 30\n"
USER_HOOKS = (
    "[post_write_hooks]\nhooks = black\nblack.type = console_scripts\nblack.entrypoint = black\n"
    "black.options = -l 79 REVISION_SCRIPT_FILENAME\n"
)


def flask_folder(tmp_path: Path, kind: str) -> Path:
    """A copy of a Flask-Migrate migrations folder (``single`` or ``multidb``)."""
    target = tmp_path / kind / "migrations"
    shutil.copytree(DATA / kind / "migrations", target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def refused(directory: Path, **kwargs: Any) -> str:
    """The CommandError of converting ``directory``, checked to be one paragraph that changed nothing."""
    before = snapshot(directory) if directory.is_dir() else None
    with pytest.raises(CommandError) as caught:
        convert_flask_migrate(directory, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.endswith("Nothing was changed."), message
    assert (snapshot(directory) if directory.is_dir() else None) == before
    return message


async def upgrade_and_list(
    url: str, directory: Path, **kwargs: Any
) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """What a Migrator applied, then its heads and history (newest first)."""
    async with Migrator(url, None, directory, stdout=None, **kwargs) as migrator:
        applied = await migrator.upgrade()
        heads = await migrator.heads()
        history = [script.revision for script in await migrator.history()]
    return applied, heads, history


def test_single_database_folder_converts_and_upgrades(tmp_path: Path, sqlite_url: str) -> None:
    directory = flask_folder(tmp_path, "single")
    before = snapshot(directory)

    report = convert_flask_migrate(directory)

    assert isinstance(report, ConversionReport) and not report.multidb
    assert report.env_backup == directory / "env.py.flask-migrate"
    assert report.env_backup.read_bytes() == before["env.py"]
    assert report.backups == (report.env_backup,)
    assert (directory / "env.py").read_bytes() == (
        TEMPLATES_DIRECTORY / "async/env.py"
    ).read_bytes()
    assert set(report.replaced) == {directory / "env.py", directory / "README"}
    # The user's: the script template (Flask-Migrate's single-database one writes the same revisions)
    # and the revision, byte for byte.
    after = snapshot(directory)
    for name in ("script.py.mako", f"versions/{SINGLE_REVISION}_create_user.py"):
        assert after[name] == before[name], name
    assert report.scripts == (directory / f"versions/{SINGLE_REVISION}_create_user.py",)
    assert report.attention == ()

    # alembic.ini: every byte the user had, and a block of added lines after the [alembic] header.
    old_ini, new_ini = before["alembic.ini"].decode(), after["alembic.ini"].decode()
    assert USER_OPTIONS in old_ini and USER_HOOKS in old_ini
    assert USER_OPTIONS in new_ini and USER_HOOKS in new_ini
    head, header, rest = old_ini.partition("[alembic]\n")
    assert new_ini.startswith(head + header) and new_ini.endswith(rest)
    added = new_ini[len(head + header) : len(new_ini) - len(rest)].splitlines()
    assert [line for line in added if not line.startswith("# ")] == [
        "script_location = %(here)s",
        "path_separator = os",
        "",
    ]

    assert run(upgrade_and_list(sqlite_url, directory)) == (
        (SINGLE_REVISION,),
        (SINGLE_REVISION,),
        [SINGLE_REVISION],
    )
    assert tables(sqlite_url)["user"] == ["id", "name"]

    printed = str(report)
    assert printed.splitlines() == report.lines()
    assert printed.splitlines()[0] == (
        f'Converted {directory} from Flask-Migrate to async_migrate (template "async", one database).'
    )
    assert "replaced env.py with async_migrate's (the old one is env.py.flask-migrate)" in printed
    assert "kept as they were: script.py.mako, 1 revision script" in printed
    assert "alembic.ini: added script_location, path_separator under [alembic]" in printed


def test_multi_database_folder_converts_to_the_multidb_environment(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "multidb")
    before = snapshot(directory)

    report = convert_flask_migrate(directory)

    assert report.multidb
    template = TEMPLATES_DIRECTORY / "async-multidb"
    assert (directory / "env.py").read_bytes() == (template / "env.py").read_bytes()
    # Flask-Migrate's multidb script template renders with Flask's current_app: ours replaces it.
    assert (directory / "script.py.mako").read_bytes() == (template / "script.py.mako").read_bytes()
    assert (directory / "script.py.mako.flask-migrate").read_bytes() == before["script.py.mako"]
    assert (directory / "env.py.flask-migrate").read_bytes() == before["env.py"]
    assert "databases = ,users\n" in (directory / "alembic.ini").read_text()
    assert report.attention == ()

    main_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    users_url = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
    applied, heads, history = run(
        upgrade_and_list(main_url, directory, binds={"users": (users_url, None)})
    )
    assert set(applied) == {MULTIDB_REVISION} and heads == (MULTIDB_REVISION,)
    assert history == [MULTIDB_REVISION]
    assert "note" in tables(main_url) and "user" not in tables(main_url)
    assert "user" in tables(users_url) and "note" not in tables(users_url)


def test_converting_twice_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "single")
    convert_flask_migrate(directory)
    message = refused(directory)
    assert f"{directory / 'env.py'} is already async_migrate's env.py" in message
    assert "env.py.flask-migrate" in message and "needs no conversion" in message


def test_folders_that_are_not_flask_migrate_ones_are_refused(
    tmp_path: Path, sqlite_url: str
) -> None:
    assert "is not a folder" in refused(tmp_path / "missing")

    empty = tmp_path / "empty"
    (empty / "versions").mkdir(parents=True)
    assert "has no env.py (found: versions), so it is not a Flask-Migrate" in refused(empty)

    ours = tmp_path / "ours"

    async def init() -> None:
        async with Migrator(sqlite_url, None, ours, stdout=None) as migrator:
            await migrator.init()

    run(init())
    assert "is already async_migrate's env.py, so" in refused(ours)

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    (plain / "env.py").write_text("from alembic import context\n\ncontext.run_migrations()\n")
    assert "is not Flask-Migrate's env.py" in refused(plain)

    no_ini = flask_folder(tmp_path, "multidb")
    (no_ini / "alembic.ini").unlink()
    assert "no alembic.ini" in refused(no_ini)


def test_a_backup_in_the_way_is_refused(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "single")
    (directory / "env.py.flask-migrate").write_text("an earlier backup\n")
    message = refused(directory)
    assert f"{directory / 'env.py.flask-migrate'} already exists" in message


def test_what_the_user_changed_is_kept_and_reported(tmp_path: Path, sqlite_url: str) -> None:
    """A customised env.py, a revision importing Flask, a second version folder listed Flask-Migrate's
    way (spaces): the list is rewritten as async_migrate splits it, and both folders' revisions run."""
    directory = flask_folder(tmp_path, "single")
    env = directory / "env.py"
    env.write_text(env.read_text() + "\n# my change\n")
    more = directory / "more"
    more.mkdir()
    (more / "second.py").write_text(
        '"""second"""\nfrom alembic import op\n\nrevision = "second"\n'
        f"down_revision = {SINGLE_REVISION!r}\nbranch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade():\n    from flask import current_app\n\n"
        '    op.execute("CREATE TABLE second (id INTEGER)")\n\n\ndef downgrade():\n    pass\n'
    )
    ini = directory / "alembic.ini"
    ini.write_text(
        ini.read_text().replace(
            "[alembic]\n", "[alembic]\nversion_locations = %(here)s/versions %(here)s/more\n"
        )
    )

    report = convert_flask_migrate(directory)

    assert [(item.path, item.line) for item in report.attention] == [
        (directory / "env.py.flask-migrate", None),
        (more / "second.py", 11),
    ]
    printed = str(report)
    assert (
        "env.py.flask-migrate: differs from Flask-Migrate's env.py: carry your changes" in printed
    )
    assert "more/second.py:11: imports Flask (`from flask import current_app`)" in printed
    assert "from quart import current_app" in printed
    assert f"version_locations = %(here)s/versions{os.pathsep}%(here)s/more\n" in ini.read_text()
    assert "version_locations now has" in printed

    (more / "second.py").write_text((more / "second.py").read_text().replace("    from flask", "#"))
    applied, heads, history = run(upgrade_and_list(sqlite_url, directory))
    assert applied == (SINGLE_REVISION, "second") and heads == ("second",)
    assert history == ["second", SINGLE_REVISION]
    assert {"user", "second"} <= set(tables(sqlite_url))


def test_a_customised_multidb_template_is_kept_and_reported(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "multidb")
    mako = directory / "script.py.mako"
    mako.write_text(mako.read_text().replace('"""${message}', '"""${message} (reviewed)'))
    before = mako.read_bytes()

    report = convert_flask_migrate(directory)

    assert mako.read_bytes() == before and mako in report.kept
    assert not (directory / "script.py.mako.flask-migrate").exists()
    assert [(item.path, item.line) for item in report.attention] == [(mako, 30)]
    assert "renders with Flask (`from flask import current_app`)" in report.attention[0].why


def test_multidb_can_be_forced_and_mismatched_scripts_are_named(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "multidb")
    report = convert_flask_migrate(directory, multidb=False)
    assert not report.multidb
    env = (TEMPLATES_DIRECTORY / "async/env.py").read_bytes()
    assert (directory / "env.py").read_bytes() == env
    (script,) = report.scripts
    assert [item.path for item in report.attention] == [script]
    assert report.attention[0].why.startswith("has upgrade(engine_name) for several databases")
    assert "quart db init --multidb -d" in report.attention[0].why


def test_a_failed_write_puts_everything_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up at the last file (alembic.ini): the backup and the new env.py go again."""
    directory = flask_folder(tmp_path, "single")
    before = snapshot(directory)
    replace = os.replace

    def full_disk(source: str, target: str | Path) -> None:
        if Path(target).name == "alembic.ini":
            raise OSError(28, "No space left on device")
        replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(CommandError) as caught:
        convert_flask_migrate(directory)
    monkeypatch.undo()
    message = str(caught.value)
    assert f"Cannot write {directory / 'alembic.ini'}: No space left on device" in message
    assert "put back" in message and "\n" not in message
    assert snapshot(directory) == before


CONVERT = """
import sys
from async_migrate.convert import convert_flask_migrate
from async_migrate.errors import CommandError
try:
    convert_flask_migrate(sys.argv[1])
except CommandError as exc:
    print(exc)
"""


def test_an_unwritable_folder_is_named_and_left_alone() -> None:
    """As a user without write access to the folder (root drops to nobody: root may write anywhere)."""
    base = Path(tempfile.mkdtemp(prefix="am-convert-", dir="/tmp"))
    as_other_user = (
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        if os.geteuid() == 0
        else []
    )
    try:
        base.chmod(0o755)
        directory = flask_folder(base, "single")
        before = snapshot(directory)
        for folder in (base, *base.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        directory.chmod(0o555)
        result = subprocess.run(
            [*as_other_user, sys.executable, "-c", CONVERT, str(directory)],
            capture_output=True, text=True, timeout=60, cwd=base,
        )  # fmt: skip
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stdout.startswith(f"Cannot write to {directory}: permission denied."), result
        assert snapshot(directory) == before
    finally:
        for folder in (base, *base.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_windows_line_endings_of_alembic_ini_are_kept(tmp_path: Path) -> None:
    directory = flask_folder(tmp_path, "single")
    ini = directory / "alembic.ini"
    before = ini.read_bytes().replace(b"\n", b"\r\n")
    ini.write_bytes(before)
    convert_flask_migrate(directory)
    after = ini.read_bytes()
    assert after.count(b"\n") == after.count(b"\r\n") > before.count(b"\r\n")
    assert after.endswith(before.partition(b"[alembic]\r\n")[2])


def test_quart_db_init_convert_then_upgrade(tmp_path: Path) -> None:
    """The whole switch from the command line: a Flask-Migrate folder beside a Quart app; first the
    upgrade refuses (Flask's env.py), naming the command; then `init --convert`; then it upgrades."""
    import textwrap

    from conftest import APP, MODELS_V1, Project

    root = tmp_path / "project"
    shutil.copytree(DATA / "single" / "migrations", root / "migrations")
    (root / "app.py").write_text(textwrap.dedent(APP))
    project = Project(root, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    project.write_models(MODELS_V1)
    refused_upgrade = project.quart("db", "upgrade")
    assert refused_upgrade.returncode == 1, refused_upgrade
    assert "quart db init --convert" in refused_upgrade.stderr, refused_upgrade.stderr
    converted = project.db("init", "--convert")
    assert "replaced env.py with async_migrate's" in converted.stdout, converted.stdout
    assert (root / "migrations" / "env.py.flask-migrate").is_file()
    project.db("upgrade")
    assert "user" in tables(project.url)
    assert SINGLE_REVISION in project.db("current").stdout
