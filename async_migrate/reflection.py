"""A database's tables reflected and their rows read: what the schema snapshot and squash's seed share."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def reflected(connection: Connection, ignored: set[str]) -> sa.MetaData:
    """The database's tables, reflected, but ``ignored``."""
    metadata = sa.MetaData()
    names = [n for n in sa.inspect(connection).get_table_names() if n not in ignored]
    metadata.reflect(connection, only=names)
    return metadata


def table_rows(connection: Connection, table: sa.Table) -> list[dict[str, Any]]:
    """Every row of ``table``, in primary key order."""
    order = list(table.primary_key.columns) or list(table.columns)
    return [dict(row._mapping) for row in connection.execute(sa.select(table).order_by(*order))]
