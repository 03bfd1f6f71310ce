"""Readiness for any framework: the database at the scripts' head, or not (yet).

:func:`readiness` is what a probe endpoint answers, as ``(status_code, body)``: 200 when the database is
at head, 503 while it is behind, being migrated, or unreachable. :func:`readiness_app` is the same as a
tiny ASGI app to mount (``app.mount("/healthz", readiness_app(migrator))`` in FastAPI or Starlette). The
body is the Quart extension's ``/healthz`` body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import AsyncMigrateError
from .migrator import MigrationStatus, Migrator

__all__ = ["readiness", "readiness_app", "status_body"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def status_body(status: MigrationStatus) -> tuple[int, dict[str, Any]]:
    """The probe's answer for a status :meth:`Migrator.status` found."""
    body = {
        "status": "ok" if status.at_head else ("migrating" if status.migrating else "behind"),
        "revision": list(status.current_heads),
        "heads": list(status.script_heads),
        "migrating": status.migrating,
    }
    return (200 if status.at_head else 503), body


async def readiness(migrator: Migrator) -> tuple[int, dict[str, Any]]:
    """``(200, body)`` when the database is at head, else ``(503, body)``; never raises for a database
    that cannot be read (that is a 503 too, with the error)."""
    try:
        return status_body(await migrator.status())
    except AsyncMigrateError as exc:
        return 503, {"status": "error", "error": str(exc)}


def readiness_app(migrator: Migrator) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering every HTTP request with :func:`readiness` as JSON."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan and websockets are the host app's
        code, body = await readiness(migrator)
        await send(
            {
                "type": "http.response.start",
                "status": code,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    return app
