"""Benchmark: what the ledger (a row per revision, with the script's checksum and source) costs.

Targets, each measured against the same upgrade with ``ledger=False`` in the same run:

1. Full upgrade of 200 revisions on an empty PostgreSQL database (asyncpg): what the ledger adds <= 5%.
   Measured inside each pair of runs (back to back, on first in odd pairs, off first in even ones): the
   time in the ledger's callback with the ledger on (it writes the row, and sends the revision's
   version-table UPDATE inside the same statement), less the time the UPDATEs' round trips take with
   the ledger off, over the whole call with the ledger off; the median over the pairs. Why not the
   ratio of the whole calls: the server's time for the same DDL differs by more than 10% between two
   runs back to back here (the median CREATE took 1.45 to 2.16 ms in six runs of one series), which
   buries a few percent; that ratio, the fastest of each, every pair's ratio and the CPU time are
   printed beside it. What the count leaves out (a commit that writes more WAL: 1.4 KB per revision,
   no more fsyncs) those show.
2. No-op upgrade at head (the startup path), the first call in a fresh process, on a SQLite file with a
   1,000-revision history and a warm heads cache: on - off <= 1 ms (the path reads no ledger; the bound is
   the noise between fresh processes). The same on PostgreSQL is printed beside it.

Diagnostics: the full upgrade of 1,000 revisions on an empty SQLite file, on and off; a deploy (one new
revision on a SQLite file with the 999 others applied), where the ledger first checks every applied
script against the database's copy.

How: the histories and measuring subprocesses of :mod:`bench.upgrade_speed` (one table and one index per
revision; each timed upgrade is the first call in a fresh process, after Alembic and the driver are
imported for a full upgrade, only ``async_migrate`` for a no-op); a fresh database per run, PostgreSQL after
a ``CHECKPOINT``; medians of 5 runs per case (3 with ``--quick``), 9 for the PostgreSQL full upgrade (5),
on and off interleaved, after one untimed warm-up run. Every full upgrade must end at head with every table and index, and with ledger on, with one
ledger row per revision.

Run it alone with ``python -m bench.ledger_cost [--quick]`` or with the others via ``python -m bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from .upgrade_speed import (
    BenchError,
    Environment,
    History,
    Samples,
    _machine,
    _ours_upgrade,
    _quiet_check,
    _table,
    _verdict,
    make_history,
    server_url,
    verify_pg,
    verify_sqlite,
)

TITLE = "the ledger's cost: upgrades with the ledger on and off"
PG_REVISIONS = 200
SQLITE_REVISIONS = 1_000
REPETITIONS = 5
QUICK_REPETITIONS = 3
# The PostgreSQL pairs differ by a few percent and the machine's noise between two runs is larger: more
# of them, so that the median ratio settles.
PG_REPETITIONS = 9
QUICK_PG_REPETITIONS = 5
FULL_FACTOR = 1.05
NOOP_MARGIN_MS = 1.0
MODES = {"on": {}, "off": {"ledger": False}}


def _ledger_rows(env: Environment, database: str) -> int:
    return int(env.psql(database, "-A", "-t", "-c", "SELECT count(*) FROM alembic_version_log"))


def _sqlite_ledger_rows(path: Path) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        return int(connection.execute("SELECT count(*) FROM alembic_version_log").fetchone()[0])


def measure_full_pg(env: Environment, history: History, repetitions: int, samples: Samples) -> None:
    for repetition in range(1, repetitions + 1):
        line = []
        # On, off, then off, on: a machine that speeds up or slows down over a pair favours neither.
        for mode in MODES if repetition % 2 else reversed(MODES):
            database = env.create_database(f"ledger_{mode}")
            try:
                env.psql("postgres", "-c", "CHECKPOINT")
                url = env.pg_url(database, "asyncpg")
                report = _ours_upgrade(
                    env, url, history, history.size, preload=True, time_ledger=True, **MODES[mode]
                )
                verify_pg(env, database, history, f"full upgrade on PostgreSQL (ledger {mode})")
                if mode == "on" and _ledger_rows(env, database) != history.size:
                    raise BenchError(f"the ledger has not {history.size} rows after the upgrade")
            finally:
                env.drop_database(database)
            samples.add(f"pg-{mode}", float(report["call_s"]))
            samples.add(f"pg-cpu-{mode}", float(report["cpu_s"]))
            samples.add(f"pg-ledger-{mode}", float(report["ledger_s"]))
            line.append(f"{mode} {float(report['call_s']):.2f} (CPU {float(report['cpu_s']):.2f})")
        print(f"  run {repetition}, full upgrade, PostgreSQL, {history.size} revisions (s): "
              f"{', '.join(line)}", flush=True)  # fmt: skip


def measure_full_sqlite(
    env: Environment, history: History, repetitions: int, samples: Samples
) -> None:
    for repetition in range(1, repetitions + 1):
        line = []
        for mode, options in MODES.items():
            path = env.scratch(f"full-{mode}.db")
            report = _ours_upgrade(
                env, env.sqlite_url(path), history, history.size, preload=True, **options
            )
            verify_sqlite(path, history, f"full upgrade on SQLite (ledger {mode})")
            if mode == "on" and _sqlite_ledger_rows(path) != history.size:
                raise BenchError(f"the ledger has not {history.size} rows after the upgrade")
            if mode == "on" and not history.head_db.exists():
                shutil.copyfile(path, history.head_db)  # the database the no-op runs start from
            path.unlink()
            samples.add(f"sqlite-{mode}", float(report["call_s"]))
            line.append(f"{mode} {float(report['call_s']):.2f}")
        print(f"  run {repetition}, full upgrade, SQLite, {history.size} revisions (s): "
              f"{', '.join(line)}", flush=True)  # fmt: skip


def measure_noop(
    env: Environment, history: History, pg_history: History, repetitions: int, samples: Samples
) -> None:
    pg_database = env.create_database("ledger_noop")
    _ours_upgrade(env, env.pg_url(pg_database, "asyncpg"), pg_history, pg_history.size)
    warm = env.fresh_copy(history, "noop-warmup.db")
    _ours_upgrade(env, env.sqlite_url(warm), history, 0)  # writes the heads cache: warm runs only
    for repetition in range(1, repetitions + 1):
        line = []
        for mode, options in MODES.items():
            path = env.fresh_copy(history, f"noop-{mode}.db")
            sqlite_s = float(
                _ours_upgrade(env, env.sqlite_url(path), history, 0, **options)["call_s"]
            )
            path.unlink()
            url = env.pg_url(pg_database, "asyncpg")
            pg_s = float(_ours_upgrade(env, url, pg_history, 0, **options)["call_s"])
            samples.add(f"noop-sqlite-{mode}", sqlite_s)
            samples.add(f"noop-pg-{mode}", pg_s)
            line.append(f"{mode} SQLite {sqlite_s * 1000:.1f} PostgreSQL {pg_s * 1000:.1f}")
        print(f"  run {repetition}, no-op at head (ms): {'; '.join(line)}", flush=True)


def measure_deploy(env: Environment, history: History, repetitions: int, samples: Samples) -> None:
    """A deploy: one new revision on a SQLite file with all the others applied (with the ledger, the
    upgrade first checks every applied script against it; its checksums cache is warm after the
    first run, as on a machine that keeps the migrations folder)."""
    import asyncio

    from async_migrate import Migrator

    behind = env.scratch("deploy-behind.db")
    shutil.copyfile(history.head_db, behind)

    async def step_back() -> None:
        async with Migrator(env.sqlite_url(behind), None, history.ours, stdout=None) as migrator:
            await migrator.downgrade("-1")

    asyncio.run(step_back())
    warmup = env.scratch("deploy-warmup.db")
    shutil.copyfile(behind, warmup)
    _ours_upgrade(env, env.sqlite_url(warmup), history, 1, preload=True)
    for repetition in range(1, repetitions + 1):
        line = []
        for mode in MODES if repetition % 2 else reversed(MODES):
            path = env.scratch(f"deploy-{mode}.db")
            shutil.copyfile(behind, path)
            report = _ours_upgrade(
                env, env.sqlite_url(path), history, 1, preload=True, **MODES[mode]
            )
            path.unlink()
            samples.add(f"deploy-{mode}", float(report["call_s"]))
            line.append(f"{mode} {float(report['call_s']) * 1000:.1f}")
        print(f"  run {repetition}, one new revision on {history.size - 1:,} applied, SQLite (ms): "
              f"{', '.join(line)}", flush=True)  # fmt: skip


def report(samples: Samples) -> bool:
    def ms(case: str) -> str:
        return f"{samples.median(case) * 1000:.1f}"

    def paired(case: str) -> float:
        # The median of each run's on/off ratio: the two ran back to back, so a drift of the machine
        # over the runs (a server getting slower as its files grow) cancels out.
        on, off = samples.values[f"{case}-on"], samples.values[f"{case}-off"]
        return statistics.median(a / b for a, b in zip(on, off, strict=True))

    pg_ratio, sqlite_ratio = paired("pg"), paired("sqlite")
    values = samples.values
    ratios = sorted(a / b for a, b in zip(values["pg-on"], values["pg-off"], strict=True))
    fastest = min(values["pg-on"]) / min(values["pg-off"])
    cpu_ratio = paired("pg-cpu")
    # What the ledger adds where it adds it: its callback (row and the UPDATE it carries) in the run
    # with it, less the UPDATEs' own round trips in the run without, over the run without.
    added = statistics.median(
        1 + (on - off) / total
        for on, off, total in zip(
            values["pg-ledger-on"], values["pg-ledger-off"], values["pg-off"], strict=True
        )
    )
    noop_delta = (samples.median("noop-sqlite-on") - samples.median("noop-sqlite-off")) * 1000
    pg_noop_delta = (samples.median("noop-pg-on") - samples.median("noop-pg-off")) * 1000
    deploy_delta = (samples.median("deploy-on") - samples.median("deploy-off")) * 1000
    full_ok, noop_ok = added <= FULL_FACTOR, noop_delta <= NOOP_MARGIN_MS
    rows = [
        ["case", "ledger on", "ledger off", "on vs off", "target", "verdict"],
        [f"full upgrade, PostgreSQL, {PG_REVISIONS} revisions: what the ledger's work adds (ms)",
         ms("pg-ledger-on"), ms("pg-ledger-off"), f"{added:.3f}x", f"<= {FULL_FACTOR}x",
         _verdict(full_ok)],
        ["  the same, whole calls (ms)", ms("pg-on"), ms("pg-off"), f"{pg_ratio:.3f}x",
         "(diagnostic)", ""],
        ["  the same: fastest on vs fastest off", "", "", f"{fastest:.3f}x", "(diagnostic)", ""],
        ["  the same: pairs' ratios, lowest to highest", "", "",
         " ".join(f"{r:.2f}" for r in ratios), "(diagnostic)", ""],
        ["  the same: CPU time of the process", ms("pg-cpu-on"), ms("pg-cpu-off"),
         f"{cpu_ratio:.3f}x", "(diagnostic)", ""],
        [f"no-op at head, SQLite, {SQLITE_REVISIONS:,} revisions (ms)", ms("noop-sqlite-on"),
         ms("noop-sqlite-off"), f"{noop_delta:+.2f} ms", f"<= +{NOOP_MARGIN_MS:g} ms",
         _verdict(noop_ok)],
        [f"no-op at head, PostgreSQL, {PG_REVISIONS} revisions (ms)", ms("noop-pg-on"),
         ms("noop-pg-off"), f"{pg_noop_delta:+.2f} ms", "(diagnostic)", ""],
        [f"one new revision on {SQLITE_REVISIONS - 1:,} applied, SQLite (ms)", ms("deploy-on"),
         ms("deploy-off"), f"{deploy_delta:+.1f} ms", "(diagnostic)", ""],
        [f"full upgrade, SQLite, {SQLITE_REVISIONS:,} revisions (ms)", ms("sqlite-on"),
         ms("sqlite-off"), f"{sqlite_ratio:.3f}x", "(diagnostic)", ""],
    ]  # fmt: skip
    print()
    print("\n".join(_table(rows, "  ")))
    return full_ok and noop_ok


@contextlib.contextmanager
def scratch_environment(prefix: str) -> Iterator[Environment]:
    """An Environment with a work folder (removed after) and no reference venv."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    env = Environment(
        python=Path(sys.executable), reference_python=Path(sys.executable), server=server_url(),
        workdir=workdir,
    )  # fmt: skip
    try:
        (workdir / "runs").mkdir()
        yield env
    finally:
        env.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def run(quick: bool = False) -> bool:
    """Run the benchmark, print its table, and return whether both targets passed."""
    repetitions = QUICK_REPETITIONS if quick else REPETITIONS
    pg_repetitions = QUICK_PG_REPETITIONS if quick else PG_REPETITIONS
    print(f"Benchmark ledger_cost: {TITLE}")
    print(f"  date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    samples = Samples()
    with scratch_environment("bench-ledger-cost-") as env:
        print(f"  machine: {_machine(env)}")
        print(f"  method:  fresh process per timed call, fresh database per full upgrade, median of "
              f"{repetitions} runs ({pg_repetitions} for PostgreSQL's full upgrade), ledger on/off "
              "interleaved, after 1 untimed warm-up run")  # fmt: skip
        print(f"  before:  {_quiet_check(env)}", flush=True)
        sqlite_history = make_history(
            SQLITE_REVISIONS, env.workdir / "sqlite", env, references=False
        )
        pg_history = make_history(PG_REVISIONS, env.workdir / "pg", env, references=False)
        warm = env.scratch("warmup.db")
        _ours_upgrade(env, env.sqlite_url(warm), pg_history, PG_REVISIONS, preload=True)
        measure_full_sqlite(env, sqlite_history, repetitions, samples)
        measure_full_pg(env, pg_history, pg_repetitions, samples)
        measure_noop(env, sqlite_history, pg_history, repetitions, samples)
        measure_deploy(env, sqlite_history, repetitions, samples)
        print(f"  after:   {_quiet_check(env)}")
    return report(samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_cost", description=TITLE)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPETITIONS} repetitions")
    args = parser.parse_args(argv)
    return 0 if run(quick=args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
