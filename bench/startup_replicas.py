"""Benchmark: many replicas of a Quart app starting at once on an empty PostgreSQL database.

Target: 16 replicas starting at once on an empty PostgreSQL database with 100 revisions reach ready in
<= 1.2x the time of a single replica plus 1 s.

- A migrations directory is made with the package template (``Migrator.init``), plus a linear chain of 100
  hand-written revisions, each creating one small table and one index. Before every run it is reset to
  exactly what was generated (files a run left there, such as a heads cache, are removed), as on a fresh
  deploy.
- A replica is a separate OS process (``python -c "...bench.startup_replicas.main..." replica ...``), with
  ``PYTHONPYCACHEPREFIX`` pointing at a private bytecode cache that the warm-up run fills: no timed run
  compiles source (the project's own source tree gets no ``__pycache__``, even under
  ``PYTHONDONTWRITEBYTECODE``, as an installed package would have its bytecode). It builds a Quart
  app with ``Migrate(app, None, engine=create_async_engine(url), auto_upgrade=True)``, runs its startup
  through ``quart.testing.app.TestApp`` (so the ``before_serving`` auto-upgrade runs), sends one request
  through ``app.test_client()`` and prints, as one JSON line, the monotonic time at which it was ready and
  when it passed each step on the way (from async_migrate's log records).
- Case A: 1 replica on a fresh empty database. Case B: 16 replicas launched together on another fresh empty
  database. The measure is the wall time from launching the first process to the last replica ready,
  Python start-up included. Each case is repeated (fresh database each time, A and B interleaved) and the
  median is compared with the target. One untimed single-replica run first fills the bytecode cache and
  warms the OS file cache.
- Case C, a diagnostic with no target: 16 replicas on a database already at head (upgraded, untimed, before
  they start), so they find nothing to migrate: what starting 16 processes at once costs on this machine.
  Each run also prints a per-replica timeline (launch, imports done, upgrade start, lock taken or saw the
  migration finished, all revisions applied, ready) and the CPU the replicas used.
- After every run the database must be at the last revision with all tables and indexes there, and the
  replicas together must have applied each revision exactly once; otherwise the benchmark fails loudly.

The PostgreSQL server is ``ASYNC_MIGRATE_BENCH_PG`` (else ``ASYNC_MIGRATE_TEST_PG``, else
``postgresql+asyncpg://postgres@127.0.0.1:5432``): a server URL with no database; databases are created
and dropped on it through its ``postgres`` database.

Run it alone with ``python -m bench.startup_replicas [--quick]`` or with the others via ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

TITLE = "16 replicas starting at once on an empty PostgreSQL database with 100 revisions"
REVISIONS = 100
REPLICAS = 16
REPETITIONS = 3
TARGET_FACTOR = 1.2
TARGET_SLACK_S = 1.0

#: Seconds a replica's startup may take (TestApp's startup timeout and Migrate's lock timeout).
STARTUP_TIMEOUT_S = 120
#: Seconds to wait for all replicas of a run to exit before killing them.
RUN_TIMEOUT_S = STARTUP_TIMEOUT_S + 60

DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
REPORT_MARKER = "BENCH_REPLICA_REPORT "


class BenchError(RuntimeError):
    """The benchmark could not run, or what it measured was wrong."""


# -- the migrations directory ----------------------------------------------------------------------------

REVISION_SCRIPT = '''"""create table {table}

Revision ID: {revision}
Revises: {down_text}
Create Date: 2025-01-01 00:00:{second:02d}

