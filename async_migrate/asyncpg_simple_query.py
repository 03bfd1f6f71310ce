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

import re
import weakref
from collections.abc import Callable
from typing import Any

import sqlalchemy.util
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import ExecutionContext

#: The execution option that marks a connection as a migration connection.
OPTION = "async_migrate_simple_query"

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
    _listening.add(engine)


def _returns_no_rows(context: ExecutionContext) -> bool:
    if getattr(context, "isddl", False):
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
    if (
        parameters
        or not context.execution_options.get(OPTION)
        or not _returns_no_rows(context)
        or not all(hasattr(cursor, name) for name in _CURSOR_ATTRIBUTES)
        or not all(hasattr(cursor._adapt_connection, name) for name in _ADAPTER_ATTRIBUTES)
    ):
        return None
    _await(_run(cursor, statement))
    return True
