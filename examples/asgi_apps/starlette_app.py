"""The notes API on Starlette alone: the same lifespan upgrade and readiness probe as the FastAPI example.

    uvicorn --workers 2 starlette_app:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from async_migrate import Migrator, startup_upgrade
from async_migrate.health import readiness_app

from models import Base, Note

HERE = Path(__file__).resolve().parent
engine = create_async_engine(os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{HERE / 'notes.db'}")
sessions = async_sessionmaker(engine, expire_on_commit=False)
MIGRATIONS = os.environ.get("MIGRATIONS_DIR") or HERE / "migrations"


def make_migrator() -> Migrator:
    return Migrator(engine, Base.metadata, MIGRATIONS)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with make_migrator() as migrator:
        await startup_upgrade(migrator, startup_timeout=50)
    yield
    await engine.dispose()


async def list_notes(request: Request) -> JSONResponse:
    async with sessions() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        return JSONResponse([{"id": n.id, "title": n.title, "body": n.body} for n in notes])


app = Starlette(
    routes=[Route("/notes", list_notes), Mount("/healthz", readiness_app(make_migrator()))],
    lifespan=lifespan,
)
