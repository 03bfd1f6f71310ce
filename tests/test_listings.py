"""The listing commands (heads, branches, show, history, current) print what Alembic's own commands print,
and import each revision script once per call."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from async_migrate import Migrator

# A history with a branch point, a merge, a branch label and a dependency:
#   a1 -> b1 -> m1 (merge) ; a1 -> b2 [label feature] -> m1 ; c1 depends on b1, off a1.
SCRIPTS = {
    "a1": ("None", "None", "None"),
    "b1": ("'a1'", "None", "None"),
    "b2": ("'a1'", "('feature',)", "None"),
    "m1": ("('b1', 'b2')", "None", "None"),
    "c1": ("'a1'", "None", "'b1'"),
}

# Each script notes its import in the file named by this variable.
MARKER = """
import os as _os
if _os.environ.get("IMPORT_LOG"):
    with open(_os.environ["IMPORT_LOG"], "a") as _log:
        _log.write(revision + "\\n")
"""


def _write_history(directory: Path) -> None:
    for rev, (down, labels, depends) in SCRIPTS.items():
        (directory / "versions" / f"{rev}.py").write_text(
            f'"""{rev} message\n\nRevision ID: {rev}\n"""\n'
            f"revision = {rev!r}\ndown_revision = {down}\nbranch_labels = {labels}\n"
            f"depends_on = {depends}\n{MARKER}\n"
            "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
        )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    directory = tmp_path / "migrations"

    async def prepare() -> None:
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.init()
            _write_history(directory)
            await migrator.upgrade("b1")

    asyncio.run(prepare())
    return url, directory


def _ours(url: str, directory: Path, call: Callable[[Migrator], Any]) -> str:
    out = io.StringIO()

    async def run() -> None:
        async with Migrator(url, None, directory, stdout=out) as migrator:
            await call(migrator)

    asyncio.run(run())
    return out.getvalue()


def _alembic(url: str, directory: Path, call: Callable[[Any], None]) -> str:
    """What Alembic's own command prints on the same Config (env.py then makes its own engine)."""
    out = io.StringIO()
    migrator = Migrator(url, None, directory, stdout=out)
    call(migrator.get_config())
    return out.getvalue()


CASES: list[tuple[str, Callable[[Migrator], Any], Callable[[Any], None]]] = [
    ("heads", lambda m: m.heads(), lambda c: command.heads(c)),
    ("heads -v", lambda m: m.heads(True), lambda c: command.heads(c, verbose=True)),
    (
        "heads --resolve-dependencies",
        lambda m: m.heads(False, True),
        lambda c: command.heads(c, resolve_dependencies=True),
    ),
    ("branches", lambda m: m.branches(), lambda c: command.branches(c)),
    ("branches -v", lambda m: m.branches(True), lambda c: command.branches(c, verbose=True)),
    ("show head-less", lambda m: m.show("m1"), lambda c: command.show(c, "m1")),
    ("show heads", lambda m: m.show("heads"), lambda c: command.show(c, "heads")),
    ("show current", lambda m: m.show("current"), lambda c: command.show(c, "current")),
    ("history", lambda m: m.history(), lambda c: command.history(c)),
    ("history -v", lambda m: m.history(verbose=True), lambda c: command.history(c, verbose=True)),
    ("history -r", lambda m: m.history("a1:m1"), lambda c: command.history(c, "a1:m1")),
    (
        "history -i",
        lambda m: m.history(indicate_current=True),
        lambda c: command.history(c, indicate_current=True),
    ),
    ("history -r current:", lambda m: m.history("current:"), lambda c: command.history(c, "current:")),
    ("current -v", lambda m: m.current(verbose=True), lambda c: command.current(c, verbose=True)),
]


@pytest.mark.parametrize("name, ours, theirs", CASES, ids=[case[0] for case in CASES])
def test_listing_matches_alembic(
    setup: tuple[str, Path],
    name: str,
    ours: Callable[[Migrator], Any],
    theirs: Callable[[Any], None],
) -> None:
    url, directory = setup
    expected = _alembic(url, directory, theirs)
    assert expected.strip(), f"Alembic printed nothing for {name}"
    assert _ours(url, directory, ours) == expected


@pytest.mark.parametrize(
    "name, call",
    [
        ("heads", lambda m: m.heads()),
        ("branches", lambda m: m.branches()),
        ("show", lambda m: m.show("m1")),
        ("show current", lambda m: m.show("current")),
        ("history", lambda m: m.history()),
        ("history -i", lambda m: m.history(indicate_current=True)),
        ("current -v", lambda m: m.current(verbose=True)),
        ("current, not at head", lambda m: m.current()),
    ],
)
def test_each_script_is_imported_once(
    setup: tuple[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    call: Callable[[Migrator], Any],
) -> None:
    url, directory = setup
    log = tmp_path / "imports.log"
    monkeypatch.setenv("IMPORT_LOG", str(log))
    _ours(url, directory, call)
    imported = log.read_text().split()
    assert sorted(imported) == sorted(SCRIPTS), f"{name} imported {sorted(imported)}"
