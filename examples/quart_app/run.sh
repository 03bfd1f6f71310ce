#!/usr/bin/env bash
# Set up the project (first run only) and serve the example notes service on http://127.0.0.1:5000.
# SQLite in examples/quart_app/instance/ by default; DATABASE_URL=postgresql+asyncpg://... for PostgreSQL.
# WORKERS=4 runs several hypercorn workers: they all start at once and only one migrates.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
[ -x "$root/.venv/bin/hypercorn" ] || bash "$root/scripts/bootstrap"
cd "$root/examples/quart_app"
exec "$root/.venv/bin/hypercorn" --bind "${BIND:-127.0.0.1:5000}" --workers "${WORKERS:-1}" app:app
