"""The notes API on Litestar: the startup upgrade in ``on_startup``, the readiness probe as a route.

    uvicorn --workers 2 litestar_app:app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litestar import Litestar, Response, get
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from async_migrate import Migrator, startup_upgrade
from async_migrate.health import readiness

from models import Base, Note

HERE = Path(__file__).resolve().parent
engine = create_async_engine(os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{HERE / 'notes.db'}")
sessions = async_sessionmaker(engine, expire_on_commit=False)
MIGRATIONS = os.environ.get("MIGRATIONS_DIR") or HERE / "migrations"


def make_migrator() -> Migrator:
    return Migrator(engine, Base.metadata, MIGRATIONS)


async def upgrade_database() -> None:
    async with make_migrator() as migrator:
        await startup_upgrade(migrator, startup_timeout=50)


async def close_engine() -> None:
    await engine.dispose()


@get("/healthz")
async def healthz() -> Response[dict[str, Any]]:
    async with make_migrator() as migrator:
        code, body = await readiness(migrator)
    return Response(body, status_code=code)


@get("/notes")
async def list_notes() -> list[dict[str, Any]]:
    async with sessions() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        return [{"id": n.id, "title": n.title, "body": n.body} for n in notes]


app = Litestar(route_handlers=[healthz, list_notes], on_startup=[upgrade_database], on_shutdown=[close_engine])
