"""Two databases, one history: posts in the main database, an audit log in its own database.

SQLite files in ./instance by default; DATABASE_URL and AUDIT_DATABASE_URL (async drivers) override them.

    hypercorn --bind 127.0.0.1:5001 app:app   # upgrades both databases as it starts, each behind its lock
    quart --app app db current                # revisions of each database
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from quart import Quart, abort, request
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from async_migrate import Migrate

HERE = Path(__file__).resolve().parent


class Base(DeclarativeBase):
    pass


class AuditBase(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))


class Post(Base):
    __tablename__ = "post"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"))
    title: Mapped[str] = mapped_column(String(200))


class AuditEntry(AuditBase):
    __tablename__ = "audit_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(50))
    detail: Mapped[str] = mapped_column(String(500))


def create_app() -> Quart:
    app = Quart(__name__, instance_path=str(HERE / "instance"))
    os.makedirs(app.instance_path, exist_ok=True)
    instance = Path(app.instance_path)
    main_engine = create_async_engine(
        os.environ.get("DATABASE_URL") or f"sqlite+aiosqlite:///{instance / 'main.db'}"
    )
    audit_engine = create_async_engine(
        os.environ.get("AUDIT_DATABASE_URL") or f"sqlite+aiosqlite:///{instance / 'audit.db'}"
    )
    sessions = async_sessionmaker(main_engine, expire_on_commit=False)
    audit_sessions = async_sessionmaker(audit_engine, expire_on_commit=False)

    Migrate(
        app,
        Base,
        directory=HERE / "migrations",
        engine=main_engine,
        binds={"audit": (audit_engine, AuditBase)},
        auto_upgrade=True,
        healthz=True,
    )

    @app.after_serving
    async def close_engines() -> None:
        await main_engine.dispose()
        await audit_engine.dispose()

    @app.post("/posts")
    async def create_post() -> tuple[dict[str, Any], int]:
        data = await request.get_json()
        if not isinstance(data, dict) or not data.get("author") or not data.get("title"):
            abort(400, "send JSON with 'author' and 'title'")
        async with sessions.begin() as session:
            author = (
                await session.scalars(select(Author).where(Author.name == data["author"]))
            ).first() or Author(name=str(data["author"]))
            post = Post(title=str(data["title"]))
            post.author_id = author.id if author.id else 0
            session.add(author)
            await session.flush()
            post.author_id = author.id
            session.add(post)
        async with audit_sessions.begin() as audit:
            audit.add(AuditEntry(action="create_post", detail=f"post {post.id} by {author.name}"))
        return {"id": post.id, "title": post.title, "author": author.name}, 201

    @app.get("/audit")
    async def list_audit() -> list[dict[str, Any]]:
        async with audit_sessions() as audit:
            rows = (await audit.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
            return [{"action": r.action, "detail": r.detail} for r in rows]

    return app


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
app = create_app()
