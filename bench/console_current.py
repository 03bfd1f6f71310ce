"""Benchmark: `async-migrate current` vs `alembic current`, whole process, on the same scripts.

Target: ``async-migrate current`` at head, 100 revisions on a SQLite file, takes <= 1.0 x the wall time of
``alembic current`` on the same revision scripts and database, both measured in the same run.

- One history of 100 revisions (each creating a table), written once into async_migrate's migrations
  folder (``Migrator.init``, the ``async`` template) and copied into a folder made by ``alembic init``
  (Alembic's ``generic`` template, sync ``sqlite:///`` URL on the same file). The database is upgraded to
  head once, untimed.
- Each case is a whole process: ``python -m async_migrate --url ... --metadata ... current`` (the
  console's own startup included) and ``alembic -c alembic.ini current``; each run's stdout must name the
  head. One untimed warm-up run each first (bytecode, OS file cache), then ``REPETITIONS`` interleaved
  runs; medians compared.

Run it alone with ``python -m bench console_current [--quick]`` or with the others via ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from async_migrate import Migrator

REVISIONS = 100
REPETITIONS = 7
TARGET = 1.0

MODELS = """import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
"""

SCRIPT = '''"""table {n}"""
from alembic import op
import sqlalchemy as sa

revision = "r{n:03d}"
down_revision = {down}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("t{n:03d}", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("t{n:03d}")
'''


def timed(command: list[str], cwd: Path, head: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or head not in result.stdout:
        raise RuntimeError(
            f"{command[:3]} failed or did not name {head}: {result.stdout}{result.stderr}"
        )
    return elapsed


def prepare(root: Path) -> tuple[list[str], list[str], str]:
    database = root / "bench.db"
    ours = root / "ours"
    ours.mkdir()
    (ours / "models.py").write_text(MODELS)

    async def init_and_upgrade() -> None:
        async with Migrator(
            f"sqlite+aiosqlite:///{database}", None, ours / "migrations", stdout=None
        ) as m:
            await m.init()
            for n in range(1, REVISIONS + 1):
                down = f'"r{n - 1:03d}"' if n > 1 else "None"
                (ours / "migrations" / "versions" / f"r{n:03d}.py").write_text(
                    SCRIPT.format(n=n, down=down)
                )
            await m.upgrade()

    asyncio.run(init_and_upgrade())
    theirs = root / "alembic"
    theirs.mkdir()
    alembic = str(Path(sys.executable).with_name("alembic"))
    subprocess.run([alembic, "init", "migrations"], cwd=theirs, check=True, capture_output=True)
    ini = theirs / "alembic.ini"
    ini.write_text(
        ini.read_text().replace("driver://user:pass@localhost/dbname", f"sqlite:///{database}")
    )
    for script in (ours / "migrations" / "versions").glob("r*.py"):
        shutil.copy(script, theirs / "migrations" / "versions" / script.name)
    console = [
        sys.executable, "-m", "async_migrate", "--url", f"sqlite+aiosqlite:///{database}",
        "--metadata", "models:Base", "current",
    ]  # fmt: skip
    return console, [alembic, "-c", str(ini), "current"], f"r{REVISIONS:03d}"


def run(quick: bool = False) -> bool:
    repetitions = 3 if quick else REPETITIONS
    print(
        f"Benchmark console_current: async-migrate current vs alembic current, {REVISIONS} revisions, SQLite"
    )
    root = Path(tempfile.mkdtemp(prefix="am-bench-current-"))
    try:
        console, alembic, head = prepare(root)
        ours_dir, theirs_dir = root / "ours", root / "alembic"
        timed(console, ours_dir, head)
        timed(alembic, theirs_dir, head)
        ours, theirs = [], []
        for _ in range(repetitions):
            ours.append(timed(console, ours_dir, head))
            theirs.append(timed(alembic, theirs_dir, head))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    ratio = ours_median / theirs_median
    print(f"  async-migrate current (s): {', '.join(f'{t:.3f}' for t in ours)}")
    print(f"  alembic current (s):       {', '.join(f'{t:.3f}' for t in theirs)}")
    passed = ratio <= TARGET
    print(
        f"  medians: ours {ours_median:.3f} s, alembic {theirs_median:.3f} s, ratio {ratio:.2f} "
        f"(target <= {TARGET:.1f}): {'PASS' if passed else 'FAIL'}"
    )
    return passed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.console_current")
    parser.add_argument("--quick", action="store_true")
    raise SystemExit(0 if run(parser.parse_args().quick) else 1)
