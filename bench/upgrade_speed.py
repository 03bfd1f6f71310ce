"""Benchmark: how fast async_migrate upgrades, side by side with Flask-Migrate and raw SQL replay.

Targets, each measured in the same run as its reference:

1. No-op upgrade at head, the first call in a fresh process after the imports (only the call is timed:
   ``await Migrator(url, None, dir, stdout=None).upgrade()``, constructing the Migrator included), on
   SQLite files for histories of 10, 100, 1,000 and 5,000 revisions. "cold": the heads cache file
   (``<migrations>/.async_migrate-heads.json``) is deleted before the process; "warm": it is there.
   Reference: ``flask_migrate.upgrade()`` in an app context of an equivalent Flask-SQLAlchemy app.
   Targets: warm <= 10 ms at 1,000 revisions, and flat: warm at 5,000 revisions <= 1.5x warm at 10.
   Diagnostics beside it: Alembic's full script load (``ScriptDirectory(dir).get_heads()`` in a fresh
   process), and the SQLite floor (Python's ``sqlite3``: connect and read the version table in a fresh
   process; SQLite parses the whole schema, one table and one index per revision, on a connection's first
   statement, so any tool pays this).
2. Full upgrade of 1,000 revisions on an empty SQLite file: ours <= 0.5x Flask-Migrate, and <= 4x a raw
   replay of our own ``upgrade(sql=True)`` output (``base:head``) by ``sqlite3 file.db < out.sql`` in one
   transaction (the whole ``sqlite3`` process is timed). Diagnostics: ours with
   ``transaction_per_migration=False`` (one transaction, one commit), and Alembic alone (sync ``pysqlite``,
   a minimal env.py, one transaction): what any Alembic-based runner costs.
3. Full upgrade of 200 revisions on an empty PostgreSQL database: ours (asyncpg) <= 1.0x Flask-Migrate
   (psycopg2), and <= 2x ``psql -1 -q -f out.sql`` of our ``--sql`` output (the whole ``psql`` process).
   In full upgrades (2 and 3) ours is timed after Alembic and the driver are imported, as Flask-Migrate's
   are by the time its call starts (its app imports them): the apply time is compared. A no-op imports
   neither, so case 1 imports only ``async_migrate`` before the call.
4. ``quart db current`` vs ``flask db current``: whole-process wall time, a tiny app each with one model,
   the same 100-revision history, a SQLite file at head; median of 5 runs each. Target: ours <= flask's.
   Diagnostic: the frameworks' import floor, ``python -c "import quart.cli"`` vs ``"import flask.cli"``.

How:

- Every revision is the same small script: one table and one index, portable between SQLite and
  PostgreSQL. Our migrations folder comes from ``Migrator.init()`` (template ``async``), Flask-Migrate's
  from ``flask_migrate.init()`` (template ``flask``); both get the same version files, byte-compiled by
  each side's interpreter before anything is timed.
- The reference tools live in their own virtualenv, created on demand by this benchmark with
  ``python -m venv`` + ``pip install`` (Flask-Migrate, Flask-SQLAlchemy, psycopg2-binary, with Alembic and
  SQLAlchemy pinned to the versions of the project's venv, so that both sides run the same Alembic). It is
  ``.bench-venv`` in the project (``ASYNC_MIGRATE_BENCH_VENV`` to put it elsewhere), kept between runs and
  rebuilt when the wanted versions change.
- Each measured upgrade runs in a fresh subprocess (``python -m bench.upgrade_speed child ...``, which
  imports only the standard library before the tool under test) and reports its timing as one JSON line.
  Every run gets a fresh database file or PostgreSQL database. After every full upgrade the database must
  be at head with every table and index; after a no-op it must still be at head, and ours must report no
  revision applied. Anything else fails the benchmark loudly.
- Subprocesses run without ``PYTHONDONTWRITEBYTECODE``, as Python does by default: installed packages
  have ``.pyc`` files from pip, and our editable source gets them at the warm-up run (in its gitignored
  ``__pycache__``), so that no measured process compiles source.
- PostgreSQL runs each start after a ``CHECKPOINT``, so that none pays for flushing what the run before
  it wrote. The tables after the results give each full upgrade's client CPU time beside its wall time.
- Medians of 3 runs per case (1 with ``--quick``; the CLI comparison always 5), cases interleaved, after
  one untimed warm-up run of each tool. Temporary files and databases are removed at the end, also on
  error.

The PostgreSQL server is ``ASYNC_MIGRATE_BENCH_PG`` (else ``ASYNC_MIGRATE_TEST_PG``, else
``postgresql+asyncpg://postgres@127.0.0.1:5432``): a server URL with no database. ``sqlite3`` and ``psql``
must be on PATH.

Run it alone with ``python -m bench.upgrade_speed [--quick]`` or with the others via ``python -m bench``.
"""

# Only the standard library at module level: the measuring subprocesses import this module too, and
# must not get anything the tool under test would otherwise import during the timed call.
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

TITLE = "upgrade speed against Flask-Migrate and raw SQL replay"

NOOP_SIZES = (10, 100, 1_000, 5_000)
SQLITE_FULL_REVISIONS = 1_000
PG_FULL_REVISIONS = 200
CLI_REVISIONS = 100
REPETITIONS = 3
CLI_REPETITIONS = 5

NOOP_TARGET_MS = 10.0
NOOP_TARGET_AT = 1_000
FLAT_FACTOR = 1.5
SQLITE_VS_FLASK = 0.5
SQLITE_VS_RAW = 4.0
PG_VS_FLASK = 1.0
PG_VS_PSQL = 2.0
CLI_VS_FLASK = 1.0

