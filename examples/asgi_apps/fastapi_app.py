"""A small notes API: FastAPI + async SQLAlchemy, its schema kept by async_migrate, no Quart anywhere.

    uvicorn --workers 4 fastapi_app:app                      # each worker upgrades as it starts
    async-migrate --app fastapi_app:make_migrator current    # or any other command, from this folder

starlette_app.py and litestar_app.py are the same API on those frameworks, on the same models and
migrations.

SQLite (./notes.db) by default; DATABASE_URL=postgresql+asyncpg://... for PostgreSQL. MIGRATIONS_DIR
points at another migrations folder (the tests use one with many revisions).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from async_migrate import Migrator, startup_upgrade
from async_migrate.health import readiness_app

from models import Base, Note

HERE = Path(__file__).resolve().parent
engine = create_async_engine(os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{HERE / 'notes.db'}")
sessions = async_sessionmaker(engine, expire_on_commit=False)


def make_migrator() -> Migrator:
    """The app's migrations: also what `async-migrate --app app:make_migrator ...` runs on."""
    return Migrator(engine, Base.metadata, os.environ.get("MIGRATIONS_DIR") or HERE / "migrations")


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Behind the migration lock: with 4 workers one migrates, three wait and then serve. The app
    # serves only once the database is at head; otherwise startup fails, saying why.
    async with make_migrator() as migrator:
        await startup_upgrade(migrator, startup_timeout=50)
    yield
    await engine.dispose()


app = FastAPI(lifespan=lifespan)
app.mount("/healthz", readiness_app(make_migrator()))  # 200 at head, 503 otherwise


@app.get("/notes")
async def list_notes() -> list[dict[str, Any]]:
    async with sessions() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        return [{"id": n.id, "title": n.title, "body": n.body} for n in notes]


@app.post("/notes", status_code=201)
async def create_note(note: dict[str, str]) -> dict[str, Any]:
    async with sessions.begin() as session:
        row = Note(title=note.get("title", ""), body=note.get("body", ""))
        session.add(row)
    return {"id": row.id, "title": row.title, "body": row.body}
