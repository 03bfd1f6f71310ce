"""Stress run: the cut / silence / kill / cancel matrix, counting what must never happen.

Target: over every case, 0 double applications, 0 skipped revisions, 0 stranded locks, 0 wrong reports.

- Each case gets a fresh PostgreSQL database (or SQLite file) and a migrations directory made with the
  package template plus a chain of ``REVISIONS`` revisions; each revision creates a table and appends its
  id to a log table in the same transaction, so the log says how often each one ran.
- Faults on PostgreSQL go through a loopback proxy (``tests/fault_proxy.py``): a message is dropped and the
  connection cut just before it reaches the server (``drop``), or it reaches the server and the reply is
  lost (``reply_lost``), or the connection goes silent for good while its sockets stay open (``silence``,
  with ``bookkeeping_timeout=1``). Each fault is tried at every revision's ``COMMIT`` and at each statement
  around the migration (backend pid, lock, session settings, unlock, version table read); also with three
  replicas migrating at once through the proxy. ``kill -9`` of a migrating process at a random moment, and
  on SQLite a cancellation (``asyncio.wait_for``) at several moments, complete the matrix.
- After each faulted run: what the command said is compared with the version table read on a direct
  connection (success means at head; a ``ConnectionLostError`` or an interrupted SQLite upgrade names
  where the database is); a lock still held 3 s later is stranded; then a clean upgrade runs and each
  revision must appear in the log exactly once (twice: a double application; never: skipped).

The PostgreSQL server is ``ASYNC_MIGRATE_BENCH_PG`` (else ``ASYNC_MIGRATE_TEST_PG``, else
``postgresql+asyncpg://postgres@127.0.0.1:5432``). Run it alone with ``python -m bench faults [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from async_migrate import MigrationFailedError, Migrator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fault_proxy import FaultProxy

REVISIONS = 5
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
LOG = "fault_log"

SCRIPT = '''"""{rev}"""
import time

from alembic import op
import sqlalchemy as sa

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{body}
    op.execute("INSERT INTO {log} (rev) VALUES ('{rev}')")
    {pause}


def downgrade() -> None:
    pass
'''


def rev(n: int) -> str:
    return f"r{n:02d}"


async def make_migrations(url: str, directory: Path, pause: str = "pass") -> None:
    async with Migrator(url, None, directory, stdout=None) as migrator:
        await migrator.init()
    for n in range(1, REVISIONS + 1):
        body = [f'    op.create_table("t{n}", sa.Column("id", sa.Integer, primary_key=True))']
        if n == 1:
            body.insert(
                0,
                f'    op.create_table("{LOG}", sa.Column("id", sa.Integer, primary_key=True), '
                'sa.Column("rev", sa.Text, nullable=False))',
            )
        down = rev(n - 1) if n > 1 else None
        text = SCRIPT.format(rev=rev(n), down=down, body="\n".join(body), log=LOG, pause=pause)
        (directory / "versions" / f"{rev(n)}.py").write_text(text)


async def read(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_async_engine(url, poolclass=sa.pool.NullPool)
    try:
        async with engine.connect() as connection:
            try:
                return [tuple(row) for row in (await connection.execute(sa.text(sql))).all()]
            except sa.exc.DBAPIError:  # no such table yet
                return []
    finally:
        await engine.dispose()


async def pg_admin(server: str, statement: str) -> None:
    engine = create_async_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(sa.text(statement))
    finally:
        await engine.dispose()


@dataclass
class Counts:
    runs: int = 0
    double_applications: int = 0
    skipped_revisions: int = 0
    stranded_locks: int = 0
    wrong_reports: int = 0
    notes: list[str] = field(default_factory=list)

    def bad(self, kind: str, case: str, detail: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.notes.append(f"{kind}: {case}: {detail}")


class Bench:
    def __init__(self, server: str, quick: bool) -> None:
        self.server = server
        self.quick = quick
        self.counts = Counts()
        self.root = Path(tempfile.mkdtemp(prefix="am-faults-"))

    @contextmanager
    def database(self) -> Iterator[tuple[str, Path]]:
        name = f"am_faults_{uuid.uuid4().hex[:10]}"
        asyncio.run(pg_admin(self.server, f'CREATE DATABASE "{name}"'))
        directory = self.root / name
        try:
            yield f"{self.server}/{name}", directory
        finally:
            asyncio.run(pg_admin(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            shutil.rmtree(directory, ignore_errors=True)

    # -- what is checked after every run -------------------------------------------------------------

    def check_report(
        self, case: str, url: str, outcome: BaseException | None, said: str | None
    ) -> None:
        at = {row[0] for row in asyncio.run(read(url, "SELECT version_num FROM alembic_version"))}
        if outcome is None:
            claimed = {rev(REVISIONS)}
        elif isinstance(outcome, MigrationFailedError):
            claimed = set(outcome.current_heads)
        elif said is not None:
            claimed = {said} - {"base"}
        else:
            self.counts.bad("wrong_reports", case, f"raised {type(outcome).__name__}: {outcome}")
            return
        if claimed != at:
            self.counts.bad(
                "wrong_reports", case, f"said {sorted(claimed)}, version table {sorted(at)}"
            )

    def check_locks(self, case: str, url: str) -> None:
        sql = (
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        )
        deadline = time.monotonic() + 3
        while asyncio.run(read(url, sql)):
            if time.monotonic() > deadline:
                self.counts.bad(
                    "stranded_locks", case, "advisory lock still held 3 s after the run"
                )
                return
            time.sleep(0.1)

    def check_log(self, case: str, url: str, directory: Path) -> None:
        """A clean upgrade, then each revision in the log exactly once."""
        asyncio.run(upgrade(url, directory))
        ran = Counter(row[0] for row in asyncio.run(read(url, f"SELECT rev FROM {LOG}")))
        for n in range(1, REVISIONS + 1):
            if ran[rev(n)] > 1:
                self.counts.bad("double_applications", case, f"{rev(n)} ran {ran[rev(n)]} times")
            elif ran[rev(n)] == 0:
                self.counts.bad("skipped_revisions", case, f"{rev(n)} never ran")
        self.counts.runs += 1

    # -- the cases ---------------------------------------------------------------------------------------

    def proxied(
        self, case: str, trigger: bytes, action: str, after: bytes | None, replicas: int
    ) -> None:
        with self.database() as (url, directory):
            asyncio.run(make_migrations(url, directory))
            server = make_url(url)
            proxy = FaultProxy(server.host or "127.0.0.1", server.port or 5432)
            try:
                proxy.arm(trigger, action, after)
                outcomes = asyncio.run(
                    gather(
                        *(
                            upgrade(proxy.url(url), directory, bookkeeping_timeout=1)
                            for _ in range(replicas)
                        )
                    )
                )
            finally:
                proxy.close()
            if replicas == 1:
                self.check_report(case, url, outcomes[0], None)
            self.check_locks(case, url)
            self.check_log(case, url, directory)

    def killed(self, case: str, delay: float) -> None:
        with self.database() as (url, directory):
            asyncio.run(
                make_migrations(url, directory, pause="op.execute('SELECT pg_sleep(0.05)')")
            )
            code = (
                "import asyncio, sys; from async_migrate import Migrator\n"
                "async def main():\n"
                "    async with Migrator(sys.argv[1], None, sys.argv[2], stdout=None) as m:\n"
                "        await m.upgrade()\n"
                "asyncio.run(main())\n"
            )
            process = subprocess.Popen([sys.executable, "-c", code, url, str(directory)])
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.check_locks(case, url)
            self.check_log(case, url, directory)

    def cancelled_sqlite(self, case: str, delay: float) -> None:
        directory = self.root / uuid.uuid4().hex[:10]
        directory.mkdir()
        url = f"sqlite+aiosqlite:///{directory / 'app.db'}"
        migrations = directory / "migrations"
        asyncio.run(make_migrations(url, migrations, pause="time.sleep(0.05)"))
        records: list[str] = []
        handler = _Collect(records)
        logging.getLogger("async_migrate").addHandler(handler)
        try:
            outcome = asyncio.run(upgrade(url, migrations, timeout=delay))
        finally:
            logging.getLogger("async_migrate").removeHandler(handler)
        said = None
        for message in records:
            found = re.search(r" is at (base|r\d+)", message)
            if found:
                said = found.group(1)
        if isinstance(outcome, TimeoutError) and said is None:
            said = "base"  # cancelled before any revision: no boundary message
        self.check_report(case, url, outcome, said)
        self.check_log(case, url, migrations)
        shutil.rmtree(directory, ignore_errors=True)

    def run(self) -> Counts:
        actions = ("drop", "reply_lost")
        for n in range(1, REVISIONS + 1):
            for action in actions:
                self.proxied(
                    f"{action} COMMIT after {rev(n)}", b"COMMIT", action, f"'{rev(n)}'".encode(), 1
                )
        for trigger in (b"SELECT version_num", b"pg_backend_pid", b"pg_try_advisory_lock",
                        b"lock_timeout", b"pg_advisory_unlock"):  # fmt: skip
            for action in (*actions, "silence"):
                self.proxied(f"{action} {trigger.decode()}", trigger, action, None, 1)
        rounds = 2 if self.quick else 6
        for _ in range(rounds):
            n = random.randint(1, REVISIONS)
            for action in actions:
                self.proxied(f"3 replicas, {action} COMMIT after {rev(n)}", b"COMMIT", action,
                             f"'{rev(n)}'".encode(), 3)  # fmt: skip
        for _ in range(rounds):
            self.killed("kill -9 while migrating", random.uniform(0.3, 1.5))
        for delay in (
            (0.01, 0.08, 0.15, 0.2) if self.quick else (0.01, 0.05, 0.08, 0.12, 0.15, 0.2, 0.3)
        ):
            self.cancelled_sqlite(f"SQLite cancelled after {delay}s", delay)
        shutil.rmtree(self.root, ignore_errors=True)
        return self.counts


class _Collect(logging.Handler):
    def __init__(self, records: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


async def gather(
    *coroutines: Coroutine[Any, Any, BaseException | None],
) -> list[BaseException | None]:
    return list(await asyncio.gather(*coroutines))


async def upgrade(
    url: str, directory: Path, timeout: float | None = None, **settings: Any
) -> BaseException | None:
    """The upgrade's outcome: None on success, else what it raised."""
    try:
        async with Migrator(url, None, directory, stdout=None, **settings) as migrator:
            if timeout is None:
                await migrator.upgrade()
            else:
                await asyncio.wait_for(migrator.upgrade(), timeout)
    except Exception as exc:
        return exc
    return None


def run(quick: bool = False) -> bool:
    server = os.environ.get("ASYNC_MIGRATE_BENCH_PG") or os.environ.get(
        "ASYNC_MIGRATE_TEST_PG", DEFAULT_SERVER
    )
    logging.getLogger("async_migrate").setLevel(logging.WARNING)
    print("Faults: cut, lost reply, silence, kill -9, cancel; each count must be 0")
    started = time.monotonic()
    counts = Bench(server, quick).run()
    print(f"  runs                 {counts.runs}")
    print(f"  double applications  {counts.double_applications}")
    print(f"  skipped revisions    {counts.skipped_revisions}")
    print(f"  stranded locks       {counts.stranded_locks}")
    print(f"  wrong reports        {counts.wrong_reports}")
    print(f"  ({time.monotonic() - started:.0f}s)")
    for note in counts.notes:
        print(f"  - {note}")
    return not counts.notes


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    return 0 if run(parser.parse_args(argv).quick) else 1


if __name__ == "__main__":
    raise SystemExit(_main())