REFERENCE_PACKAGES = ("Flask-Migrate", "Flask-SQLAlchemy", "psycopg2-binary")
OUR_VERSIONS = ("async_migrate", "alembic", "SQLAlchemy", "aiosqlite", "asyncpg", "Quart")
REFERENCE_VERSIONS = (
    "Flask-Migrate",
    "Flask-SQLAlchemy",
    "alembic",
    "SQLAlchemy",
    "psycopg2-binary",
    "Flask",
)
#: Seconds one measured subprocess may take.
CHILD_TIMEOUT_S = 600
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MARKER = "BENCH_UPGRADE_SPEED "


class BenchError(RuntimeError):
    """The benchmark could not run, or what it measured was wrong."""


# -- the migration history ---------------------------------------------------------------------------------

REVISION_SCRIPT = '''"""create table {table}

Revision ID: {revision}
Revises: {down_text}
Create Date: 2025-01-01 00:00:00.000000

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
        sa.PrimaryKeyConstraint("id", name={primary_key!r}),
    )
    op.create_index({index!r}, {table!r}, ["name"], unique=False)


def downgrade() -> None:
    op.drop_index({index!r}, table_name={table!r})
    op.drop_table({table!r})
'''

# The smallest env.py that runs revisions: on the connection handed in, all in one transaction.
PLAIN_ENV = '''"""Plain Alembic env.py (benchmark diagnostic): the connection handed in, one transaction."""
from alembic import context

context.configure(
    connection=context.config.attributes["connection"],
    transactional_ddl=True,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
'''


def revision_id(number: int) -> str:
    """A fixed 12-hex-digit revision id, as Alembic makes them."""
    return hashlib.sha256(f"bench-upgrade-speed-{number}".encode()).hexdigest()[:12]


def table_name(number: int) -> str:
    return f"bench_t{number:04d}"


def index_name(number: int) -> str:
    return f"ix_{table_name(number)}_name"


@dataclass(frozen=True)
class History:
    """One linear history of ``size`` revisions: our migrations folder, Flask-Migrate's, a plain one."""

    size: int
    root: Path

    @property
    def ours(self) -> Path:
        return self.root / "ours"

    @property
    def flask(self) -> Path:
        return self.root / "flask"

    @property
    def plain(self) -> Path:
        return self.root / "plain"

    @property
    def head(self) -> str:
        return revision_id(self.size - 1)

    @property
    def head_db(self) -> Path:
        """A SQLite file at head (made by replaying our --sql output), copied for each no-op run."""
        return self.root / "head.db"

    @property
    def cache_file(self) -> Path:
        return self.ours / ".async_migrate-heads.json"

    def tables(self) -> set[str]:
        return {table_name(n) for n in range(self.size)}

    def indexes(self) -> set[str]:
        return {index_name(n) for n in range(self.size)}


def _write_versions(versions: Path, size: int) -> None:
    versions.mkdir(exist_ok=True)
    for number in range(size):
        revision = revision_id(number)
        down = revision_id(number - 1) if number else None
        table = table_name(number)
        (versions / f"{revision}_create_{table}.py").write_text(
            REVISION_SCRIPT.format(
                table=table,
                index=index_name(number),
                primary_key=f"pk_{table}",
                revision=revision,
                down=down,
                down_text=down or "",
            )
        )


def _compile(python: Path, directory: Path) -> None:
    """Byte-compile a migrations folder with the interpreter that will run it, so no run pays for that."""
    _check_run([str(python), "-m", "compileall", "-q", "-j", "0", str(directory)], "compileall")


def make_history(size: int, root: Path, env: Environment, references: bool = True) -> History:
    """The migrations folders for a history of ``size`` revisions, under ``root`` (without
    ``references``: only ours, no Flask-Migrate or plain folder)."""
    from async_migrate import Migrator

    history = History(size, root)
    root.mkdir(parents=True)

    async def init() -> None:
        async with Migrator(
            env.sqlite_url(root / "unused.db"), None, history.ours, stdout=None
        ) as migrator:
            await migrator.init()

    # Alembic's init prints its progress to sys.stdout itself, whatever the Migrator's stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        _run_async(init)
    _write_versions(history.ours / "versions", size)
    _compile(env.python, history.ours)
    if not references:
        return history
    env.child(env.reference_python, "flask-init", directory=str(history.flask))
    shutil.copytree(history.ours / "versions", history.flask / "versions", dirs_exist_ok=True)
    history.plain.mkdir()
    (history.plain / "env.py").write_text(PLAIN_ENV)
    (history.plain / "versions").symlink_to(history.ours / "versions")
    _compile(env.python, history.plain)
    _compile(env.reference_python, history.flask)
    return history


def _run_async(factory: Callable[[], Any]) -> Any:
    import asyncio

    return asyncio.run(factory())


def offline_sql(url: str, history: History, out: Path, *, wrap: bool) -> None:
    """Our ``upgrade(sql=True)`` output for ``base:head`` in ``out``, as one transaction: wrapped in
    ``BEGIN;``/``COMMIT;`` when ``wrap`` (for sqlite3), else bare (for ``psql -1``)."""
    from async_migrate import Migrator

    buffer = io.StringIO()

    async def generate() -> None:
        # One transaction for the whole script, as the replay runs it.
        async with Migrator(
            url, None, history.ours, stdout=buffer, transaction_per_migration=False
        ) as migrator:
            await migrator.upgrade("base:head", sql=True)

    _run_async(generate)
    lines = [line for line in buffer.getvalue().splitlines() if line not in ("BEGIN;", "COMMIT;")]
    body = "\n".join(lines) + "\n"
    creates = body.count("CREATE TABLE bench_t")
    if creates != history.size:
        raise BenchError(
            f"The --sql output for {history.size} revisions has {creates} CREATE TABLE statements"
        )
    out.write_text(f"BEGIN;\n{body}COMMIT;\n" if wrap else body)