"""
from collections.abc import Sequence

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = {revision!r}
down_revision: str | Sequence[str] | None = {down!r}
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        {table!r},
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name={primary_key!r}),
    )
    op.create_index({index!r}, {table!r}, ["name"], unique=False)


def downgrade() -> None:
    op.drop_index({index!r}, table_name={table!r})
    op.drop_table({table!r})
'''


def revision_id(number: int) -> str:
    """A fixed 12-hex-digit revision id, as Alembic makes them."""
    return hashlib.sha256(f"bench-startup-replicas-{number}".encode()).hexdigest()[:12]


def table_name(number: int) -> str:
    return f"bench_item_{number:03d}"


def index_name(number: int) -> str:
    return f"ix_{table_name(number)}_name"


def make_migrations(directory: Path, server: str) -> list[str]:
    """Create ``directory`` from the package template and write the revision chain; return its ids in order."""
    from async_migrate import Migrator

    async def init() -> None:
        async with Migrator(f"{server}/postgres", None, directory, stdout=None) as migrator:
            await migrator.init()

    # Alembic's init prints its progress on sys.stdout (older async_migrate releases let it through).
    with contextlib.redirect_stdout(io.StringIO()):
        asyncio.run(init())
    versions = directory / "versions"
    versions.mkdir(exist_ok=True)
    ids = [revision_id(number) for number in range(REVISIONS)]
    for number, revision in enumerate(ids):
        down = ids[number - 1] if number else None
        script = REVISION_SCRIPT.format(
            table=table_name(number),
            index=index_name(number),
            primary_key=f"pk_{table_name(number)}",
            revision=revision,
            down=down,
            down_text=down or "",
            second=number % 60,
        )
        (versions / f"{revision}_create_{table_name(number)}.py").write_text(script)
    return ids


def snapshot(directory: Path) -> frozenset[Path]:
    """Every file and folder under ``directory``."""
    return frozenset(directory.rglob("*"))


def reset_directory(directory: Path, generated: frozenset[Path]) -> None:
    """Remove whatever a run added under ``directory`` (a heads cache, ``__pycache__``, ...)."""
    for path in sorted(directory.rglob("*"), reverse=True):  # children before their folder
        if path in generated:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# -- databases --------------------------------------------------------------------------------------------


def server_url() -> str:
    url = (
        os.environ.get("ASYNC_MIGRATE_BENCH_PG")
        or os.environ.get("ASYNC_MIGRATE_TEST_PG")
        or DEFAULT_SERVER
    )
    return url.rstrip("/")


def _dsn(server: str, database: str) -> str:
    """The plain libpq-style DSN asyncpg wants, from a SQLAlchemy ``postgresql+asyncpg://`` server URL."""
    scheme, sep, rest = server.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise BenchError(f"Not a PostgreSQL server URL: {server!r}")
    return f"postgresql://{rest}/{database}"


#: Seconds to keep retrying a server that is momentarily full ("too many clients"): it may be shared.
CONNECT_PATIENCE_S = 30.0


async def _connect(server: str, database: str) -> Any:
    """An asyncpg connection, retried while the server has no free connection slot."""
    deadline = time.monotonic() + CONNECT_PATIENCE_S
    while True:
        try:
            return await asyncpg.connect(_dsn(server, database), timeout=10)
        except (asyncpg.TooManyConnectionsError, asyncpg.CannotConnectNowError):
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _admin(server: str, *statements: str) -> None:
    connection = await _connect(server, "postgres")
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def create_database(server: str, name: str) -> None:
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))


def drop_database(server: str, name: str) -> None:
    """Drop ``name``; if that fails, say so loudly (with the statement to run) rather than hide the error
    that may be on its way up."""
    statement = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    try:
        asyncio.run(_admin(server, statement))
    except Exception as exc:
        print(
            f"WARNING: could not drop the benchmark database {name} ({type(exc).__name__}: {exc}); "
            f"drop it by hand: {statement}",
            file=sys.stderr,
        )


def server_facts(server: str) -> tuple[str, int]:
    """The server's version, and how many other client sessions it has now (a busy server skews timings)."""

    async def read() -> tuple[str, int]:
        connection = await _connect(server, "postgres")
        try:
            version = str(await connection.fetchval("SHOW server_version"))
            others = int(
                await connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            )
            return version, others
        finally:
            await connection.close()

    return asyncio.run(read())


