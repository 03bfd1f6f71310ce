"""``async-migrate test`` (and ``quart db test``): the test kit's checks without pytest, for CI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from test_pytest_plugin import GOOD, MODELS, SCRIPT

from conftest import execute, make_migrations_sync, query, run


def folder_with(tmp_path: Path, scripts: dict[str, tuple[str | None, list[str], list[str]]]) -> Path:
    (tmp_path / "models.py").write_text(textwrap.dedent(MODELS).format(extra=""))
    migrations = make_migrations_sync(f"sqlite+aiosqlite:///{tmp_path}/unused.db", tmp_path / "migrations", [])
    for rev, (down, up, back) in scripts.items():
        (migrations / "versions" / f"{rev}_step.py").write_text(
            SCRIPT.format(
                rev=rev, down=down, upgrade="\n".join("    " + line for line in up),
                downgrade="\n".join("    " + line for line in back),
            )
        )
    return tmp_path


def kit(folder: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "async_migrate", "--url", url, "--metadata", "models:metadata",
         "test", *args],
        cwd=folder, capture_output=True, text=True, timeout=300, env={**env, "PYTHONPATH": str(folder)},
    )  # fmt: skip


def test_a_good_history_passes(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, GOOD)
    result = kit(folder, f"sqlite+aiosqlite:///{tmp_path}/kit.db")
    assert result.returncode == 0, result
    assert [line.split()[1] for line in result.stdout.splitlines()] == [
        "single_head", "upgrade", "model_matches_ddl", "up_down_consistency", "stairway",
        "downgrade_leaves_no_trace", "lint_clean",
    ]  # fmt: skip
    assert all(line.startswith("PASS ") for line in result.stdout.splitlines())


def test_a_fault_fails_the_run_naming_the_revision(tmp_path: Path, pg_url: str) -> None:
    folder = folder_with(tmp_path, {**GOOD, "r3": ("r2", GOOD["r3"][1], GOOD["r3"][2][:2])})
    result = kit(folder, pg_url, "--only", "stairway,downgrade_leaves_no_trace")
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert lines[0].startswith("PASS stairway")
    assert lines[1].startswith("FAIL downgrade_leaves_no_trace: The downgrade of revision r3")
    assert "enum type account_status is left behind" in lines[1]
    assert lines[2] == "1 check(s) failed: downgrade_leaves_no_trace."
    assert query(pg_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]


def test_a_database_with_tables_is_never_touched(tmp_path: Path, pg_url: str) -> None:
    run(execute(pg_url, "CREATE TABLE precious (id integer)"))
    folder = folder_with(tmp_path, GOOD)
    result = kit(folder, pg_url)
    assert result.returncode == 1
    assert "need an empty, throwaway database" in result.stderr and "table precious" in result.stderr
    assert query(pg_url, "SELECT count(*) FROM precious") == [(0,)]
    unknown = kit(folder, pg_url, "--only", "stairs")
    assert unknown.returncode == 1 and "No check named stairs; the checks are: single_head" in unknown.stderr


def test_a_multi_database_project_is_refused(tmp_path: Path) -> None:
    import asyncio

    import pytest

    from async_migrate import Migrator
    from async_migrate.testkit import CheckFailed, run_check

    async def go() -> None:
        main = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
        users = f"sqlite+aiosqlite:///{tmp_path / 'users.db'}"
        async with Migrator(main, None, tmp_path / "m", stdout=None, binds={"users": (users, None)}) as m:
            await m.init()
            with pytest.raises(CheckFailed, match="single-database project"):
                await run_check("stairway", m)

    asyncio.run(go())
