"""Squashing a long history into one baseline revision: what it replaces, how it is written, where the old
scripts go, and how a database in the middle of the old history is brought through them.

The baseline is what the old scripts produced, not what the models say: a scratch database of the same
dialect is upgraded through the old scripts to the target revision, reflected, and rendered by Alembic's
autogenerate renderer (``create_table``/``create_index`` ops; its downgrade drops it all). The baseline
keeps the target's revision id, so databases at the target or later are untouched, and the revisions
after it still stand on it. The replaced scripts move to ``versions/squashed/<target>/``, outside the
folders Alembic loads; ``upgrade --through-squashed`` loads them for one run.
"""

from __future__ import annotations

import datetime
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import script_heads
from .errors import CommandError
from .reflection import reflected, table_rows

if TYPE_CHECKING:
    from alembic.script import Script, ScriptDirectory

#: Where the replaced scripts go, under the first version folder.
ARCHIVE = "squashed"

# What marks a revision that changes data (its rows would be lost with its script) rather than schema.
_DATA_MARKERS = {
    "op.execute": re.compile(r"\bop\.execute\("),
    "bulk_insert": re.compile(r"\bbulk_insert\("),
    "an ORM session": re.compile(r"\b(Session|sessionmaker)\("),
    "the connection": re.compile(r"\bget_bind\(\)\.execute\("),
}


@dataclass(frozen=True)
class SquashPlan:
    """What a squash replaces: the ``target`` revision and every revision below it, oldest first."""

    target: str
    replaced: tuple[Script, ...]
    data_revisions: tuple[tuple[str, str], ...]

    def data_listing(self) -> str:
        return ", ".join(f"{rev} ({how})" for rev, how in self.data_revisions)


def plan_squash(script: ScriptDirectory, to: str) -> SquashPlan:
    """The plan for squashing everything up to ``to`` (``head``, or a revision id); refuses what this
    squash cannot do: several heads below the target, a branch or merge in the replaced history."""
    try:
        target = script.get_revision(to)
    except Exception as exc:
        raise CommandError(f"Cannot squash to {to!r}: {exc}") from None
    if target is None:
        raise CommandError(f"Cannot squash to {to!r}: there is no revision to squash.")
    replaced = list(reversed(list(script.iterate_revisions(target.revision, "base"))))
    ids = {s.revision for s in replaced}
    # Revisions that stand on a replaced one other than the target: a branch the baseline would cut off.
    outside = [
        s.revision
        for s in script.walk_revisions()
        if s.revision not in ids and set(s._all_down_revisions) & (ids - {target.revision})
    ]
    for item in replaced:
        if len(item._all_down_revisions) > 1 or item.dependencies or outside:
            raise CommandError(
                f"Cannot squash to {target.revision}: the history below it is not one line "
                f"({item.revision} merges or depends on others, or {', '.join(outside) or 'another revision'} "
                "branches off below the target). Squash to a revision below which the history is linear, "
                "or merge the branches first."
            )
    if len(replaced) < 2:
        raise CommandError(f"Nothing to squash: {target.revision} is the first revision.")
    data = []
    for item in replaced:
        text = Path(item.path).read_text(encoding="utf-8", errors="replace")
        body = text.split("def upgrade", 1)[-1]
        found = [name for name, pattern in _DATA_MARKERS.items() if pattern.search(body)]
        if found:
            data.append((item.revision, ", ".join(found)))
    return SquashPlan(target.revision, tuple(replaced), tuple(data))


# -- the scratch database, rendered ------------------------------------------------------------------------


def _enum_names(metadata: sa.MetaData) -> list[str]:
    names: dict[str, None] = {}
    for table in metadata.sorted_tables:
        for column in table.columns:
            name = getattr(column.type, "name", None)
            if isinstance(column.type, sa.Enum) and name:
                names[name] = None
    return list(names)


def _seed(connection: Connection, metadata: sa.MetaData) -> list[str]:
    """``op.bulk_insert`` lines for every row in the scratch database: what the data migrations left."""
    lines = []
    for table in metadata.sorted_tables:
        rows = table_rows(connection, table)
        if not rows:
            continue
        columns = ", ".join(f"sa.column({c.name!r})" for c in table.columns)
        lines.append(f"op.bulk_insert(sa.table({table.name!r}, {columns}), {rows!r})")
    return lines


