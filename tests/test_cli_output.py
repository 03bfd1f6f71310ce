"""What `quart db` prints, from real processes: piped and under a pseudo-terminal, at head, with models
not imported, and with no database configured at all."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import APP, MODELS_V1, MODELS_V2, Project, chain, make_migrations, query, run


@pytest.fixture
def sqlite_project(tmp_path: Path) -> Project:
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(textwrap.dedent(APP))
    project = Project(root, f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")
    project.write_models(MODELS_V1)
    return project


def under_a_terminal(project: Project, *args: str) -> tuple[int, str]:
    """``quart --app app <args>`` with stdout and stderr on a pseudo-terminal; exit status, output."""
    main, child = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "quart", "--app", "app", *args],
        cwd=project.path, env=project.env(), stdin=child, stdout=child, stderr=child,
    )  # fmt: skip
    os.close(child)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child side closed
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    process.wait(30)
    os.close(main)
    return process.returncode, output.decode(errors="replace")


def test_upgrade_piped_is_one_line_per_revision_then_already_at_head(sqlite_project: Project) -> None:
    project = sqlite_project
    # An app that imports Alembic (or the review, for a @lint_rule) as it loads must not silence the CLI.
    (project.path / "app.py").write_text(textwrap.dedent(APP) + "import async_migrate.review\n")
    run(make_migrations(project.url, project.path / "migrations", chain(4)))
    # A script written without a message: its docstring's first paragraph is two lines long.
    script = project.path / "migrations" / "versions" / "r03_rev.py"
    script.write_text(script.read_text().replace('"""r03\n\nRevision ID', '"""Revision ID'))
    result = project.db("upgrade")
    lines = [line for line in result.stderr.splitlines() if "Applied 4 revision(s)" not in line]
    for rev in ("r01", "r02", "r03", "r04"):
        mentions = [line for line in lines if f" {rev} " in line or line.endswith(f" {rev}")]
        assert len(mentions) == 1, (rev, result.stderr)
    assert not any("Running upgrade" in line for line in lines), result.stderr
    assert "Applied 4 revision(s)" in result.stderr  # the summary, which names the slowest
    assert not any(line.startswith("Revises:") for line in lines), result.stderr
    again = project.db("upgrade")
    assert again.stdout.strip() == "Already at head (r04).", again


def test_upgrade_on_a_terminal_draws_one_live_line(sqlite_project: Project) -> None:
    project = sqlite_project
    run(make_migrations(project.url, project.path / "migrations", chain(3)))
    status, output = under_a_terminal(project, "db", "upgrade")
    assert status == 0, output
    assert "\r\x1b[K[1/3] r01" in output and "\r\x1b[K[3/3] r03" in output, repr(output)
    assert "left)" in output  # the time left, at the pace so far
    assert "Applied 3 revision(s)" in output
    assert "Running upgrade" not in output, output
    # No log line glued to the progress line: each starts on a cleared line.
    assert ")INFO" not in output and ")WARNI" not in output, repr(output)


def test_list_templates_advises_our_own_init(sqlite_project: Project) -> None:
    result = sqlite_project.db("list-templates")
    assert "async-multidb - " in result.stdout and "quart db init --template" in result.stdout
    assert "alembic init" not in result.stdout


def test_models_not_imported_make_migrate_check_and_doctor_refuse(sqlite_project: Project) -> None:
    project = sqlite_project
    project.db("init")
    project.db("migrate", "-m", "first")
    project.db("upgrade")
    before = project.versions()
    project.write_models(MODELS_V1.split("class Account")[0])  # the Base, and no model imported
    for command in (["migrate", "-m", "oops"], ["check"], ["doctor"]):
        result = project.quart("db", *command)
        assert result.returncode == 1, result
        assert "MetaData has no tables" in result.stdout + result.stderr, result
        assert "Traceback" not in result.stderr
    assert project.versions() == before
    allowed = project.db("migrate", "-m", "empty on purpose", "--allow-empty-metadata")
    assert len(project.versions()) == len(before) + 1, allowed
    assert "drop_table('account')" in project.versions()[-1].read_text().replace('"', "'")


def test_hand_written_revision_after_a_model_change_points_at_migrate(sqlite_project: Project) -> None:
    project = sqlite_project
    project.db("init")
    project.db("migrate", "-m", "first")
    project.db("upgrade")
    project.write_models(MODELS_V2)
    result = project.db("revision", "-m", "by hand")
    assert "the models differ from the database (1 change(s))" in result.stderr, result.stderr
    assert "quart db migrate" in result.stderr


def test_downgrade_sql_without_a_range_is_one_step_back_from_head(sqlite_project: Project) -> None:
    project = sqlite_project
    run(make_migrations(project.url, project.path / "migrations", chain(2)))
    result = project.db("downgrade", "--sql")
    assert "DELETE FROM boot_log" not in result.stdout  # the chain's downgrades are `pass`
    assert "UPDATE alembic_version SET version_num='r01'" in result.stdout, result.stdout
    assert query(project.url, "SELECT name FROM sqlite_master WHERE name = 'alembic_version'") == []


def test_commands_that_read_only_scripts_need_no_database(tmp_path: Path) -> None:
    """As in an image build, where the app has no database URL yet."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "app.py").write_text(
        "from quart import Quart\nfrom async_migrate import Migrate\nfrom models import Base\n"
        "app = Quart(__name__)\nMigrate(app, Base)\n"
    )
    project = Project(root, "")
    project.write_models(MODELS_V1)
    env: dict[str, str] = {}
    project.db("init", **env)
    project.db("revision", "-m", "first", "--rev-id", "r01", **env)
    for command in (["heads"], ["history"], ["show", "r01"], ["branches"]):
        result = project.db(*command, **env)
        assert "r01" in result.stdout or command == ["branches"], result
    for command in (["current"], ["upgrade"], ["upgrade", "--sql"]):
        result = project.quart("db", *command, **env)
        assert result.returncode == 1 and "Migrate has no database" in result.stderr, result
        assert "Traceback" not in result.stderr