# -- the environment: interpreters, databases ------------------------------------------------------------


def child_environ(**extra: str) -> dict[str, str]:
    """The environment of every subprocess: this one's, but with bytecode caching as Python does by
    default, so that no measured process compiles its tool's source (an editable install such as ours
    has no ``.pyc`` files until something writes them; installed packages have them from pip)."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**environ, **extra}


def _check_run(
    command: Sequence[str], what: str, *, timeout: float = CHILD_TIMEOUT_S, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("env", child_environ())
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what} did not finish in {timeout:.0f}s: {' '.join(command)}") from None
    if result.returncode != 0:
        raise BenchError(
            f"{what} exited {result.returncode}: {' '.join(command)}\n"
            f"stdout ends:\n{_tail(result.stdout)}\nstderr ends:\n{_tail(result.stderr)}"
        )
    return result


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:]) or "(nothing)"


def reference_venv_path() -> Path:
    return Path(os.environ.get("ASYNC_MIGRATE_BENCH_VENV") or PROJECT_ROOT / ".bench-venv")


def reference_python() -> Path:
    """The interpreter of the reference tools' venv, created (or rebuilt) when needed."""
    return venv_python(reference_venv_path(), REFERENCE_PACKAGES)


def venv_python(venv: Path, packages: Sequence[str]) -> Path:
    """The interpreter of a venv with ``packages``, created (or rebuilt) when they change."""
    python = venv / "bin" / "python"
    requirements = [
        *packages,
        # The same Alembic and SQLAlchemy as ours, so that the comparison is of the tools around them.
        f"alembic=={metadata.version('alembic')}",
        f"SQLAlchemy=={metadata.version('SQLAlchemy')}",
    ]
    wanted = json.dumps({"python": platform.python_version(), "requirements": requirements})
    stamp = venv / "bench-requirements.json"
    with contextlib.suppress(OSError):
        if python.exists() and stamp.read_text() == wanted:
            return python
    print(f"  setting up the venv {venv}: {' '.join(requirements)}", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    _check_run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    _check_run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            *requirements,
        ],
        "pip install",
    )
    stamp.write_text(wanted)
    return python


def server_url() -> str:
    url = (
        os.environ.get("ASYNC_MIGRATE_BENCH_PG")
        or os.environ.get("ASYNC_MIGRATE_TEST_PG")
        or DEFAULT_SERVER
    )
    return url.rstrip("/")


