"""What an upgrade or downgrade reports while it runs: each revision applied, with its time, and a summary.

:class:`AppliedRecorder` is Alembic's ``on_version_apply`` callback. It collects the revisions applied,
reports each (INFO log lines, or a :class:`Progress` such as :class:`TerminalProgress`, the CLI's line on
a terminal), and on databases whose DDL commits as it runs remembers the statements a failing revision
already ran.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext, MigrationInfo

log = logging.getLogger("async_migrate")

# Statements that change a database: what a failed revision may have left behind.
_CHANGING_STATEMENTS = (
    "CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE", "INSERT", "UPDATE", "DELETE", "REPLACE", "GRANT",
    "REVOKE", "COMMENT",
)  # fmt: skip


class Progress(Protocol):
    """Receives the progress of an upgrade or downgrade, instead of the INFO log lines (e.g. to draw a
    progress line on a terminal, as ``quart db upgrade`` does)."""

    def applied(
        self, index: int, total: int | None, revision: str, doc: str, seconds: float
    ) -> None:
        """Revision number ``index`` (1-based) of ``total`` (None: unknown) took ``seconds``."""

    def finished(self, count: int, seconds: float, slowest: Sequence[tuple[float, str]]) -> None:
        """All done: how many revisions, how long in all, the slowest three ``(seconds, revision)``."""


class AppliedRecorder:
    """Alembic ``on_version_apply`` callback: collects the revisions applied and reports each with its time
    (INFO log lines, or a :class:`Progress`)."""

    def __init__(self, url: str, progress: Progress | None = None) -> None:
        self.url = url
        self.progress = progress
        #: How many revisions the run will apply, when known.
        self.total: int | None = None
        self.applied: list[str] = []
        #: How the summary says what was done: "Applied" (upgrades), "Reverted" (downgrades).
        self.verb = "Applied"
        #: The version table's revisions after the last step recorded (before that step's COMMIT).
        self.heads: tuple[str, ...] | None = None
        self.durations: list[tuple[float, str]] = []
        #: The statements that ran since the last revision was recorded: on a database whose DDL commits
        #: as it goes, what a failed revision left behind.
        self.statements: list[str] = []
        self._on_revision: Callable[[], None] | None = None
        self._watched: Connection | None = None
        self._autocommit_only = False
        self._started = self._mark = time.monotonic()

    @contextlib.contextmanager
    def revision_boundary(self, on_revision: Callable[[], None]) -> Iterator[None]:
        """Call ``on_revision`` as each revision is recorded, while in this block: whatever keeps the
        revisions apart (a savepoint per revision, the autocommit tracker) learns where one ends."""
        self._on_revision = on_revision
        try:
            yield
        finally:
            self._on_revision = None

    @contextlib.contextmanager
    def watching_statements(
        self, connection: Connection, autocommit_only: bool = False
    ) -> Iterator[None]:
        """Remember the changing statements run on ``connection`` while in this block: all of them where
        DDL commits as it runs, else (``autocommit_only``) those of an ``autocommit_block()``, which a
        rollback does not undo either."""
        self._autocommit_only = autocommit_only
        event.listen(connection, "after_cursor_execute", self._statement_ran)
        try:
            yield
        finally:
            event.remove(connection, "after_cursor_execute", self._statement_ran)

    def _statement_ran(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if (
            self._autocommit_only
            and conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT"
        ):
            return
        words = " ".join(statement.split())
        if words.upper().startswith(_CHANGING_STATEMENTS):  # not the reads (SELECT, DESCRIBE, SHOW)
            self.statements.append(words[:120] + ("..." if len(words) > 120 else ""))

    def start(self) -> None:
        self._started = self._mark = time.monotonic()

    def __call__(
        self, *, ctx: MigrationContext, step: MigrationInfo, heads: set[str], run_args: Any
    ) -> None:
        now = time.monotonic()
        elapsed, self._mark = now - self._mark, now
        self.statements.clear()
        self.heads = tuple(heads)
        if step.is_stamp:
            self._revision_boundary()
            return
        revision = step.up_revision_id or ""
        self.applied.append(revision)
        self.durations.append((elapsed, revision))
        direction = "upgrade" if step.is_upgrade else "downgrade"
        # A script without a message has its whole docstring as doc: its first line is the message.
        doc = next(iter((getattr(step.up_revision, "doc", "") or "").strip().splitlines()), "")
        if self.progress is not None:
            self.progress.applied(len(self.applied), self.total, revision, doc, elapsed)
        else:
            log.info("Applied %s %s (%s) in %.3fs", direction, revision, doc, elapsed)
        # Last: what keeps the revisions apart may stop the run here, with this one kept and recorded.
        self._revision_boundary()

    def _revision_boundary(self) -> None:
        if self._on_revision is not None:
            self._on_revision()

    def summarise(self) -> None:
        if not self.applied:
            return
        slowest_three = sorted(self.durations, reverse=True)[:3]
        if self.progress is not None:
            if isinstance(self.progress, TerminalProgress):
                self.progress.verb = self.verb
            self.progress.finished(
                len(self.applied), time.monotonic() - self._started, slowest_three
            )
            return
        slowest = ", ".join(f"{rev} {secs:.3f}s" for secs, rev in slowest_three)
        log.info(
            # A fixed format string per direction: log handlers may match on it.
            "Applied %d revision(s) to %s in %.3fs (slowest: %s)"
            if self.verb == "Applied"
            else "Reverted %d revision(s) of %s in %.3fs (slowest: %s)",
            len(self.applied),
            self.url,
            time.monotonic() - self._started,
            slowest,
        )


class TerminalProgress:
    """One live line on a terminal, rewritten as each revision is applied: revision n of N, its id and
    message, the time so far and the time left at the pace so far; then a summary line. Log lines that
    come meanwhile go above it (:meth:`clear` and :meth:`redraw` around them)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.line = ""
        self.verb = "Applied"
        self._started = time.monotonic()
        self._spent = 0.0

    def applied(
        self, index: int, total: int | None, revision: str, doc: str, seconds: float
    ) -> None:
        self._spent += seconds
        elapsed = time.monotonic() - self._started
        width = len(str(total)) if total else 1
        count = f"{index:>{width}}/{total}" if total else f"{index}"
        left = (
            f", about {self._spent / index * (total - index):.0f}s left"
            if total and index < total
            else ""
        )
        self.line = f"[{count}] {revision} {doc}"[:72] + f" ({elapsed:.1f}s{left})"
        self.redraw()

    def clear(self) -> None:
        if self.line:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def redraw(self) -> None:
        if self.line:
            self.stream.write(f"\r\x1b[K{self.line}")
            self.stream.flush()

    def close(self) -> None:
        """End the live line (a command that failed half-way): what follows starts on a line of its own."""
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""

    def finished(self, count: int, seconds: float, slowest: Sequence[tuple[float, str]]) -> None:
        listed = ", ".join(f"{rev} {secs:.3f}s" for secs, rev in slowest)
        self.line = ""
        self.stream.write(
            f"\r\x1b[K{self.verb} {count} revision(s) in {seconds:.3f}s (slowest: {listed})\n"
        )
        self.stream.flush()
