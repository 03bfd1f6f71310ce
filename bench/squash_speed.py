"""Benchmark: a fresh database from a squashed 1,000-revision history.

Measured in the same run, each the first call in a fresh process after its imports, each on a new SQLite
file, for the history of :mod:`bench.upgrade_speed` (one table and one index per revision):

- the unsquashed chain: ``await Migrator(...).upgrade()`` through 1,000 revisions;
- the squashed chain: the same after ``squash`` (one baseline revision that creates the 1,000 tables);
- the usual shortcut: ``metadata.create_all()`` of the same 1,000 tables and indexes (on the async
  engine, as an async app runs it: ``run_sync(metadata.create_all)``, which checks each table first), then
  ``stamp head`` (which loads the 1,000 scripts).

Target: the squashed upgrade <= 1.5x create_all + stamp. Medians of 3 runs (1 with ``--quick``).

Run it alone with ``python -m bench.squash_speed [--quick]`` or with the others via ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from .ledger_cost import scratch_environment
from .upgrade_speed import (
    MARKER,
    PROJECT_ROOT,
    Environment,
    _check_run,
    _machine,
    _ours_upgrade,
    _quiet_check,
    _table,
    _verdict,
    make_history,
    verify_sqlite,
)

TITLE = "a fresh database from a squashed 1,000-revision history"
REVISIONS = 1_000
TARGET_FACTOR = 1.5

CREATE_ALL = """
import asyncio, json, sys, time
import sqlalchemy as sa
from async_migrate import Migrator

def models(size):
    metadata = sa.MetaData()
    for n in range(size):
        table = f"bench_t{n:04d}"
        sa.Table(table, metadata,
                 sa.Column("id", sa.Integer(), nullable=False),
                 sa.Column("name", sa.String(length=100), nullable=False),
                 sa.Column("note", sa.Text(), nullable=True),
                 sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
                 sa.Index(f"ix_{table}_name", "name"))
    return metadata

async def main():
    url, directory, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    metadata = models(size)
    start = time.perf_counter()
    async with Migrator(url, metadata, directory, stdout=None) as migrator:
        async with migrator.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        await migrator.stamp("head")
    print(MARKER + json.dumps({"call_s": time.perf_counter() - start}))

asyncio.run(main())
"""


def run(quick: bool = False) -> bool:
    repetitions = 1 if quick else 3
    print(f"Benchmark squash_speed: {TITLE}")
    print(f"  date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    samples: dict[str, list[float]] = {}
    with scratch_environment("bench-squash-") as env:
        workdir = env.workdir
        print(f"  machine: {_machine(env)}")
        print(f"  before:  {_quiet_check(env)}", flush=True)
        chain = make_history(REVISIONS, workdir / "chain", env, references=False)
        squashed = make_history(REVISIONS, workdir / "squashed", env, references=False)
        _squash(env, squashed.ours)
        for repetition in range(1, repetitions + 1):
            line = []
            for case in ("unsquashed", "squashed", "create_all"):
                path = env.scratch(f"{case}.db")
                url = env.sqlite_url(path)
                if case == "create_all":
                    code = CREATE_ALL.replace("MARKER", repr(MARKER))
                    result = _check_run(
                        [sys.executable, "-c", code, url, str(chain.ours), str(REVISIONS)],
                        case, cwd=PROJECT_ROOT,
                    )  # fmt: skip
                    report = json.loads(result.stdout.split(MARKER, 1)[1].splitlines()[0])
                    verify_sqlite(path, chain, "create_all + stamp")
                else:
                    history = chain if case == "unsquashed" else squashed
                    expected = REVISIONS if case == "unsquashed" else 1
                    report = _ours_upgrade(env, url, history, expected, preload=True)
                    verify_sqlite(path, chain, f"upgrade ({case})")
                path.unlink()
                samples.setdefault(case, []).append(float(report["call_s"]))
                line.append(f"{case} {float(report['call_s']):.2f}")
            print(f"  run {repetition}, fresh SQLite file, {REVISIONS:,} revisions (s): "
                  f"{', '.join(line)}", flush=True)  # fmt: skip
        print(f"  after:   {_quiet_check(env)}")
    median = {case: statistics.median(values) for case, values in samples.items()}
    ratio = median["squashed"] / median["create_all"]
    passed = ratio <= TARGET_FACTOR
    rows = [
        ["case", "median (s)", "vs create_all + stamp", "target", "verdict"],
        [f"upgrade, squashed ({REVISIONS:,} revisions in 1)", f"{median['squashed']:.3f}",
         f"{ratio:.2f}x", f"<= {TARGET_FACTOR}x", _verdict(passed)],
        [f"upgrade, unsquashed ({REVISIONS:,} revisions)", f"{median['unsquashed']:.3f}",
         f"{median['unsquashed'] / median['create_all']:.2f}x", "(diagnostic)", ""],
        ["create_all() + stamp head", f"{median['create_all']:.3f}", "1.00x", "", ""],
    ]  # fmt: skip
    print()
    print("\n".join(_table(rows, "  ")))
    return passed


def _squash(env: Environment, directory: Path) -> None:
    from async_migrate import Migrator

    async def squash() -> None:
        url = env.sqlite_url(env.scratch("unused.db"))
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.squash(message="baseline")

    asyncio.run(squash())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.squash_speed", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one repetition")
    args = parser.parse_args(argv)
    return 0 if run(quick=args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
