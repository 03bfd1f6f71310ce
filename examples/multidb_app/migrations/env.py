"""Alembic environment for several async databases (async_migrate template "async-multidb").

One history of scripts; each database has its own version table (in that database) and runs the
``upgrade_<name>()`` / ``downgrade_<name>()`` functions of each revision ("" is the main database).

- Under async_migrate (`quart db ...`, `await Migrator(..., binds=...).upgrade()`): the connections and the
  models' MetaData of the databases to run on arrive in config.attributes; no event loop is started.
- Under plain `alembic -c migrations/alembic.ini ...`: the databases are listed in alembic.ini
  (`databases = ,users`), their URLs come from DATABASE_URL (main) and DATABASE_URL_<NAME>.
- Offline (`--sql`): the SQL of each database in turn, from the URLs alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

config = context.config

# What async_migrate hands over: {"binds": {name: {"target_metadata", "url"}}, "configure_kwargs", ...}.
settings: dict[str, Any] | None = config.attributes.get("async_migrate")

# Only a plain `alembic` run configures logging from the ini file: inside an app, fileConfig would
# replace the app's logging setup.
if settings is None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")


def databases() -> dict[str, dict[str, Any]]:
    """name -> {"target_metadata", "url"} for each database to run on."""
    if settings is not None:
        return dict(settings["binds"])
    names = [name.strip() for name in (config.get_main_option("databases") or "").split(",")]
    found = {}
    for name in names:
        variable = f"DATABASE_URL_{name.upper()}" if name else "DATABASE_URL"
        url = os.environ.get(variable)
        if not url:
            raise SystemExit(f"No URL for database {name or '(main)'!r}: set {variable}.")
        found[name] = {"target_metadata": None, "url": make_url(url)}
    return found


def configure_kwargs(name: str) -> dict[str, Any]:
    kwargs = dict(settings["configure_kwargs"]) if settings is not None else {
        "compare_type": True,
        "render_as_batch": True,
        "transaction_per_migration": True,
    }

    # Never write an empty revision: when autogenerate finds no change in any database, no file.
    def process_revision_directives(migration_context: Any, revision: Any, directives: Any) -> None:
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            # Called once per database: decide only when every database has been compared.
            if len(script.upgrade_ops_list) >= len(databases()) and all(
                ops.is_empty() for ops in script.upgrade_ops_list
            ):
                directives[:] = []
                logger.info("No changes in schema detected.")

    if kwargs.get("process_revision_directives") is None:
        kwargs["process_revision_directives"] = process_revision_directives
    kwargs["upgrade_token"] = f"{name}_upgrades"
    kwargs["downgrade_token"] = f"{name}_downgrades"
    return kwargs


def run_migrations_offline() -> None:
    for name, database in databases().items():
        logger.info("Migrating database %s", name or "(main)")
        context.configure(
            url=database["url"],
            target_metadata=database["target_metadata"],
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            **configure_kwargs(name),
        )
        context.get_context().impl.static_output(f"-- Database: {name or '(main)'}")
        with context.begin_transaction():
            context.run_migrations(engine_name=name)


def do_run_migrations(connections: dict[str, Connection]) -> None:
    found = databases()
    for name, connection in connections.items():
        logger.info("Migrating database %s", name or "(main)")
        kwargs = configure_kwargs(name)
        if connection.dialect.name == "sqlite" and settings is not None:
            # async_migrate runs SQLite connections in real transactions, so DDL can be rolled back.
            kwargs.setdefault("transactional_ddl", True)
        context.configure(
            connection=connection, target_metadata=found[name]["target_metadata"], **kwargs
        )
        with context.begin_transaction():
            context.run_migrations(engine_name=name)


async def run_async_migrations() -> None:
    engines = {
        name: create_async_engine(database["url"], poolclass=pool.NullPool)
        for name, database in databases().items()
    }
    connections: dict[str, AsyncConnection] = {}
    try:
        for name, engine in engines.items():
            connections[name] = await engine.connect()
        first = next(iter(connections.values()))
        await first.run_sync(
            lambda _: do_run_migrations(
                {name: conn.sync_connection for name, conn in connections.items()}  # type: ignore[misc]
            )
        )
        for connection in connections.values():
            await connection.commit()
    finally:
        for connection in connections.values():
            await connection.close()
        for engine in engines.values():
            await engine.dispose()


def run_migrations_online() -> None:
    connections = config.attributes.get("connections")
    if connections is not None:
        do_run_migrations(connections)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
