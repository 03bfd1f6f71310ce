"""The example notes service: its committed migrations apply at startup, and requests read and write rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

from conftest import free_port, get_json, query, tables

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quart_app"


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUART_")}
    env.update(DATABASE_URL=url, PYTHONDONTWRITEBYTECODE="1")
    return env


def test_example_with_quart_test_client(db_url: str) -> None:
    script = textwrap.dedent(
        """
        import asyncio
        from quart.testing.app import TestApp
        from app import create_app

        async def main():
            app = create_app()
            async with TestApp(app, startup_timeout=60):
                client = app.test_client()
                created = await client.post("/notebooks", json={"name": "work"})
                assert created.status_code == 201, created.status_code
                nb = (await created.get_json())["id"]
                note = await client.post(f"/notebooks/{nb}/notes", json={"title": "hi", "body": "there"})
                assert note.status_code == 201, note.status_code
                listed = await (await client.get(f"/notebooks/{nb}/notes")).get_json()
                print("NOTES", listed)

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=EXAMPLE,
        env=_env(db_url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "NOTES [{'body': 'there', 'id': 1, 'title': 'hi'}]" in result.stdout
    assert query(db_url, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert set(tables(db_url)["note"]) == {"id", "notebook_id", "title", "body", "created_at"}






def test_example_served_by_hypercorn(sqlite_url: str) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=EXAMPLE,
        env=_env(sqlite_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else ""
                assert time.monotonic() < deadline, "hypercorn did not start serving"
                time.sleep(0.2)
        assert status == 200
        assert body == {"status": "ok", "revision": ["0002"], "heads": ["0002"], "migrating": False}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/notebooks",
            data=json.dumps({"name": "home"}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
        assert get_json(f"http://127.0.0.1:{port}/notebooks") == (200, [{"id": 1, "name": "home"}])
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Applied upgrade 0001" in output and "Applied upgrade 0002" in output
    # Alembic, imported only now that the app logs at INFO, keeps its import-time noise to itself.
    assert "setup plugin" not in output


MULTIDB_EXAMPLE = EXAMPLE.parent / "multidb_app"


def test_multidb_example(tmp_path: Path) -> None:
    main_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    audit_url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    script = textwrap.dedent(
        """
        import asyncio
        from quart.testing.app import TestApp
        from app import create_app

        async def main():
            app = create_app()
            async with TestApp(app, startup_timeout=60):
                client = app.test_client()
                created = await client.post("/posts", json={"author": "ada", "title": "engines"})
                assert created.status_code == 201, created.status_code
                print("AUDIT", await (await client.get("/audit")).get_json())
                print("HEALTHZ", (await client.get("/healthz")).status_code)

        asyncio.run(main())
        """
    )
    env = _env(main_url)
    env["AUDIT_DATABASE_URL"] = audit_url
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=MULTIDB_EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "AUDIT [{'action': 'create_post', 'detail': 'post 1 by ada'}]" in result.stdout
    assert "HEALTHZ 200" in result.stdout
    ledgers = ["alembic_version", "alembic_version_log"]  # a ledger per database
    assert sorted(tables(main_url)) == [*ledgers, "author", "post"]
    assert sorted(tables(audit_url)) == [*ledgers, "audit_entry"]
    assert query(audit_url, "SELECT version_num FROM alembic_version") == [("0001",)]
