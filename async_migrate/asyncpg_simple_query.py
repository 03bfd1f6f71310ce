"""Migration statements on asyncpg in one round trip instead of two.

SQLAlchemy's asyncpg adapter prepares every statement before running it (Parse/Describe, then Bind/Execute).
A migration's statements are never repeated: each ``CREATE TABLE``, ``CREATE INDEX`` and Alembic's
version-table ``UPDATE`` (its revision ids are literals, so every one is new SQL) paid a round trip for a
prepared statement used once. On the migration connection only, statements without parameters that return
no rows (DDL, and INSERT/UPDATE/DELETE without RETURNING) go through asyncpg's simple query protocol
(``Connection.execute(sql)``), as psycopg sends them. The row count comes from the command status, as the
adapter reads it; errors are translated by the adapter itself, so they reach Alembic and the lock-timeout
detection exactly as before.

It relies on the adapter's private attributes; where they are not as expected (another SQLAlchemy
release), statements simply take SQLAlchemy's usual path.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.util
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import ExecutionContext

#: The execution option that marks a connection as a migration connection.
OPTION = "async_migrate_simple_query"
#: The execution option that marks a textual statement as returning no rows (SQLAlchemy cannot tell from
#: the text), so that it too goes in one round trip.
ROWLESS = "async_migrate_rowless"

# SQLAlchemy 2.1 names it await_, 2.0 await_only.
_await: Callable[[Any], Any] = (
    getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only
)

_ADAPTER_ATTRIBUTES = ("_execute_mutex", "_transaction", "_start_transaction", "_connection")
_CURSOR_ATTRIBUTES = ("_adapt_connection", "_handle_exception", "_rows")
# The adapter's own reading of a command status ("UPDATE 1", "INSERT 0 1").
_ROW_COUNT = re.compile(r"(?:SELECT|UPDATE|DELETE|INSERT \d+) (\d+)")

_listening: weakref.WeakSet[Engine] = weakref.WeakSet()


def enable(engine: Engine) -> None:
    """Let connections of ``engine`` with the :data:`OPTION` execution option send row-less statements
    without parameters in one round trip. Other connections of the engine (the app's) are untouched."""
    if engine.dialect.driver != "asyncpg" or engine in _listening:
        return
    event.listen(engine, "do_execute", _execute_simply)
    # The other ways a statement is run: they go as usual, after whatever is held.
    event.listen(engine, "do_executemany", _send_held_first)
    event.listen(engine, "do_execute_no_params", _send_held_first)
    _listening.add(engine)


def sends_simply(connection: Connection) -> bool:
    """Whether ``connection`` is a migration connection on asyncpg, whose row-less statements without
    parameters go in one round trip."""
    return connection.engine in _listening and bool(connection.get_execution_options().get(OPTION))


def _returns_no_rows(context: ExecutionContext) -> bool:
    if getattr(context, "isddl", False) or context.execution_options.get(ROWLESS):
        return True
    is_dml = any(getattr(context, flag, False) for flag in ("isinsert", "isupdate", "isdelete"))
    compiled = getattr(context, "compiled", None)
    return is_dml and compiled is not None and not getattr(compiled, "effective_returning", True)


async def _run(cursor: Any, statement: str) -> None:
    adapter = cursor._adapt_connection
    async with adapter._execute_mutex:
        if adapter._transaction is None:
            await adapter._start_transaction()
        try:
            status = await adapter._connection.execute(statement)
        except Exception as error:
            cursor._handle_exception(error)
    cursor._rows.clear()
    cursor._description = None
    found = _ROW_COUNT.match(status or "")
    cursor._rowcount = int(found.group(1)) if found else -1


def _execute_simply(
    cursor: Any, statement: str, parameters: Any, context: ExecutionContext
) -> bool | None:
    if not context.execution_options.get(OPTION) or not _adapter_as_expected(cursor):
        return None
    held = _holding.get(context.root_connection)
    if held is not None:
        if not parameters and _returns_no_rows(context) and _changes_version_table(context, held):
            # Sent with the ledger's row, or before whatever comes next (holding_version_statements).
            held.statements.append(statement)
            cursor._rows.clear()
            cursor._description = None
            cursor._rowcount = 1  # for Alembic's own check: the real count is checked when sent
            return True
        _send_held(cursor, held)
    if parameters or not _returns_no_rows(context):
        return None
    _await(_run(cursor, statement))
    return True


def _adapter_as_expected(cursor: Any) -> bool:
    return all(hasattr(cursor, name) for name in _CURSOR_ATTRIBUTES) and all(
        hasattr(cursor._adapt_connection, name) for name in _ADAPTER_ATTRIBUTES
    )


# -- a revision's version-table statement, sent with its ledger row ------------------------------------


@dataclass
class _Held:
    version_table: str
    schema: str | None
    statements: list[str] = field(default_factory=list)
    #: Why a held statement failed (its row count, the server), until the transaction is rolled back:
    #: raised again at commit, in case whoever ran the next statement swallowed it.
    failure: BaseException | None = None


_holding: weakref.WeakKeyDictionary[Connection, _Held] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def holding_version_statements(
    connection: Connection | None, version_table: str, schema: str | None
) -> Iterator[None]:
    """While in this block, Alembic's UPDATE or DELETE of a revision on the version table
    ``schema.version_table`` waits on ``connection`` (a migration connection on asyncpg; elsewhere,
    or None, this does nothing), so that the revision's ledger row can take it along in one round trip
    (:func:`take_held`): the ledger then costs no round trip of its own.

    A statement held is never lost or reordered: before any other statement on the connection, and
    before a commit, it is sent and its row count checked (one row, Alembic's own check, which was told
    one row to let it wait); a rollback forgets it, as the server would have.
    """
    if connection is None or not sends_simply(connection):
        yield
        return
    _holding[connection] = _Held(version_table, schema)
    listeners = (("commit", _send_before_commit), ("rollback", _forget_held))
    for name, listener in listeners:
        event.listen(connection, name, listener)
    try:
        yield
    finally:
        for name, listener in listeners:
            event.remove(connection, name, listener)
        _holding.pop(connection, None)


def take_held(connection: Connection) -> str | None:
    """The version-table statement waiting on ``connection``, now the caller's to send and to check
    with :func:`check_version_rows`; None when none is, or several are (a merge deletes one row and
    updates another: those go on their own, before the next statement)."""
    held = _holding.get(connection)
    if held is None:
        return None
    if held.failure is not None:
        raise held.failure
    if len(held.statements) != 1:
        return None
    return held.statements.pop()


def check_version_rows(statement: str, found: int) -> None:
    """Alembic's check of a version-table statement, in Alembic's words: it changed exactly one row."""
    if found != 1:
        from alembic.util import CommandError

        raise CommandError(
            f"Online migration expected to match one row with {statement}; {found} found"
        )


def _changes_version_table(context: ExecutionContext, held: _Held) -> bool:
    if not (getattr(context, "isupdate", False) or getattr(context, "isdelete", False)):
        return False
    table = getattr(getattr(getattr(context, "compiled", None), "statement", None), "table", None)
    return (
        getattr(table, "name", None) == held.version_table
        and getattr(table, "schema", None) == held.schema
    )


def _send_held(cursor: Any, held: _Held) -> None:
    statements, held.statements = held.statements, []
    for statement in statements:
        try:
            _await(_run(cursor, statement))
            check_version_rows(statement, cursor._rowcount)
        except BaseException as exc:
            held.failure = exc
            raise


def _send_held_first(cursor: Any, statement: str, *args: Any) -> None:
    context: ExecutionContext = args[-1]
    held = _holding.get(context.root_connection)
    if held is not None and held.statements:
        _send_held(cursor, held)


def _send_before_commit(connection: Connection) -> None:
    held = _holding.get(connection)
    if held is None or (held.failure is None and not held.statements):
        return
    if held.failure is None:
        cursor = connection.connection.cursor()
        try:
            _send_held(cursor, held)
        except BaseException:
            pass  # held.failure says it, below
        finally:
            cursor.close()
    if held.failure is not None:
        # Never commit a revision whose version row did not move: roll the server's transaction back
        # (raising here stops SQLAlchemy's COMMIT, not the server's transaction), then say why.
        failure, held.failure, held.statements = held.failure, None, []
        connection.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
        raise failure


def _forget_held(connection: Connection) -> None:
    held = _holding.get(connection)
    if held is not None:
        held.statements, held.failure = [], None
