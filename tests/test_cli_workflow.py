"""The Flask-Migrate workflow through ``quart db`` in real subprocesses, on SQLite and PostgreSQL."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from conftest import MODELS_V2, Project, query, tables


# SQLite only: the same commands run through real processes on PostgreSQL in test_console's workflow and
# test_errors; this one's twenty `quart` processes cost half a minute per database kind.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_seed_workflow(project: Project) -> None:
    result = project.db("init")
    assert (project.path / "migrations" / "env.py").is_file()
    assert (project.path / "migrations" / "alembic.ini").is_file()

    project.db("migrate", "-m", "create account")
    [first] = project.versions()
    assert "op.create_table('account'" in first.read_text()
    assert "account" not in tables(project.url)

    project.db("upgrade")
    assert tables(project.url)["account"] == ["id", "name"]

    project.write_models(MODELS_V2)
    result = project.quart("db", "check")
    assert result.returncode == 1
    assert "The models differ from the database: add_column account.email" in result.stderr
    assert "Traceback" not in result.stderr

    project.db("migrate", "-m", "add email")
    second = next(p for p in project.versions() if p != first)
    assert "add_column(sa.Column('email'" in second.read_text()
    project.db("upgrade")
    assert tables(project.url)["account"] == ["id", "name", "email"]
    result = project.db("check")
    assert "No new upgrade operations detected" in result.stdout

    first_rev = first.name.split("_")[0]
    second_rev = second.name.split("_")[0]
    assert project.db("current").stdout.strip() == f"{second_rev} (head)"

    project.db("downgrade")
    assert tables(project.url)["account"] == ["id", "name"]
    assert project.db("current").stdout.strip() == first_rev
    project.db("upgrade")

    sql = project.db("upgrade", "--sql", "base:head").stdout
    assert "CREATE TABLE account" in sql
    assert "ALTER TABLE account ADD COLUMN email" in sql
    assert "password" not in sql.lower()

    project.db("stamp", first_rev)
    assert query(project.url, "SELECT version_num FROM alembic_version") == [(first_rev,)]
    assert tables(project.url)["account"] == ["id", "name", "email"]  # stamp runs no migration
    project.db("stamp", "head")

    history = project.db("history").stdout
    assert f"{first_rev} -> {second_rev} (head), add email" in history
    assert f"<base> -> {first_rev}, create account" in history
    assert "(current)" in project.db("history", "-i").stdout
    assert project.db("heads").stdout.strip() == f"{second_rev} (head)"
    assert "Rev: " + second_rev in project.db("show", second_rev).stdout
    assert project.db("branches").stdout.strip() == ""

    # Two heads: a second revision on top of the first one, then merge them.
    project.db("revision", "-m", "side branch", "--head", first_rev, "--splice", "--rev-id", "side01")
    heads_out = project.db("heads").stdout
    assert "side01 (head)" in heads_out and f"{second_rev} (head)" in heads_out
    assert first_rev in project.db("branches").stdout
    result = project.quart("db", "upgrade")
    assert result.returncode == 1
    assert "merge" in result.stderr and "side01" in result.stderr
    project.db("merge", "-m", "join", "--rev-id", "merge01", "heads")
    assert project.db("heads").stdout.strip() == "merge01 (head)"
    project.db("upgrade")
    assert project.db("current").stdout.strip() == "merge01 (head) (mergepoint)"

    editor = project.path / "editor.py"
    editor.write_text(
        f"#!{sys.executable}\nimport sys\nopen(sys.argv[1], 'a').write('# edited by test\\n')\n"
    )
    editor.chmod(editor.stat().st_mode | stat.S_IXUSR)
    project.db("edit", "merge01", EDITOR=str(editor))
    merge_file = next(p for p in project.versions() if p.name.startswith("merge01"))
    assert merge_file.read_text().endswith("# edited by test\n")


def test_no_revision_file_when_nothing_changed(project: Project) -> None:
    project.db("init")
    project.db("migrate", "-m", "first")
    project.db("upgrade")
    result = project.db("migrate", "-m", "nothing")
    assert "No changes in schema detected" in result.stdout
    assert len(project.versions()) == 1


def test_errors_are_one_line_with_exit_code_1(project: Project) -> None:
    project.db("init")
    result = project.quart("db", "init")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.stderr

    project.db("migrate", "-m", "first")
    project.write_models(MODELS_V2)
    result = project.quart("db", "migrate", "-m", "second")  # database not upgraded yet
    assert result.returncode == 1
    assert "upgrade" in result.stderr and "Traceback" not in result.stderr
    assert len(project.versions()) == 1


def test_group_options_directory_and_x_arg(project: Project) -> None:
    project.db("-d", "db_migrations", "init")
    assert (project.path / "db_migrations" / "env.py").is_file()
    env_py = project.path / "db_migrations" / "env.py"
    env_py.write_text(
        env_py.read_text()
        + "\nprint('X-ARGS', context.get_x_argument())\n"
    )
    project.db("-d", "db_migrations", "revision", "-m", "empty")
    result = project.db("-d", "db_migrations", "-x", "group=1", "upgrade", "-x", "cmd=2")
    assert "X-ARGS ['group=1', 'cmd=2']" in result.stdout


def test_help_lists_every_flask_migrate_command(project: Project) -> None:
    result = project.db("--help")
    for name in (
        "init", "revision", "migrate", "edit", "merge", "upgrade", "downgrade", "show",
        "history", "heads", "branches", "current", "stamp", "check", "list-templates",
    ):  # fmt: skip
        assert f"  {name}" in result.stdout
    listing = project.db("list-templates").stdout
    assert "async - " in listing


def test_plain_alembic_cli_upgrades_with_its_own_engine(project: Project) -> None:
    project.db("init")
    project.db("migrate", "-m", "first")
    alembic = Path(sys.executable).parent / "alembic"
    import subprocess

    result = subprocess.run(
        [str(alembic), "-c", "migrations/alembic.ini", "upgrade", "head"],
        cwd=project.path,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "account" in tables(project.url)
    assert project.db("check").returncode == 0


def test_upgrade_shows_progress_on_a_terminal(project: Project) -> None:
    import os
    import pty
    import subprocess

    project.db("init")
    for n in range(1, 4):
        (project.path / "migrations" / "versions" / f"r{n}.py").write_text(
            f'"""step {n}"""\nrevision = "r{n}"\ndown_revision = {None if n == 1 else repr(f"r{n - 1}")}\n'
            "branch_labels = None\ndepends_on = None\n"
            "def upgrade():\n    pass\ndef downgrade():\n    pass\n"
        )
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "quart", "--app", "app", "db", "upgrade"],
        cwd=project.path,
        env=project.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    import select

    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, f"no output within 60 s: {output!r}"
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    text = output.decode()
    assert "[1/3] r1 step 1" in text and "[3/3] r3 step 3" in text
    assert "Applied 3 revision(s) in" in text and "slowest: " in text
    assert "Applied upgrade r1" not in text  # the log lines give way to the progress line
