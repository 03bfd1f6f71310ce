"""Benchmark: the test kit's stairway on a 200-revision history, beside pytest-alembic.

Measured in the same run, on the same 200 revision scripts (one table and one index each, as in
:mod:`bench.upgrade_speed`), each on a fresh SQLite file, each a whole process (imports included):

- ours: the ``stairway`` check (for each revision: upgrade to it, downgrade one step, upgrade again: 600
  migrations), and our ``up_down_consistency`` (base to head, head to base);
- pytest-alembic's ``test_up_down_consistency`` (``pytest --test-alembic``, its built-in test: upgrade
  to head, then each revision down and back), with a plain env.py on the connection it hands in.

Target: per migration command, our stairway (three per revision: 600) takes at most 2x pytest-alembic's
up/down consistency test (one up and one down per revision, each its own Alembic command: 400). The
whole times are printed beside it. pytest-alembic lives in its own virtualenv (``.bench-venv-pytest-alembic``, or
``ASYNC_MIGRATE_BENCH_PA_VENV``), made on demand with the same Alembic and SQLAlchemy as ours. Medians of
3 runs (1 with ``--quick``), interleaved.

Run it alone with ``python -m bench.stairway [--quick]`` or with the others via ``python -m bench``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .ledger_cost import scratch_environment
from .upgrade_speed import (
    PROJECT_ROOT,
    BenchError,
    _check_run,
    _machine,
    _quiet_check,
    _table,
    _verdict,
    make_history,
    venv_python,
)

TITLE = "the test kit's stairway beside pytest-alembic's up/down consistency test"
REVISIONS = 200
TARGET_FACTOR = 2.0

OURS = """
import asyncio, sys
from async_migrate import Migrator
from async_migrate.testkit import run_check

async def main():
    async with Migrator(sys.argv[1], None, sys.argv[2], stdout=None) as migrator:
        await run_check(sys.argv[3], migrator)

asyncio.run(main())
"""

# pytest-alembic hands env.py an Engine (as its docs' env.py expects): one transaction per run.
PA_ENV = '''"""env.py for pytest-alembic (benchmark): the engine it hands in, one transaction."""
from alembic import context

with context.config.attributes["connection"].connect() as connection:
    context.configure(connection=connection, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()
'''

PA_CONFTEST = """
import os

import pytest
import sqlalchemy as sa


@pytest.fixture
def alembic_config():
    return {"script_location": os.environ["BENCH_PLAIN"]}


@pytest.fixture
def alembic_engine():
    return sa.create_engine("sqlite:///" + os.environ["BENCH_DB"])
"""


def pytest_alembic_python() -> Path:
    venv = (
        os.environ.get("ASYNC_MIGRATE_BENCH_PA_VENV") or PROJECT_ROOT / ".bench-venv-pytest-alembic"
    )
    # pytest-alembic 0.13 breaks on pytest 9's collectors.
    return venv_python(Path(venv), ["pytest-alembic", "pytest<8.4"])


def _timed(command: Sequence[str], what: str, **kwargs: object) -> float:
    started = time.perf_counter()
    _check_run(command, what, **kwargs)  # type: ignore[arg-type]
    return time.perf_counter() - started


def run(quick: bool = False) -> bool:
    repetitions = 1 if quick else 3
    print(f"Benchmark stairway: {TITLE}")
    print(f"  date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    samples: dict[str, list[float]] = {}
    with scratch_environment("bench-stairway-") as env:
        workdir = env.workdir
        print(f"  machine: {_machine(env)}")
        print(f"  before:  {_quiet_check(env)}", flush=True)
        pa_python = pytest_alembic_python()
        history = make_history(REVISIONS, workdir / "history", env, references=False)
        plain = workdir / "plain"
        plain.mkdir()
        (plain / "env.py").write_text(PA_ENV)
        (plain / "versions").symlink_to(history.ours / "versions")
        project = workdir / "pa-project"
        project.mkdir()
        (project / "tests").mkdir()  # where pytest-alembic puts its tests by default
        (project / "tests" / "conftest.py").write_text(PA_CONFTEST)
        (project / "pytest.ini").write_text("[pytest]\n")
        for repetition in range(1, repetitions + 1):
            line = []
            for case in ("ours-stairway", "ours-up-down", "pytest-alembic"):
                database = env.scratch(f"{case}.db")
                if case == "pytest-alembic":
                    command = [str(pa_python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--test-alembic", "-k", "test_up_down_consistency", "tests"]  # fmt: skip
                    seconds = _timed(command, case, cwd=project, env={
                        **os.environ, "BENCH_PLAIN": str(plain), "BENCH_DB": str(database)})  # fmt: skip
                else:
                    check = "stairway" if case == "ours-stairway" else "up_down_consistency"
                    url = env.sqlite_url(database)
                    command = [sys.executable, "-c", OURS, url, str(history.ours), check]
                    seconds = _timed(command, case, cwd=PROJECT_ROOT)
                samples.setdefault(case, []).append(seconds)
                line.append(f"{case} {seconds:.2f}")
            print(f"  run {repetition}, {REVISIONS} revisions (s): {', '.join(line)}", flush=True)
        print(f"  after:   {_quiet_check(env)}")
    median = {case: statistics.median(values) for case, values in samples.items()}
    ours_each = median["ours-stairway"] / (3 * REVISIONS) * 1000
    theirs_each = median["pytest-alembic"] / (2 * REVISIONS) * 1000
    ratio = ours_each / theirs_each
    passed = ratio <= TARGET_FACTOR
    rows = [
        ["case", "median (s)", "per migration (ms)", "vs pytest-alembic", "target", "verdict"],
        [f"ours: stairway ({3 * REVISIONS} migrations)", f"{median['ours-stairway']:.2f}",
         f"{ours_each:.1f}", f"{ratio:.2f}x", f"<= {TARGET_FACTOR}x", _verdict(passed)],
        ["ours: up_down_consistency (head, then base)", f"{median['ours-up-down']:.2f}", "", "",
         "(diagnostic)", ""],
        [f"pytest-alembic: test_up_down_consistency ({2 * REVISIONS} migrations)",
         f"{median['pytest-alembic']:.2f}", f"{theirs_each:.1f}", "1.00x", "", ""],
    ]  # fmt: skip
    print()
    print("\n".join(_table(rows, "  ")))
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stairway", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args(argv)
    try:
        return 0 if run(quick=args.quick) else 1
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
