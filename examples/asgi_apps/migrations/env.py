"""Alembic environment for async engines (async_migrate template "async").

Three ways this file runs:
- under async_migrate (`quart db ...`, `await Migrator(...).upgrade()`): it is handed an open connection and
  the models' MetaData in config.attributes, and must not start an event loop (one is already running);
- under plain `alembic -c migrations/alembic.ini ...`: it builds its own async engine and runs one loop;
- offline (`--sql`): it renders SQL from the URL alone, with no connection.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

config = context.config

# What async_migrate hands over: {"target_metadata", "configure_kwargs", "url"}; None under plain alembic.
settings: dict[str, Any] | None = config.attributes.get("async_migrate")

# Only a plain `alembic` run configures logging from the ini file: inside an app, fileConfig would
# replace the app's logging setup (and silence its loggers).
if settings is None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

logger = logging.getLogger("alembic.env")


def load_target_metadata() -> Any:
    if settings is not None:
        return settings["target_metadata"]
    spec = config.get_main_option("target_metadata")
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


target_metadata = load_target_metadata()


def database_url() -> Any:
    if settings is not None:
        return settings["url"]
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "No database URL: pass -x url=..., set sqlalchemy.url in alembic.ini, or set DATABASE_URL."
        )
    return make_url(url)


def configure_kwargs() -> dict[str, Any]:
    if settings is not None:
        kwargs = dict(settings["configure_kwargs"])
    else:
        kwargs = {"compare_type": True, "render_as_batch": True, "transaction_per_migration": True}

    # Never write an empty revision: when autogenerate finds no change, no file is created.
    def process_revision_directives(migration_context: Any, revision: Any, directives: Any) -> None:
        if getattr(config.cmd_opts, "autogenerate", False):
            script = directives[0]
            if script.upgrade_ops.is_empty():
                directives[:] = []
                logger.info("No changes in schema detected.")

    if kwargs.get("process_revision_directives") is None:
        kwargs["process_revision_directives"] = process_revision_directives
    return kwargs


def run_migrations_offline() -> None:
    """Render the migrations as SQL, without a database connection."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_kwargs(),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    kwargs = configure_kwargs()
    if connection.dialect.name == "sqlite" and settings is not None:
        # async_migrate runs SQLite connections in real transactions, so DDL can be rolled back.
        kwargs.setdefault("transactional_ddl", True)
    context.configure(connection=connection, target_metadata=target_metadata, **kwargs)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    url = database_url()
    if not getattr(url.get_dialect(), "is_async", False):
        raise SystemExit(
            f"{url.render_as_string(hide_password=True)} uses a synchronous driver: use "
            "postgresql+asyncpg:// or sqlite+aiosqlite://."
        )
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
