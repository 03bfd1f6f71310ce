"""A small notes service: Quart + async SQLAlchemy, its schema kept by async_migrate.

Run it (SQLite in ./instance by default; set DATABASE_URL=postgresql+asyncpg://... for PostgreSQL):

    hypercorn --bind 127.0.0.1:5000 app:app      # upgrades the database as it starts
    quart --app app db current                   # or any other `quart db` command
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from quart import Quart, abort, request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from async_migrate import Migrate

from models import Base, Note, Notebook

HERE = Path(__file__).resolve().parent


def create_app(database_url: str | None = None) -> Quart:
    app = Quart(__name__, instance_path=str(HERE / "instance"))
    os.makedirs(app.instance_path, exist_ok=True)
    url = (
        database_url
        or os.environ.get("DATABASE_URL")
        or f"sqlite+aiosqlite:///{Path(app.instance_path) / 'notes.db'}"
    )
    engine: AsyncEngine = create_async_engine(url)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.extensions["sessions"] = sessions

    # Upgrade to head before serving, behind the migration lock: safe with many workers or replicas.
    Migrate(app, Base, directory=HERE / "migrations", engine=sessions, auto_upgrade=True, healthz=True)

    @app.after_serving
    async def close_engine() -> None:
        await engine.dispose()

    @app.get("/notebooks")
    async def list_notebooks() -> list[dict[str, Any]]:
        async with sessions() as session:
            rows = (await session.scalars(select(Notebook).order_by(Notebook.id))).all()
            return [{"id": nb.id, "name": nb.name} for nb in rows]

    @app.post("/notebooks")
    async def create_notebook() -> tuple[dict[str, Any], int]:
        data = await request.get_json()
        if not isinstance(data, dict) or not str(data.get("name", "")).strip():
            abort(400, "send JSON with a non-empty 'name'")
        async with sessions.begin() as session:
            notebook = Notebook(name=str(data["name"]).strip())
            session.add(notebook)
        return {"id": notebook.id, "name": notebook.name}, 201

    @app.get("/notebooks/<int:notebook_id>/notes")
    async def list_notes(notebook_id: int) -> list[dict[str, Any]]:
        async with sessions() as session:
            if await session.get(Notebook, notebook_id) is None:
                abort(404)
            rows = (
                await session.scalars(
                    select(Note).where(Note.notebook_id == notebook_id).order_by(Note.id)
                )
            ).all()
            return [{"id": n.id, "title": n.title, "body": n.body} for n in rows]

    @app.post("/notebooks/<int:notebook_id>/notes")
    async def create_note(notebook_id: int) -> tuple[dict[str, Any], int]:
        data = await request.get_json()
        if not isinstance(data, dict) or not str(data.get("title", "")).strip():
            abort(400, "send JSON with a non-empty 'title'")
        async with sessions.begin() as session:
            if await session.get(Notebook, notebook_id) is None:
                abort(404)
            note = Note(notebook_id=notebook_id, title=str(data["title"]), body=str(data.get("body", "")))
            session.add(note)
        return {"id": note.id, "title": note.title, "body": note.body}, 201

    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
app = create_app()
