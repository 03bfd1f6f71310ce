"""`async-migrate` / `python -m async_migrate`: the migration commands with no web framework, in real
processes, in a folder that has only models.py and pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from async_migrate import Migrator
from async_migrate.console import add_migration_commands

from conftest import MODELS_V1, MODELS_V2, query, tables

# Runs the console's main() in-process and reports, after it, whether any web framework was imported.
PROBE = """
import sys
from async_migrate.console import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
frameworks = [name for name in ("quart", "flask", "fastapi", "starlette") if name in sys.modules]
print("FRAMEWORKS", frameworks, file=sys.stderr)
sys.exit(code)
"""


def console(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=folder, env={**clean, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "FRAMEWORKS []" in result.stderr, result.stderr
    return result


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS_V1))
    return tmp_path


def test_the_workflow_from_pyproject_alone(folder: Path, db_url: str) -> None:
    (folder / "pyproject.toml").write_text(
        f'[tool.async_migrate]\nurl = "{db_url}"\nmetadata = "models:Base"\nlock_timeout = 20\n'
    )
    ok(console(folder, "init"))
    ok(console(folder, "migrate", "-m", "create account"))
    applied = ok(console(folder, "upgrade"))
    assert "Applied upgrade" in applied.stderr
    assert set(tables(db_url)["account"]) == {"id", "name"}
    current = ok(console(folder, "current")).stdout
    assert "(head)" in current
    assert "create account" in ok(console(folder, "history")).stdout
    (folder / "models.py").write_text(textwrap.dedent(MODELS_V2))
    ok(console(folder, "migrate", "-m", "add email"))
    ok(console(folder, "upgrade"))
    assert "email" in tables(db_url)["account"]
    reverted = ok(console(folder, "downgrade"))
    assert "Reverted 1 revision(s)" in reverted.stderr, reverted.stderr
    assert "email" not in tables(db_url)["account"]
    assert ok(console(folder, "upgrade")).returncode == 0
    assert ok(console(folder, "upgrade")).stdout.strip().startswith("Already at head (")


def test_flags_and_the_environment_instead_of_pyproject(folder: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'flags.db'}"
    ok(console(folder, "-d", "db_migrations", "init"))
    ok(console(folder, "--url", url, "--metadata", "models:Base.metadata", "-d", "db_migrations",
               "migrate", "-m", "first"))  # fmt: skip
    ok(console(folder, "--metadata", "models:Base", "-d", "db_migrations", "upgrade", DATABASE_URL=url))
    assert "account" in tables(url)
    assert (folder / "db_migrations" / "env.py").is_file()


def test_app_option_takes_a_migrator_factory(folder: Path, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'factory.db'}"
    (folder / "migrations_setup.py").write_text(
        "from async_migrate import Migrator\nfrom models import Base\n"
        f"def make():\n    return Migrator({url!r}, Base.metadata, 'migrations', lock_timeout=5)\n"
    )
    ok(console(folder, "--app", "migrations_setup:make", "init"))
    ok(console(folder, "--app", "migrations_setup:make", "migrate", "-m", "first"))
    ok(console(folder, "--app", "migrations_setup:make", "upgrade"))
    assert query(url, "SELECT count(*) FROM alembic_version") == [(1,)]


def test_commands_that_read_only_scripts_need_no_url(folder: Path) -> None:
    ok(console(folder, "init"))
    ok(console(folder, "revision", "-m", "by hand", "--rev-id", "r01"))
    assert "r01" in ok(console(folder, "heads")).stdout
    assert "by hand" in ok(console(folder, "history")).stdout
    refused = console(folder, "current")
    assert refused.returncode == 1 and "No database URL: pass --url" in refused.stderr, refused
    bad = console(folder, "--metadata", "models", "check")
    assert bad.returncode == 1 and "module:attribute" in bad.stderr and "Traceback" not in bad.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("async-migrate")
    if not script.exists():
        found = shutil.which("async-migrate")
        assert found, "the async-migrate console script is not installed (pyproject [project.scripts])"
        script = Path(found)
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "upgrade" in result.stdout, result


def test_commands_embedded_in_any_click_group(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'embedded.db'}"

    @click.group()
    def manage() -> None:
        """An app's own CLI."""

    add_migration_commands(manage, lambda: Migrator(url, None, str(tmp_path / "migrations")))
    runner = CliRunner()
    assert runner.invoke(manage, ["db", "init"]).exit_code == 0
    made = runner.invoke(manage, ["db", "revision", "-m", "first", "--rev-id", "e01"])
    assert made.exit_code == 0, made.output
    upgraded = runner.invoke(manage, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert query(url, "SELECT version_num FROM alembic_version") == [("e01",)]
    assert "Already at head (e01)." in runner.invoke(manage, ["db", "upgrade"]).output


def test_readiness_for_any_framework(tmp_path: Path) -> None:
    import asyncio

    from async_migrate.health import readiness

    from conftest import chain, make_migrations

    url = f"sqlite+aiosqlite:///{tmp_path / 'ready.db'}"

    async def probe() -> list[tuple[int, dict[str, object]]]:
        directory = await make_migrations(url, tmp_path / "migrations", chain(2))
        async with Migrator(url, None, directory, stdout=None) as migrator:
            behind = await readiness(migrator)
            await migrator.upgrade()
            return [behind, await readiness(migrator)]

    behind, ready = asyncio.run(probe())
    assert behind == (503, {"status": "behind", "revision": [], "heads": ["r02"], "migrating": False})
    assert ready == (200, {"status": "ok", "revision": ["r02"], "heads": ["r02"], "migrating": False})


def test_app_option_takes_a_quart_app_with_migrate(tmp_path: Path) -> None:
    """`async-migrate --app app:app` runs on a Quart app's Migrate setup, as `quart db` would."""
    from conftest import APP

    url = f"sqlite+aiosqlite:///{tmp_path / 'quart.db'}"
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS_V1))
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "DATABASE_URL": url}
    for args in (["init"], ["migrate", "-m", "first"], ["upgrade"], ["current"]):
        result = subprocess.run(
            [sys.executable, "-m", "async_migrate", "--app", "app:app", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, (args, result.stderr)
    assert "(head)" in result.stdout
    assert "account" in tables(url)
    missing = subprocess.run(
        [sys.executable, "-m", "async_migrate", "--app", "nosuchmodule:app", "current"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "Cannot import 'nosuchmodule'" in missing.stderr, missing
    assert "Traceback" not in missing.stderr
