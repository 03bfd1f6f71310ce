"""The examples without Quart under their real server: uvicorn with several workers, each upgrading as it
starts (FastAPI and Starlette: the lifespan; Litestar: on_startup) behind the migration lock, on an empty
PostgreSQL database with 30 revisions."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    LOG_COUNTS,
    chain,
    expected_log,
    free_port,
    get_json,
    make_migrations,
    query,
    run,
    unavailable,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"






@pytest.mark.parametrize(
    "module, framework, workers, health",
    [
        ("fastapi_app", "fastapi", 4, "/healthz/"),
        ("starlette_app", "starlette", 2, "/healthz/"),
        ("litestar_app", "litestar", 2, "/healthz"),
    ],
)
def test_uvicorn_workers_on_an_empty_database(
    pg_url: str, tmp_path: Path, module: str, framework: str, workers: int, health: str
) -> None:
    for package in ("uvicorn", framework):
        if importlib.util.find_spec(package) is None:
            unavailable(f"{package} is not installed (the test extra has it)")
    slow = {i: ['op.execute("SELECT pg_sleep(0.05)")'] for i in range(1, 31)}
    migrations = run(make_migrations(pg_url, tmp_path / "migrations", chain(30, slow)))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DATABASE_URL=pg_url, MIGRATIONS_DIR=str(migrations), PYTHONDONTWRITEBYTECODE="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--workers", str(workers), "--port", str(port), f"{module}:app"],
        cwd=EXAMPLES / "asgi_apps", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}{health}")
                if status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, server.communicate()[0]
            assert time.monotonic() < deadline, "uvicorn did not get ready"
            time.sleep(0.2)
        assert body == {"status": "ok", "revision": ["r30"], "heads": ["r30"], "migrating": False}
        answers = [get_json(f"http://127.0.0.1:{port}{health}")[0] for _ in range(8)]  # any worker
        assert set(answers) == {200}, answers
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    assert query(pg_url, LOG_COUNTS) == expected_log(30)  # each revision applied once
    assert output.count("Application startup complete.") == workers, output
    # Our lines show though the app set up no logging: one worker migrated, the others waited.
    assert output.count("Startup upgrade of") == workers, output
    assert output.count("Applied 30 revision(s)") == 1, output
    assert "Traceback" not in output, output