@dataclass
class Environment:
    """The interpreters, the PostgreSQL server and the scratch folder of one benchmark run."""

    python: Path
    reference_python: Path
    server: str
    workdir: Path
    databases: list[str] = field(default_factory=list)
    _serial: int = 0

    @staticmethod
    def sqlite_url(path: Path, driver: str = "aiosqlite") -> str:
        return f"sqlite+{driver}:///{path}"

    def pg_url(self, database: str, driver: str) -> str:
        """``driver`` "asyncpg" or "psycopg2" for SQLAlchemy, "" for libpq (psql)."""
        _, sep, rest = self.server.partition("://")
        if not sep:
            raise BenchError(f"Not a PostgreSQL server URL: {self.server!r}")
        return f"postgresql{'+' + driver if driver else ''}://{rest}/{database}"

    def scratch(self, name: str) -> Path:
        """A fresh path in the work folder."""
        self._serial += 1
        return self.workdir / "runs" / f"{self._serial:04d}-{name}"

    def fresh_copy(self, history: History, name: str) -> Path:
        """A fresh copy of the history's SQLite file at head."""
        path = self.scratch(name)
        shutil.copyfile(history.head_db, path)
        return path

    # PostgreSQL databases
    def psql(self, database: str, *args: str) -> str:
        command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *args, self.pg_url(database, "")]
        return _check_run(command, "psql", timeout=60).stdout

    def create_database(self, label: str) -> str:
        name = f"bench_upgrade_{label}_{uuid.uuid4().hex[:8]}"
        self.psql("postgres", "-c", f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        self.psql("postgres", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.databases:
            self.databases.remove(name)

    def drop_all(self) -> None:
        for name in list(self.databases):
            with contextlib.suppress(BenchError):
                self.drop_database(name)

    # measuring subprocesses
    def child(self, python: Path, kind: str, **args: Any) -> dict[str, Any]:
        """Run ``python -m bench.upgrade_speed child KIND`` and return what it reported."""
        command = [str(python), "-m", "bench.upgrade_speed", "child", kind, json.dumps(args)]
        result = _check_run(command, f"child {kind}", cwd=PROJECT_ROOT)
        found = [
            line[len(MARKER) :] for line in result.stdout.splitlines() if line.startswith(MARKER)
        ]
        if len(found) != 1:
            raise BenchError(
                f"child {kind} printed {len(found)} report(s); stdout ends:\n{_tail(result.stdout)}\n"
                f"stderr ends:\n{_tail(result.stderr)}"
            )
        report: dict[str, Any] = json.loads(found[0])
        return report


# -- checks ---------------------------------------------------------------------------------------------------


def verify_sqlite(path: Path, history: History, what: str) -> None:
    """Raise BenchError unless the SQLite file is at head with every table and index of ``history``."""
    import sqlite3

    connection = sqlite3.connect(path)
    try:
        versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
        tables, indexes = (
            {
                row[0]
                for row in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = ?", (kind,)
                )
            }
            for kind in ("table", "index")
        )
    except sqlite3.Error as exc:
        raise BenchError(f"{what}: cannot read {path}: {exc}") from None
    finally:
        connection.close()
    _verify(what, versions, tables, indexes, history)


def verify_pg(env: Environment, database: str, history: History, what: str) -> None:
    """Raise BenchError unless the database is at head with every table and index of ``history``."""

    def rows(query: str) -> list[str]:
        return env.psql(database, "-A", "-t", "-c", query).split()

    versions = rows("SELECT version_num FROM alembic_version")
    tables = set(rows("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    indexes = set(rows("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"))
    _verify(what, versions, tables, indexes, history)


def _verify(
    what: str, versions: list[str], tables: set[str], indexes: set[str], history: History
) -> None:
    if versions != [history.head]:
        raise BenchError(
            f"{what}: the database is at {versions or 'base'}, not at head {history.head}"
        )
    missing = sorted((history.tables() - tables) | (history.indexes() - indexes))
    if missing:
        raise BenchError(
            f"{what}: at head but {len(missing)} table(s)/index(es) missing: {', '.join(missing[:10])}"
        )


# -- the measurements -----------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Seconds measured per case, in run order, and notes to print with the results."""

    values: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, case: str, seconds: float) -> None:
        self.values.setdefault(case, []).append(seconds)

    def median(self, case: str) -> float:
        return statistics.median(self.values[case])


def _ours_upgrade(
    env: Environment,
    url: str,
    history: History,
    expect_applied: int,
    *,
    preload: bool = False,
    time_ledger: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """One ``await Migrator(url, None, dir, stdout=None, **options).upgrade()`` in a fresh process; with
    ``preload``, Alembic and the database driver are imported before the timed call; with
    ``time_ledger``, the report's ``ledger_s`` is the time spent in the ledger's callback."""
    report = env.child(
        env.python,
        "ours-upgrade",
        url=url,
        directory=str(history.ours),
        options=options,
        preload=preload,
        time_ledger=time_ledger,
    )
    if report["applied"] != expect_applied:
        raise BenchError(
            f"ours applied {report['applied']} revision(s) on {url}, expected {expect_applied}"
        )
    return report


def _flask_upgrade(env: Environment, url: str, history: History) -> dict[str, Any]:
    """One ``flask_migrate.upgrade()`` in a fresh process."""
    return env.child(env.reference_python, "flask-upgrade", url=url, directory=str(history.flask))


def _timed(command: Sequence[str], what: str, **kwargs: Any) -> float:
    start = time.perf_counter()
    _check_run(command, what, **kwargs)
    return time.perf_counter() - start


NOOP_TOOLS = ("cold", "flask", "warm", "floor", "alembic")


def measure_noop(
    env: Environment, histories: Sequence[History], repetitions: int, samples: Samples
) -> None:
    """Target 1: no-op upgrade at head in a fresh process; Alembic's load and the SQLite floor beside it."""
    for repetition in range(1, repetitions + 1):
        for history in histories:
            size = history.size
            line = []
            for tool in NOOP_TOOLS:
                if tool == "alembic":  # loads the scripts only, no database
                    report = env.child(env.python, "alembic-load", directory=str(history.ours))
                    if report["heads"] != [history.head]:
                        raise BenchError(
                            f"Alembic found heads {report['heads']}, not {history.head}"
                        )
                    samples.add(f"noop-{size}-{tool}", float(report["call_s"]))
                    line.append(f"{tool} {float(report['call_s']) * 1000:.1f}")
                    continue
                database = env.fresh_copy(history, f"noop-{size}-{tool}.db")
                if tool in ("cold", "warm"):
                    if tool == "cold":
                        history.cache_file.unlink(missing_ok=True)
                    elif not history.cache_file.exists():
                        raise BenchError(f"the cold run left no heads cache {history.cache_file}")
                    report = _ours_upgrade(env, env.sqlite_url(database), history, 0)
                    seconds = float(report["call_s"])
                    samples.add(f"noop-{size}-{tool}-construct", float(report["construct_s"]))
                    if tool == "warm" and repetition == 1 and size == NOOP_TARGET_AT:
                        samples.notes.append(
                            "modules ours imported during its first call (warm, "
                            f"{size:,} revisions): {', '.join(report['imported_during_call'])}"
                        )
                elif tool == "flask":
                    url = env.sqlite_url(database, "pysqlite")
                    seconds = float(_flask_upgrade(env, url, history)["call_s"])
                else:
                    report = env.child(env.python, "sqlite-floor", path=str(database))
                    if report["versions"] != [history.head]:
                        raise BenchError(f"the floor run read {report['versions']}")
                    seconds = float(report["call_s"])
                verify_sqlite(database, history, f"no-op upgrade ({tool}, {size} revisions)")
                database.unlink()
                samples.add(f"noop-{size}-{tool}", seconds)
                line.append(f"{tool} {seconds * 1000:.1f}")
            print(
                f"  run {repetition}, no-op at head, {size:>5} revisions (ms): {', '.join(line)}",
                flush=True,
            )


SQLITE_TOOLS = ("ours", "flask", "raw", "ours-1tx", "alembic", "raw-per-rev")


def measure_full_sqlite(
    env: Environment, history: History, repetitions: int, samples: Samples
) -> None:
    """Target 2: full upgrade of an empty SQLite file: ours, Flask-Migrate, sqlite3 replaying our SQL in
    one transaction; as diagnostics ours in one transaction, Alembic alone, and sqlite3 replaying the
    SQL with one transaction per revision (as many commits as ours makes)."""
    scripts = {
        "raw": history.root / "upgrade-sqlite.sql",
        "raw-per-rev": history.root / "upgrade-sqlite-per-revision.sql",
    }
    one = scripts["raw"].read_text()
    scripts["raw-per-rev"].write_text(
        one.replace("-- Running upgrade", "COMMIT;\nBEGIN;\n-- Running upgrade")
    )
    for repetition in range(1, repetitions + 1):
        line = []
        for tool in SQLITE_TOOLS:
            database = env.scratch(f"full-sqlite-{tool}.db")
            report: dict[str, Any] = {}
            if tool in ("ours", "ours-1tx"):
                options = {"transaction_per_migration": False} if tool == "ours-1tx" else {}
                url = env.sqlite_url(database)
                report = _ours_upgrade(env, url, history, history.size, preload=True, **options)
            elif tool == "flask":
                report = _flask_upgrade(env, env.sqlite_url(database, "pysqlite"), history)
            elif tool == "alembic":
                url = env.sqlite_url(database, "pysqlite")
                report = env.child(
                    env.python, "alembic-alone", url=url, directory=str(history.plain)
                )
            else:
                with scripts[tool].open() as script:
                    seconds = _timed(["sqlite3", str(database)], "sqlite3 replay", stdin=script)
                report = {"call_s": seconds}
            verify_sqlite(database, history, f"full upgrade on SQLite ({tool})")
            database.unlink()
            samples.add(f"sqlite-{tool}", float(report["call_s"]))
            if "cpu_s" in report:
                samples.add(f"sqlite-{tool}-cpu", float(report["cpu_s"]))
            line.append(f"{tool} {float(report['call_s']):.2f}")
        print(
            f"  run {repetition}, full upgrade, SQLite, {history.size} revisions (s): "
            f"{', '.join(line)}",
            flush=True,
        )


PG_TOOLS = ("ours", "flask", "psql")


def measure_full_pg(env: Environment, history: History, repetitions: int, samples: Samples) -> None:
    """Target 3: full upgrade of an empty PostgreSQL database: ours, Flask-Migrate, psql -1 of our SQL.

    Each run gets a new database and starts after a CHECKPOINT, so that no run pays for flushing what
    the one before it (or the CREATE DATABASE) wrote."""
    sql = history.root / "upgrade-pg.sql"
    for repetition in range(1, repetitions + 1):
        line = []
        for tool in PG_TOOLS:
            database = env.create_database(tool)
            try:
                env.psql("postgres", "-c", "CHECKPOINT")
                report: dict[str, Any]
                if tool == "ours":
                    url = env.pg_url(database, "asyncpg")
                    report = _ours_upgrade(env, url, history, history.size, preload=True)
                elif tool == "flask":
                    report = _flask_upgrade(env, env.pg_url(database, "psycopg2"), history)
                else:
                    command = ["psql", "-X", "-1", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(sql)]
                    report = {"call_s": _timed([*command, env.pg_url(database, "")], "psql replay")}
                verify_pg(env, database, history, f"full upgrade on PostgreSQL ({tool})")
            finally:
                env.drop_database(database)
            samples.add(f"pg-{tool}", float(report["call_s"]))
            if "cpu_s" in report:
                samples.add(f"pg-{tool}-cpu", float(report["cpu_s"]))
            line.append(f"{tool} {float(report['call_s']):.2f}")
        print(
            f"  run {repetition}, full upgrade, PostgreSQL, {history.size} revisions (s): "
            f"{', '.join(line)}",
            flush=True,
        )


QUART_APP = '''"""A tiny Quart app with async_migrate, for `quart db current`."""
import os

from quart import Quart
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_migrate import Migrate


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


app = Quart(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BENCH_DATABASE_URL"]
Migrate(app, Base, directory=os.environ["BENCH_MIGRATIONS"])
'''

FLASK_APP = '''"""A tiny Flask app with Flask-Migrate, for `flask db current`."""
import os

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["BENCH_DATABASE_URL"]
db = SQLAlchemy(app)


class Note(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str]


Migrate(app, db, directory=os.environ["BENCH_MIGRATIONS"])
'''


def measure_cli(env: Environment, history: History, repetitions: int, samples: Samples) -> None:
    """Target 4: ``quart db current`` vs ``flask db current``, whole process, on a SQLite file at head;
    the frameworks' import floor as a diagnostic."""
    apps = env.workdir / "apps"
    apps.mkdir()
    (apps / "bench_quart_app.py").write_text(QUART_APP)
    (apps / "bench_flask_app.py").write_text(FLASK_APP)
    tools = {
        "quart": (env.python.parent / "quart", "bench_quart_app", history.ours, "aiosqlite"),
        "flask": (
            env.reference_python.parent / "flask",
            "bench_flask_app",
            history.flask,
            "pysqlite",
        ),
    }
    imports = {
        "quart-import": [str(env.python), "-c", "import quart.cli"],
        "flask-import": [str(env.reference_python), "-c", "import flask.cli"],
    }

    def current(tool: str) -> float:
        executable, app, directory, driver = tools[tool]
        database = env.fresh_copy(history, f"cli-{tool}.db")
        environ = child_environ(
            BENCH_DATABASE_URL=env.sqlite_url(database, driver), BENCH_MIGRATIONS=str(directory)
        )
        command = [str(executable), "--app", app, "db", "current"]
        start = time.perf_counter()
        result = _check_run(command, f"{tool} db current", cwd=apps, env=environ)
        seconds = time.perf_counter() - start
        if f"{history.head} (head)" not in result.stdout:
            raise BenchError(
                f"{tool} db current printed {result.stdout!r}, not {history.head} (head)"
            )
        verify_sqlite(database, history, f"{tool} db current")
        database.unlink()
        return seconds

    current("quart")  # untimed warm-up, also byte-compiles the app modules
    current("flask")
    for repetition in range(1, repetitions + 1):
        line = []
        for tool in ("quart", "flask"):
            seconds = current(tool)
            samples.add(f"cli-{tool}", seconds)
            line.append(f"{tool} {seconds:.3f}")
        for case, command in imports.items():
            seconds = _timed(command, case, cwd=apps)
            samples.add(f"cli-{case}", seconds)
            line.append(f"{case} {seconds:.3f}")
        print(
            f"  run {repetition}, db current, {history.size} revisions (s): {', '.join(line)}",
            flush=True,
        )


# -- report ---------------------------------------------------------------------------------------------------


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


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _machine(env: Environment) -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = f" ({line.split(':', 1)[1].strip()})"
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    server = env.psql("postgres", "-A", "-t", "-c", "SHOW server_version").strip()
    sqlite = _check_run(["sqlite3", "--version"], "sqlite3 --version").stdout.split()[0]
    return (
        f"nproc {cpus}{model}; {platform.python_implementation()} {platform.python_version()}; "
        f"PostgreSQL {server}; sqlite3 CLI {sqlite}; {platform.system()} {platform.machine()}; "
        f"scratch files in {env.workdir.parent}"
    )


def _quiet_check(env: Environment) -> str:
    """Load average and other database sessions, to judge whether the machine was quiet."""
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    others = env.psql(
        "postgres",
        "-A",
        "-t",
        "-c",
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
    ).strip()
    return f"load average (1/5/15 min) {load}; other PostgreSQL client sessions: {others}"


def report(samples: Samples, versions: dict[str, dict[str, str]]) -> bool:
    """Print the results tables; return whether every target passed."""
    ms = 1000.0
    med = samples.median
    rows: list[tuple[str, ...]] = [("work", "ours", "reference", "ratio", "target", "result")]
    verdicts: list[bool] = []

    smallest = NOOP_SIZES[0]
    for size in NOOP_SIZES:
        warm, flask = med(f"noop-{size}-warm"), med(f"noop-{size}-flask")
        target, verdict = "(diagnostic)", "-"
        if size == NOOP_TARGET_AT:
            passed = warm * ms <= NOOP_TARGET_MS
            target, verdict = f"ours <= {NOOP_TARGET_MS:g} ms", _verdict(passed)
            verdicts.append(passed)
        elif size == NOOP_SIZES[-1]:
            limit = FLAT_FACTOR * med(f"noop-{smallest}-warm")
            passed = warm <= limit
            target = f"flat: ours <= {FLAT_FACTOR:g} x ours at {smallest} = {limit * ms:.1f} ms"
            verdict = _verdict(passed)
            verdicts.append(passed)
        for kind, mine in (("warm", warm), ("cold", med(f"noop-{size}-cold"))):
            rows.append(
                (
                    f"no-op upgrade at head, {size:,} revisions, {kind} (ms)",
                    f"{mine * ms:.1f}",
                    f"Flask-Migrate {flask * ms:.1f}",
                    f"{mine / flask:.3f}",
                    target if kind == "warm" else "(diagnostic)",
                    verdict if kind == "warm" else "-",
                )
            )

    def ratio_row(work: str, ours: str, name: str, ref: str, factor: float | None) -> None:
        mine, theirs = med(ours), med(ref)
        if factor is None:
            target, verdict = "(diagnostic)", "-"
        else:
            passed = mine <= factor * theirs
            verdicts.append(passed)
            target, verdict = f"ours <= {factor:g} x {name}", _verdict(passed)
        rows.append(
            (work, f"{mine:.3f}", f"{name} {theirs:.3f}", f"{mine / theirs:.2f}", target, verdict)
        )

    sqlite_work = f"full upgrade, {SQLITE_FULL_REVISIONS:,} revisions, empty SQLite (s)"
    ratio_row(sqlite_work, "sqlite-ours", "Flask-Migrate", "sqlite-flask", SQLITE_VS_FLASK)
    ratio_row(sqlite_work, "sqlite-ours", "sqlite3 replay", "sqlite-raw", SQLITE_VS_RAW)
    for ours, label in (
        ("sqlite-ours-1tx", "ours in one transaction"),
        ("sqlite-alembic", "Alembic alone, sync, one transaction"),
    ):
        ratio_row(f"  {label} (s)", ours, "sqlite3 replay", "sqlite-raw", None)
    ratio_row(
        "  ours vs sqlite3 replay with a transaction per revision (s)",
        "sqlite-ours",
        "sqlite3 replay per rev.",
        "sqlite-raw-per-rev",
        None,
    )
    pg_work = f"full upgrade, {PG_FULL_REVISIONS} revisions, empty PostgreSQL (s)"
    ratio_row(pg_work, "pg-ours", "Flask-Migrate", "pg-flask", PG_VS_FLASK)
    ratio_row(pg_work, "pg-ours", "psql -1", "pg-psql", PG_VS_PSQL)
    ratio_row(
        f"`quart db current`, {CLI_REVISIONS} revisions, whole process (s)",
        "cli-quart",
        "flask db current",
        "cli-flask",
        CLI_VS_FLASK,
    )
    ratio_row(
        "  import floor: python -c 'import quart.cli' (s)",
        "cli-quart-import",
        "import flask.cli",
        "cli-flask-import",
        None,
    )
    print()
    for line in _table(rows):
        print(line)

    print()
    print("  no-op upgrade at head, the first call in a fresh process (ms, medians):")
    compare: list[tuple[str, ...]] = [
        (
            "revisions",
            "ours cold",
            "ours warm",
            "of which Migrator()",
            "SQLite floor",
            "ours warm - floor",
            "Flask-Migrate",
            "Alembic full script load",
        )
    ]
    for size in NOOP_SIZES:
        warm, floor = med(f"noop-{size}-warm"), med(f"noop-{size}-floor")
        compare.append(
            (
                f"{size:,}",
                f"{med(f'noop-{size}-cold') * ms:.1f}",
                f"{warm * ms:.1f}",
                f"{med(f'noop-{size}-warm-construct') * ms:.1f}",
                f"{floor * ms:.1f}",
                f"{(warm - floor) * ms:.1f}",
                f"{med(f'noop-{size}-flask') * ms:.1f}",
                f"{med(f'noop-{size}-alembic') * ms:.1f}",
            )
        )
    for line in _table(compare, "  "):
        print(line)
    print(
        "  SQLite floor: Python's sqlite3 connecting and reading the version table in a fresh process "
        "(SQLite parses the whole schema on a connection's first statement); Migrator(): constructing "
        "it from a URL, which imports the SQLAlchemy aiosqlite dialect and creates the engine."
    )
    for note in samples.notes:
        print(f"  {note}")
    print()
    print(
        "  full upgrades: wall time of the call and the CPU time its process used meanwhile (s, medians):"
    )
    cpu_rows: list[tuple[str, ...]] = [("case", "wall", "client CPU", "wall - CPU (waiting)")]
    for case, label in (
        ("sqlite-ours", f"SQLite {SQLITE_FULL_REVISIONS:,}: ours"),
        ("sqlite-ours-1tx", f"SQLite {SQLITE_FULL_REVISIONS:,}: ours in one transaction"),
        ("sqlite-alembic", f"SQLite {SQLITE_FULL_REVISIONS:,}: Alembic alone, one transaction"),
        ("sqlite-flask", f"SQLite {SQLITE_FULL_REVISIONS:,}: Flask-Migrate"),
        ("pg-ours", f"PostgreSQL {PG_FULL_REVISIONS}: ours"),
        ("pg-flask", f"PostgreSQL {PG_FULL_REVISIONS}: Flask-Migrate"),
    ):
        wall, cpu = med(case), med(f"{case}-cpu")
        cpu_rows.append((label, f"{wall:.3f}", f"{cpu:.3f}", f"{wall - cpu:.3f}"))
    for line in _table(cpu_rows, "  "):
        print(line)
    print()
    print("  all runs (no-op cases in ms, the others in s):")
    for case, values in samples.values.items():
        scale, digits = (ms, 1) if case.startswith("noop-") else (1.0, 3)
        print(f"    {case}: {', '.join(f'{v * scale:.{digits}f}' for v in values)}")
    for side, found in versions.items():
        print(f"  versions, {side}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    return all(verdicts)


# -- the benchmark --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _environment() -> Iterator[Environment]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-upgrade-speed-"))
    env = Environment(
        python=Path(sys.executable),
        reference_python=Path(sys.executable),  # replaced below, once the venv exists
        server=server_url(),
        workdir=workdir,
    )
    try:
        (workdir / "runs").mkdir()
        env.reference_python = reference_python()
        yield env
    finally:
        env.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def _prepare(env: Environment) -> tuple[dict[int, History], History]:
    """Every history, each with a SQLite file at head; the PostgreSQL history with its --sql script."""
    histories: dict[int, History] = {}
    for size in sorted({*NOOP_SIZES, SQLITE_FULL_REVISIONS, CLI_REVISIONS}):
        history = histories[size] = make_history(size, env.workdir / f"h{size}", env)
        sql = history.root / "upgrade-sqlite.sql"
        offline_sql(env.sqlite_url(history.root / "unused.db"), history, sql, wrap=True)
        with sql.open() as script:
            _check_run(["sqlite3", str(history.head_db)], "sqlite3", stdin=script)
        verify_sqlite(history.head_db, history, f"the {size}-revision database at head")
    pg_history = make_history(PG_FULL_REVISIONS, env.workdir / f"pg{PG_FULL_REVISIONS}", env)
    sql = pg_history.root / "upgrade-pg.sql"
    offline_sql(env.pg_url("offline", "asyncpg"), pg_history, sql, wrap=False)
    print(
        f"  prepared: histories of {', '.join(f'{size:,}' for size in histories)} revisions "
        f"(SQLite) and {PG_FULL_REVISIONS} (PostgreSQL), each with its --sql script; SQLite files at "
        "head from replaying it",
        flush=True,
    )
    return histories, pg_history


def _warm_up(env: Environment, history: History) -> None:
    """One untimed run of each tool: the OS file cache, the interpreters' modules."""
    database = env.fresh_copy(history, "warmup.db")
    _ours_upgrade(env, env.sqlite_url(database), history, 0)
    _flask_upgrade(env, env.sqlite_url(database, "pysqlite"), history)
    env.child(env.python, "alembic-load", directory=str(history.ours))
    env.child(env.python, "sqlite-floor", path=str(database))
    database.unlink()


def run(quick: bool = False) -> bool:
    """Run the benchmark, print its tables, and return whether every target passed."""
    repetitions = 1 if quick else REPETITIONS
    for tool in ("sqlite3", "psql"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} is not on PATH (apt-get install sqlite3 postgresql-client)")
    print(f"Benchmark upgrade_speed: {TITLE}")
    print(f"  date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    samples = Samples()
    with _environment() as env:
        print(f"  machine: {_machine(env)}")
        print(
            "  method:  each timed upgrade is the first call in a fresh subprocess, after its "
            "imports; sqlite3/psql replays and `db current` are whole processes; a fresh database "
            f"per run; median of {repetitions} run(s) per case ({CLI_REPETITIONS} for `db current`), "
            "cases interleaved, after 1 untimed warm-up run per tool"
        )
        print(f"  before:  {_quiet_check(env)}", flush=True)
        versions = {
            "ours": env.child(env.python, "versions", names=OUR_VERSIONS),
            "reference": env.child(env.reference_python, "versions", names=REFERENCE_VERSIONS),
        }
        histories, pg_history = _prepare(env)
        _warm_up(env, histories[min(histories)])
        measure_noop(env, [histories[size] for size in NOOP_SIZES], repetitions, samples)
        measure_full_sqlite(env, histories[SQLITE_FULL_REVISIONS], repetitions, samples)
        measure_full_pg(env, pg_history, repetitions, samples)
        measure_cli(env, histories[CLI_REVISIONS], CLI_REPETITIONS, samples)
        print(f"  after:   {_quiet_check(env)}")
    return report(samples, versions)


# -- the measuring subprocesses -------------------------------------------------------------------------------


def _child_ours_upgrade(args: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    from async_migrate import Migrator

    if args.get("preload"):
        # A full upgrade's imports, which Flask-Migrate's process has made before its timed call (its app
        # imports Alembic and creates the engine): the apply time is what is compared.
        import alembic.command
        import alembic.op
        import alembic.runtime.environment  # noqa: F401
        from sqlalchemy.engine import make_url

        make_url(args["url"]).get_dialect().import_dbapi()
    before = set(sys.modules)
    options: dict[str, Any] = args.get("options") or {}
    ledger_s = _time_the_ledger() if args.get("time_ledger") else None

    async def upgrade() -> tuple[float, float, float, tuple[str, ...]]:
        cpu, start = time.process_time(), time.perf_counter()
        migrator = Migrator(args["url"], None, args["directory"], stdout=None, **options)
        constructed = time.perf_counter()
        applied = await migrator.upgrade()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        await migrator.aclose()
        return seconds, constructed - start, cpu, applied

    seconds, construct_s, cpu_s, applied = asyncio.run(upgrade())
    return {
        "call_s": seconds,
        "construct_s": construct_s,
        "cpu_s": cpu_s,
        "applied": len(applied),
        "imported_during_call": sorted(set(sys.modules) - before),
        **({"ledger_s": ledger_s[0]} if ledger_s is not None else {}),
    }


def _time_the_ledger() -> list[float]:
    """Seconds spent, from now on, on what the ledger changes (one number in a list, added to as the
    upgrade runs): in its ``on_version_apply`` callback, which on asyncpg also sends the revision's
    version-table UPDATE along with its row; with the ledger off, in sending those UPDATEs (their round
    trips) instead. The difference between the two is what the ledger adds to an upgrade."""
    from async_migrate import asyncpg_simple_query
    from async_migrate.ledger import LedgerRecorder

    spent = [0.0]
    record, run = LedgerRecorder.__call__, asyncpg_simple_query._run

    def timed_record(self: LedgerRecorder, **kwargs: Any) -> None:
        start = time.perf_counter()
        try:
            record(self, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    async def timed_run(cursor: Any, statement: str) -> None:
        start = time.perf_counter()
        try:
            await run(cursor, statement)
        finally:
            if statement.startswith(("UPDATE alembic_version ", "DELETE FROM alembic_version ")):
                spent[0] += time.perf_counter() - start

    LedgerRecorder.__call__ = timed_record  # type: ignore[method-assign]
    asyncpg_simple_query._run = timed_run
    return spent


def _child_flask_upgrade(args: dict[str, Any]) -> dict[str, Any]:
    from flask import Flask
    from flask_migrate import Migrate, upgrade  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from flask_sqlalchemy import SQLAlchemy  # type: ignore[import-untyped, import-not-found, unused-ignore]

    app = Flask("bench_flask_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = args["url"]
    db = SQLAlchemy(app)
    Migrate(app, db, directory=args["directory"])
    with app.app_context():
        cpu, start = time.process_time(), time.perf_counter()
        upgrade()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        db.engine.dispose()
    return {"call_s": seconds, "cpu_s": cpu}


def _child_flask_init(args: dict[str, Any]) -> dict[str, Any]:
    from flask import Flask
    from flask_migrate import Migrate, init  # type: ignore[import-untyped, import-not-found, unused-ignore]
    from flask_sqlalchemy import SQLAlchemy  # type: ignore[import-untyped, import-not-found, unused-ignore]

    app = Flask("bench_flask_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    db = SQLAlchemy(app)
    Migrate(app, db, directory=args["directory"])
    with app.app_context(), contextlib.redirect_stdout(sys.stderr):
        init()
    return {}


def _child_alembic_load(args: dict[str, Any]) -> dict[str, Any]:
    from alembic.script import ScriptDirectory

    start = time.perf_counter()
    heads = ScriptDirectory(args["directory"]).get_heads()
    return {"call_s": time.perf_counter() - start, "heads": list(heads)}


def _child_alembic_alone(args: dict[str, Any]) -> dict[str, Any]:
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    # Real transactions, as async_migrate runs SQLite: the driver's own mode would not BEGIN before DDL.
    engine = sa.create_engine(args["url"], poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    sa.event.listen(engine, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    config = Config()
    config.set_main_option("script_location", args["directory"])
    config.set_main_option("path_separator", "os")
    cpu, start = time.process_time(), time.perf_counter()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"call_s": seconds, "cpu_s": cpu}


def _child_sqlite_floor(args: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    start = time.perf_counter()
    connection = sqlite3.connect(args["path"])
    versions = [row[0] for row in connection.execute("SELECT version_num FROM alembic_version")]
    seconds = time.perf_counter() - start
    connection.close()
    return {"call_s": seconds, "versions": versions}


def _child_versions(args: dict[str, Any]) -> dict[str, Any]:
    found = {}
    for name in args["names"]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ours-upgrade": _child_ours_upgrade,
    "flask-upgrade": _child_flask_upgrade,
    "flask-init": _child_flask_init,
    "alembic-load": _child_alembic_load,
    "alembic-alone": _child_alembic_alone,
    "sqlite-floor": _child_sqlite_floor,
    "versions": _child_versions,
}


def child_main(argv: Sequence[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    print(MARKER + json.dumps(CHILDREN[kind](args)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["child"]:
        return child_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade_speed", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one repetition per case")
    args = parser.parse_args(argv)
    return 0 if run(quick=args.quick) else 1


if __name__ == "__main__":
    raise SystemExit(main())