def verify_database(server: str, database: str, ids: Sequence[str]) -> None:
    """Raise BenchError unless ``database`` is at the last revision with every table and index."""

    async def check() -> None:
        connection = await _connect(server, database)
        try:
            versions = [
                row[0] for row in await connection.fetch("SELECT version_num FROM alembic_version")
            ]
            tables = {
                row[0]
                for row in await connection.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            indexes = {
                row[0]
                for row in await connection.fetch(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                )
            }
        finally:
            await connection.close()
        if versions != [ids[-1]]:
            raise BenchError(
                f"Database {database} is at {versions or 'base (no version row)'}, not at head {ids[-1]}"
            )
        missing = [table_name(n) for n in range(REVISIONS) if table_name(n) not in tables]
        missing += [index_name(n) for n in range(REVISIONS) if index_name(n) not in indexes]
        if missing:
            raise BenchError(
                f"Database {database} is at head but lacks {len(missing)} table(s)/index(es): "
                f"{', '.join(missing[:10])}"
            )

    asyncio.run(check())


# -- one replica (runs in its own process) ----------------------------------------------------------------

# async_migrate's log lines (format strings) that mark the steps of a startup upgrade.
_STEPS = {
    "Startup upgrade of ": "upgrade_start",
    "Waiting up to ": "wait_start",
    "Took the ": "lock_taken",
    "Another migrator brought ": "saw_done",
    "Applied %d revision(s)": "migrated",
    "Database %s ready at ": "upgrade_done",
}


class _StepRecorder(logging.Handler):
    """Notes the monotonic time of the first log record of each step, and how many revisions were applied."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.marks: dict[str, float] = {}
        self.applied = 0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        message = str(record.msg)
        if message.startswith("Applied %s %s"):  # one line per revision applied
            self.marks.setdefault("first_revision", now)
        for prefix, step in _STEPS.items():
            if message.startswith(prefix):
                self.marks.setdefault(step, now)
                if step == "upgrade_done" and isinstance(record.args, tuple):
                    self.applied = int(str(record.args[-1]))


def replica_main(argv: Sequence[str]) -> int:
    """Start one replica: build the app, run its startup (the auto-upgrade), serve one request, report."""
    marks = {"main": time.monotonic()}
    parser = argparse.ArgumentParser(prog="python -m bench.startup_replicas replica")
    parser.add_argument("--url", required=True, help="SQLAlchemy URL of the database")
    parser.add_argument("--directory", required=True, help="the migrations directory")
    args = parser.parse_args(argv)

    recorder = _StepRecorder()
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(relativeCreated)8.0fms %(levelname)s [%(name)s] %(message)s",
    )
    migrate_log = logging.getLogger("async_migrate")
    migrate_log.setLevel(logging.INFO)
    migrate_log.addHandler(recorder)

    from quart import Quart
    from quart.testing.app import TestApp
    from sqlalchemy.ext.asyncio import create_async_engine

    from async_migrate import Migrate

    marks["imported"] = time.monotonic()

    async def start() -> None:
        engine = create_async_engine(args.url)
        try:
            app = Quart(__name__)

            @app.get("/")
            async def index() -> str:
                return "ok"

            Migrate(
                app,
                None,
                directory=args.directory,
                engine=engine,
                auto_upgrade=True,
                lock_timeout=STARTUP_TIMEOUT_S,
            )
            marks["app_built"] = time.monotonic()
            async with TestApp(app, startup_timeout=STARTUP_TIMEOUT_S):
                marks["started"] = time.monotonic()
                response = await app.test_client().get("/")
                body = await response.get_data(as_text=True)
                if response.status_code != 200 or body != "ok":
                    raise RuntimeError(f"GET / answered {response.status_code} {body!r}")
                marks["ready"] = time.monotonic()
                report = {
                    "pid": os.getpid(),
                    "marks": {**marks, **recorder.marks},
                    "cpu_s": time.process_time(),
                    "applied": recorder.applied,
                }
                print(REPORT_MARKER + json.dumps(report), flush=True)
        finally:
            await engine.dispose()

    asyncio.run(start())
    return 0


# -- runs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaReport:
    launched: float
    pid: int
    marks: dict[str, float]
    cpu_s: float
    applied: int

    def at(self, step: str) -> float | None:
        return self.launched if step == "launch" else self.marks.get(step)


@dataclass(frozen=True)
class Run:
    label: str
    launched: float
    reports: tuple[ReplicaReport, ...]
    #: Seconds from launch until every replica had exited, and the machine's CPU use over it (0..1, all
    #: processes: replicas, PostgreSQL, anything else), or None where /proc/stat is missing.
    exited_s: float
    machine_busy: float | None

    @property
    def wall_s(self) -> float:
        """From launching the first process to the last replica ready."""
        return max(report.marks["ready"] for report in self.reports) - self.launched


def _tail(path: Path, lines: int = 25) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no output)"


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def _premigrate(url: str, directory: Path) -> None:
    from async_migrate import Migrator

    async def upgrade() -> None:
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.upgrade()

    asyncio.run(upgrade())


@dataclass(frozen=True)
class Setup:
    """What every run shares: the server, the generated migrations, a work folder, the bytecode cache."""

    server: str
    directory: Path
    generated: frozenset[Path]
    ids: tuple[str, ...]
    workdir: Path

    @property
    def pycache(self) -> Path:
        return self.workdir / "pycache"

    def replica_environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        return env


# The replica's entry point: imported (so its bytecode is cached like the rest), not run as ``-m``.
REPLICA_CODE = "import sys; from bench.startup_replicas import main; sys.exit(main(sys.argv[1:]))"


def run_replicas(label: str, count: int, setup: Setup, *, at_head: bool = False) -> Run:
    """Start ``count`` replicas at once on a fresh database; check the result; drop the database.

    With ``at_head`` the database is upgraded to head before the replicas start (untimed), so that they
    find nothing to do: the start-up cost alone.
    """
    database = f"bench_replicas_{label.lower()}_{uuid.uuid4().hex[:8]}"
    url = f"{setup.server}/{database}"
    create_database(setup.server, database)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if at_head:
            _premigrate(url, setup.directory)
        reset_directory(setup.directory, setup.generated)
        command = [
            sys.executable,
            "-c",
            REPLICA_CODE,
            "replica",
            "--url",
            url,
            "--directory",
            str(setup.directory),
        ]
        environment = setup.replica_environment()
        outputs = [
            (setup.workdir / f"{label}-{n:02d}.out", setup.workdir / f"{label}-{n:02d}.err")
            for n in range(count)
        ]
        launch_times: list[float] = []
        ticks_before = _cpu_ticks()
        launched = time.monotonic()
        for out_path, err_path in outputs:
            with out_path.open("wb") as out, err_path.open("wb") as err:
                launch_times.append(time.monotonic())
                processes.append(
                    subprocess.Popen(
                        command, cwd=PROJECT_ROOT, env=environment, stdout=out, stderr=err
                    )
                )
        deadline = launched + RUN_TIMEOUT_S
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"Run {label}: replica pid {process.pid} still running after {RUN_TIMEOUT_S}s"
                ) from None
        exited_s = time.monotonic() - launched
        ticks_after = _cpu_ticks()
        machine_busy = None
        if ticks_before and ticks_after and ticks_after[1] > ticks_before[1]:
            machine_busy = (ticks_after[0] - ticks_before[0]) / (ticks_after[1] - ticks_before[1])

        reports: list[ReplicaReport] = []
        for process, started, (out_path, err_path) in zip(
            processes, launch_times, outputs, strict=True
        ):
            found = [
                line[len(REPORT_MARKER) :]
                for line in out_path.read_text(errors="replace").splitlines()
                if line.startswith(REPORT_MARKER)
            ]
            if process.returncode != 0 or len(found) != 1:
                raise BenchError(
                    f"Run {label}: replica pid {process.pid} exited {process.returncode} "
                    f"with {len(found)} report(s); its stderr ends:\n{_tail(err_path)}"
                )
            data: dict[str, Any] = json.loads(found[0])
            reports.append(
                ReplicaReport(started, data["pid"], data["marks"], data["cpu_s"], data["applied"])
            )

        verify_database(setup.server, database, setup.ids)
        applied = sum(report.applied for report in reports)
        expected = 0 if at_head else len(setup.ids)
        if applied != expected:
            raise BenchError(
                f"Run {label}: the replicas applied {applied} revision(s) between them, not "
                f"{expected} (as counted from async_migrate's 'Database ... ready' log line): "
                + ", ".join(f"pid {r.pid}: {r.applied}" for r in reports)
            )
        return Run(label, launched, tuple(reports), exited_s, machine_busy)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        drop_database(setup.server, database)


# -- report -------------------------------------------------------------------------------------------------


def _cpus() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _machine(server: str) -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = f" ({line.split(':', 1)[1].strip()})"
                break
    version, _ = server_facts(server)
    return (
        f"nproc {_cpus()}{model}; {platform.python_implementation()} {platform.python_version()}; "
        f"PostgreSQL {version}; {platform.system()} {platform.machine()}"
    )


def _code_version() -> str:
    """The project's commit, and whether async_migrate has uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "log", "-1", "--format=%h %cI %s"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--", "async_migrate"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(not a git checkout)"
    return f"commit {commit}" + ("; async_migrate has uncommitted changes" if dirty else "")


def _quiet_check(server: str) -> str:
    """Load average and other database sessions, to judge whether the machine was quiet."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    before = _cpu_ticks()
    time.sleep(1.0)
    after = _cpu_ticks()
    busy = ""
    if before and after and after[1] > before[1]:
        busy = f"CPU {(after[0] - before[0]) / (after[1] - before[1]):.0%} busy over 1 s; "
    _, others = server_facts(server)
    return f"{busy}load average (1/5/15 min) {load}; other PostgreSQL client sessions: {others}"


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """A Markdown table, header first, columns padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        lines.append(
            indent + "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
        if n == 0:
            lines.append(indent + "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


# Timeline columns: (heading, step) or (heading, (step, fallback step)).
_TIMELINE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("launch", ("launch",)),
    ("main", ("main",)),
    ("imported", ("imported",)),
    ("upgrade start", ("upgrade_start",)),
    ("lock taken / saw done", ("lock_taken", "saw_done")),
    ("all applied", ("migrated",)),
    ("upgrade done", ("upgrade_done",)),
    ("ready", ("ready",)),
)


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return (
        f"min {min(values):.2f} / median {statistics.median(values):.2f} / max {max(values):.2f} s"
    )


def _durations(start: str, end: str, reports: Sequence[ReplicaReport]) -> list[float]:
    out = []
    for report in reports:
        a, b = report.at(start), report.at(end)
        if a is not None and b is not None:
            out.append(b - a)
    return out


def describe_run(run: Run) -> list[str]:
    """Per-replica timeline (seconds since the first launch) and where the time went."""
    rows: list[list[str]] = [["#", "role", *(h for h, _ in _TIMELINE), "cpu s"]]
    for n, report in enumerate(sorted(run.reports, key=lambda r: r.marks["ready"])):
        row = [str(n), "migrator" if report.applied else "waiter"]
        for _, steps in _TIMELINE:
            at = next((t for t in map(report.at, steps) if t is not None), None)
            row.append("-" if at is None else f"{at - run.launched:.2f}")
        rows.append([*row, f"{report.cpu_s:.2f}"])
    lines = [
        f"Run {run.label}: {len(run.reports)} replica(s), ready in {run.wall_s:.2f} s; "
        "timeline in s since the first launch:",
        *_table(rows, "  "),
    ]

    reports = list(run.reports)
    phases = (
        ("interpreter + bench module start (-> main)", "launch", "main"),
        ("imports: quart, sqlalchemy, async_migrate", "main", "imported"),
        ("app + lifespan start (-> upgrade start)", "imported", "upgrade_start"),
        ("upgrade start -> upgrade done", "upgrade_start", "upgrade_done"),
        ("upgrade done -> ready (one request)", "upgrade_done", "ready"),
    )
    lines.append("  phases, per replica:")
    lines += [f"    {name:<44} {_spread(_durations(a, b, reports))}" for name, a, b in phases]
    migrators = [r for r in reports if r.applied]
    waiters = [r for r in reports if not r.applied]
    for migrator in migrators:
        first = _durations("upgrade_start", "first_revision", [migrator])
        done = _durations("upgrade_start", "migrated", [migrator])
        lines.append(
            f"  migrator pid {migrator.pid}: {migrator.applied} revisions; from its upgrade start to the "
            f"first revision applied {first[0] if first else float('nan'):.2f} s, to all applied "
            f"{done[0] if done else float('nan'):.2f} s"
        )
    if migrators and waiters:
        finished = max(m.marks.get("upgrade_done", m.marks["ready"]) for m in migrators)
        lags = [w.marks["saw_done"] - finished for w in waiters if "saw_done" in w.marks]
        lines.append(
            f"  waiters ({len(waiters)}): saw the migration finished (next poll) after {_spread(lags)}"
        )
    cores = _cpus()
    cpu_total = sum(r.cpu_s for r in reports)
    lines.append(
        f"  CPU: replicas used {cpu_total:.2f} s of CPU in {run.wall_s:.2f} s on {cores} core(s): "
        f"{cpu_total / (run.wall_s * cores):.0%} of the machine (PostgreSQL's own CPU not counted); "
        f"that CPU alone needs >= {cpu_total / cores:.2f} s of wall time on {cores} core(s)"
    )
    if run.machine_busy is not None:
        lines.append(
            f"  machine: all {cores} core(s) {run.machine_busy:.0%} busy from launch until every replica "
            f"had exited ({run.exited_s:.2f} s; every process counted, PostgreSQL included)"
        )
    return lines


# -- the benchmark ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="bench-startup-replicas-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _closest(runs: Sequence[Run], value: float) -> Run:
    return min(runs, key=lambda r: abs(r.wall_s - value))


def run(quick: bool = False) -> bool:
    """Run the benchmark, print its table, and return whether the target passed."""
    repetitions = 1 if quick else REPETITIONS
    server = server_url()
    print(f"Benchmark startup_replicas: {TITLE}")
    print(f"  date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"  machine: {_machine(server)}")
    print(f"  code:    {_code_version()}")
    print(
        "  method:  wall time from launching the replica processes to the last one ready, Python "
        f"start-up included; median of {repetitions} run(s) per case, a fresh database and a reset "
        "migrations folder each run, cases interleaved, after 1 untimed warm-up run"
    )
    print(
        f"  cases:   A = 1 replica, empty database; B = {REPLICAS} replicas, empty database; "
        f"C = {REPLICAS} replicas, database already at head (diagnostic: start-up cost alone)"
    )
    print(f"  before:  {_quiet_check(server)}")
    cases = (("A", 1, False), ("B", REPLICAS, False), ("C", REPLICAS, True))
    runs: dict[str, list[Run]] = {case: [] for case, _, _ in cases}
    with _workdir() as workdir:
        directory = workdir / "migrations"
        ids = make_migrations(directory, server)
        setup = Setup(server, directory, snapshot(directory), tuple(ids), workdir)
        warmup = run_replicas("warmup", 1, setup)
        compiled = sum(1 for _ in setup.pycache.rglob("*.pyc"))
        print(
            f"  warm-up: 1 replica ready in {warmup.wall_s:.2f} s (untimed); it compiled {compiled} "
            "modules into the replicas' bytecode cache"
        )
        for repetition in range(1, repetitions + 1):
            for case, count, at_head in cases:
                label = f"{case}{repetition}"
                result = run_replicas(label, count, setup, at_head=at_head)
                runs[case].append(result)
                print(
                    f"  run {label}: {count:>2} replica(s) ready in {result.wall_s:5.2f} s "
                    f"(verified: at head {ids[-1]}, {REVISIONS} tables and indexes, "
                    f"{sum(r.applied for r in result.reports)} revisions applied by the replicas)"
                )

    print(f"  after:   {_quiet_check(server)}")
    a, b, c = (statistics.median(r.wall_s for r in runs[case]) for case in "ABC")
    limit = TARGET_FACTOR * a + TARGET_SLACK_S
    passed = b <= limit
    print()
    for line in _table(
        [
            ("work", "ours", "reference", "ratio", "target", "result"),
            (
                f"{REPLICAS} replicas ready (s)",
                f"B = {b:.2f}",
                f"A = {a:.2f} (1 replica)",
                f"B/A = {b / a:.2f}",
                f"<= {TARGET_FACTOR:g}*A + {TARGET_SLACK_S:g} s = {limit:.2f}",
                "PASS" if passed else "FAIL",
            ),
            (
                f"{REPLICAS} replicas ready, DB already at head (s)",
                f"C = {c:.2f}",
                f"A = {a:.2f} (1 replica)",
                f"C/A = {c / a:.2f}",
                "(diagnostic: start-up floor)",
                "-",
            ),
        ]
    ):
        print(line)
    for case in "ABC":
        print(f"  runs {case}: {', '.join(f'{r.wall_s:.2f}' for r in runs[case])} s")
    print()
    for case, median in (("A", a), ("B", b), ("C", c)):
        print("\n".join(describe_run(_closest(runs[case], median))))
        print()
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["replica"]:
        return replica_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.startup_replicas", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one repetition per case")
    args = parser.parse_args(argv)
    return 0 if run(quick=args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