def render_baseline(connection: Connection, ignored: set[str], keep_data: bool) -> dict[str, str]:
    """The baseline's ``upgrades``, ``downgrades`` and ``imports`` (the template's names) for the schema
    of the scratch database on ``connection``, and with ``keep_data`` its rows."""
    from alembic.autogenerate import render_python_code
    from alembic.operations import ops

    metadata = reflected(connection, ignored)
    tables = metadata.sorted_tables
    up: list[Any] = []
    for table in tables:
        indexes = list(table.indexes)
        for index in indexes:
            table.indexes.discard(index)  # created by their own ops, after the table
        up.append(ops.CreateTableOp.from_table(table))
        up.extend(ops.CreateIndexOp.from_index(index) for index in indexes)
    down = [ops.DropTableOp.from_table(table) for table in reversed(tables)]
    upgrades = _body(render_python_code(ops.UpgradeOps(ops=up)))
    if keep_data:
        upgrades += "".join(f"\n    {line}" for line in _seed(connection, metadata))
    downgrades = _body(render_python_code(ops.DowngradeOps(ops=down)))
    if connection.dialect.name == "postgresql":
        downgrades += "".join(
            f"\n    sa.Enum(name={name!r}).drop(op.get_bind(), checkfirst=True)"
            for name in _enum_names(metadata)
        )
    dialects = sorted(
        name for name in ("postgresql", "mysql", "sqlite") if f"{name}." in upgrades + downgrades
    )
    imports = "".join(f"from sqlalchemy.dialects import {name}\n" for name in dialects)
    if "datetime." in upgrades:
        imports += "import datetime\n"
    if "Decimal(" in upgrades:
        imports += "from decimal import Decimal\n"
    return {"upgrades": upgrades, "downgrades": downgrades, "imports": imports}


def _body(code: str) -> str:
    lines = [line for line in code.splitlines() if "### " not in line]
    return "\n".join(lines).strip()


# -- the files ---------------------------------------------------------------------------------------------


def archive_folder(location: str | Path, target: str) -> Path:
    return Path(location) / ARCHIVE / target


def write_baseline(
    script: ScriptDirectory, plan: SquashPlan, message: str, code: dict[str, str], location: Path
) -> Path:
    """Move the replaced scripts into the archive folder, then write the baseline in their place (with
    the project's ``script.py.mako``). Nothing is moved when the archive folder exists already."""
    from alembic.util import format_as_comma, template_to_file

    archive = archive_folder(location, plan.target)
    if archive.exists():
        raise CommandError(
            f"{archive} exists already: a squash to {plan.target} was made before. Remove that folder "
            "(after checking nothing in it is needed) to squash again."
        )
    target_script = plan.replaced[-1]
    variables: dict[str, Any] = dict(code)
    name = (
        f"{plan.target}_{re.sub(r'[^a-z0-9]+', '_', message.lower()).strip('_') or 'baseline'}.py"
    )
    archive.mkdir(parents=True)
    for item in plan.replaced:
        shutil.move(item.path, archive / Path(item.path).name)
    destination = location / name
    template_to_file(
        str(Path(script.dir) / "script.py.mako"), str(destination), script.output_encoding,
        up_revision=plan.target, down_revision=None, branch_labels=target_script.branch_labels or None,
        depends_on=None, create_date=datetime.datetime.now(), comma=format_as_comma,
        message=f"{message}: the schema of {plan.target}, squashed from {len(plan.replaced)} revisions",
        **variables,
    )  # fmt: skip
    return destination


def archived_scripts(locations: Sequence[str]) -> dict[str, Path]:
    """The scripts archived by squashes, by revision id."""
    found: dict[str, Path] = {}
    for location in locations:
        root = Path(location) / ARCHIVE
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for name, values in script_heads.headers([str(folder)]):
                revision = values.get("revision")
                if isinstance(revision, str):
                    found.setdefault(revision, folder / name)
    return found


def squashed_revisions(locations: Sequence[str]) -> dict[str, Path]:
    """The revisions archived by squashes, by id: the archive folder each is in."""
    return {revision: path.parent for revision, path in archived_scripts(locations).items()}