def test_module_functions_take_flask_migrates_and_our_parameters(sqlite_project: Project) -> None:
    project = sqlite_project
    script = textwrap.dedent(
        """
        import asyncio
        from app import app
        from async_migrate import check, init, migrate, upgrade, heads
        from async_migrate import ModelsDifferError

        async def main():
            async with app.app_context():
                await init(multidb=False)
                await migrate(message="first", renames="no")
                await upgrade()
                await check(strict=True)
                print("HEADS", await heads())
            print("DOC", bool(check.__doc__ and upgrade.__doc__))

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=project.path, env=project.env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HEADS ('" in result.stdout and "DOC True" in result.stdout


def test_init_app_keeps_its_keywords_on_the_extension() -> None:
    """Flask-Migrate's init_app(app, db, **kwargs) updates migrate.alembic_ctx_kwargs."""
    import sqlalchemy as sa
    from quart import Quart

    from async_migrate import Migrate

    migrate = Migrate(compare_type=False)
    migrate.init_app(Quart(__name__), sa.MetaData(), render_as_batch=False, include_schemas=True)
    assert migrate.alembic_ctx_kwargs == {
        "compare_type": False,
        "render_as_batch": False,
        "include_schemas": True,
    }


def test_a_scripts_import_time_warning_shows_once(sqlite_project: Project) -> None:
    project = sqlite_project
    project.db("init")
    project.db("migrate", "-m", "first")
    project.db("upgrade")
    script = project.versions()[0]
    script.write_text('import warnings; warnings.warn("mind this script")\n' + script.read_text())
    for command in (["migrate", "-m", "nothing"], ["check"], ["history"]):
        result = project.quart("db", *command)
        said = result.stdout + result.stderr
        assert said.count("UserWarning: mind this script") == 1, (command, said)
