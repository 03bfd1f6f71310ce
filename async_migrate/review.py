"""Safe autogenerate: the review a careful person would give every generated migration.

Alembic's autogenerate cannot tell a rename from a drop plus an add (the data is lost on upgrade), and
emits operations that fail or hurt on a live database. This module looks at the generated operations
before they are written:

- **Renames**: a dropped and an added column of one table with compatible type and nullability, or a
  dropped and a created table with the same columns (and any case-only change of a table name), are
  rename candidates. An accepted one becomes ``op.rename_table`` / ``alter_column(new_column_name=...)``
  with a downgrade that renames back.
- **Lint rules** (:func:`lint_rule`): each finding is written as a ``# WARNING:`` comment above its
  operation in the script and reported to the user. ``quart db check --strict`` fails while any script
  still carries such a comment: delete the comment once the operation has been reviewed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import render_op
from alembic.operations import ops

__all__ = [
    "WARNING_MARK",
    "Finding",
    "LintContext",
    "RenameCandidate",
    "Review",
    "lint_rule",
    "review_migration",
    "unreviewed_warnings",
]

#: What starts each finding's comment in a generated script.
WARNING_MARK = "# WARNING:"

RenamePolicy = Literal["ask", "yes", "no"] | Callable[["RenameCandidate"], bool]


@dataclass(frozen=True)
class LintContext:
    """What a lint rule knows besides the operation itself."""

    #: The database dialect's name (``postgresql``, ``sqlite``, ...).
    dialect: str
    #: Tables this migration creates: changes to them touch no existing rows.
    new_tables: frozenset[str]
    #: The table of an operation nested in a table's batch (``ModifyTableOps``), else the op's own.
    table_name: str | None


LintRule = Callable[[ops.MigrateOperation, LintContext], "Iterable[str] | str | None"]

_RULES: list[LintRule] = []


def lint_rule(rule: LintRule) -> LintRule:
    """Register a lint rule: ``rule(op, context)`` returns a warning (or several, or None) for one
    generated operation. Used as a decorator; the built-in rules below are registered the same way::

        @lint_rule
        def no_drop_of_audit_tables(op, context):
            if isinstance(op, ops.DropTableOp) and op.table_name.startswith("audit_"):
                return f"drops audit table {op.table_name}: audits must be kept for 7 years"
    """
    _RULES.append(rule)
    return rule


@dataclass
class Finding:
    """One warning about one operation."""

    message: str
    operation: str


@dataclass
class RenameCandidate:
    """A drop and an add that may be one rename."""

    kind: Literal["table", "column"]
    table: str | None
    old: str
    new: str

    def question(self) -> str:
        if self.kind == "table":
            return f"Did you rename table {self.old} to {self.new}?"
        return f"Did you rename {self.table}.{self.old} to {self.table}.{self.new}?"

    def describe(self) -> str:
        if self.kind == "table":
            return f"table {self.old} -> {self.new}"
        return f"{self.table}.{self.old} -> {self.table}.{self.new}"


@dataclass
class Review:
    """What the review of one generated migration found and did."""

    renamed: list[RenameCandidate] = field(default_factory=list)
    declined: list[RenameCandidate] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def messages(self) -> list[str]:
        out = [f"Renamed {c.describe()} (instead of drop + add)" for c in self.renamed]
        out += [f"{f.operation}: {f.message}" for f in self.findings]
        return out


# -- rename operations that know their own reverse ----------------------------------------------------------


class RenameTable(ops.RenameTableOp):
    """``op.rename_table`` that reverses to the opposite rename (Alembic's has no reverse)."""

    def reverse(self) -> RenameTable:
        return RenameTable(self.new_table_name, self.table_name, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("rename_table", self.schema, self.table_name, self.new_table_name)


class RenameColumn(ops.AlterColumnOp):
    """``alter_column(..., new_column_name=...)`` that reverses to the opposite rename."""

    def reverse(self) -> RenameColumn:
        assert self.modify_name is not None
        return RenameColumn(
            self.table_name,
            self.modify_name,
            schema=self.schema,
            modify_name=self.column_name,
            existing_type=self.existing_type,
            existing_nullable=self.existing_nullable,
            existing_server_default=self.existing_server_default,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("rename_column", self.schema, self.table_name, self.column_name, self.modify_name)


@renderers.dispatch_for(RenameTable)
def _render_rename_table(autogen_context: AutogenContext, op: RenameTable) -> str:
    schema = f", schema={op.schema!r}" if op.schema else ""
    return f"op.rename_table({op.table_name!r}, {op.new_table_name!r}{schema})"


class _Warned(ops.MigrateOperation):
    """An operation rendered with ``# WARNING:`` comments above it."""

    def __init__(self, inner: ops.MigrateOperation, warnings: list[str]) -> None:
        self.inner = inner
        self.warnings = warnings

    def reverse(self) -> ops.MigrateOperation:
        return self.inner.reverse()

    def to_diff_tuple(self) -> Any:
        return self.inner.to_diff_tuple()


@renderers.dispatch_for(_Warned)
def _render_warned(autogen_context: AutogenContext, op: _Warned) -> list[str]:
    return [f"{WARNING_MARK} {w}" for w in op.warnings] + render_op(autogen_context, op.inner)


# -- rename detection ---------------------------------------------------------------------------------------


def _type_family(column: sa.Column[Any], dialect: sa.engine.Dialect) -> str:
    try:
        compiled = column.type.compile(dialect=dialect)
    except Exception:
        compiled = type(column.type).__name__
    return compiled.split("(")[0].strip().upper()


def _columns_of(
    op: ops.CreateTableOp | ops.DropTableOp, dialect: sa.engine.Dialect
) -> dict[str, tuple[str, bool]]:
    table = op.to_table()
    return {c.name.lower(): (_type_family(c, dialect), bool(c.nullable)) for c in table.columns}


def _table_candidates(
    upgrade: ops.UpgradeOps, dialect: sa.engine.Dialect
) -> Iterator[tuple[ops.DropTableOp, ops.CreateTableOp]]:
    drops = [op for op in upgrade.ops if isinstance(op, ops.DropTableOp)]
    creates = [op for op in upgrade.ops if isinstance(op, ops.CreateTableOp)]
    used: set[int] = set()
    for drop in drops:
        for create in creates:
            if id(create) in used or drop.schema != create.schema:
                continue
            case_only = drop.table_name.lower() == create.table_name.lower()
            if case_only or (
                drop._reverse is not None
                and _columns_of(drop, dialect) == _columns_of(create, dialect)
            ):
                used.add(id(create))
                yield drop, create
                break


def _column_candidates(
    table_ops: ops.ModifyTableOps, dialect: sa.engine.Dialect
) -> Iterator[tuple[ops.DropColumnOp, ops.AddColumnOp]]:
    drops = [op for op in table_ops.ops if isinstance(op, ops.DropColumnOp)]
    adds = [op for op in table_ops.ops if isinstance(op, ops.AddColumnOp)]
    used: set[int] = set()
    for drop in drops:
        old = drop.to_column()
        for add in adds:
            if id(add) in used:
                continue
            new = add.column
            if (
                _type_family(old, dialect) == _type_family(new, dialect)
                and bool(old.nullable) == bool(new.nullable)
                and old.name != new.name
            ):
                used.add(id(add))
                yield drop, add
                break


def _decide(candidate: RenameCandidate, policy: RenamePolicy) -> bool:
    if callable(policy):
        return bool(policy(candidate))
    return policy == "yes"


def _apply_renames(
    upgrade: ops.UpgradeOps, dialect: sa.engine.Dialect, policy: RenamePolicy, review: Review
) -> bool:
    changed = False
    for drop, create in list(_table_candidates(upgrade, dialect)):
        candidate = RenameCandidate("table", None, drop.table_name, create.table_name)
        if not _decide(candidate, policy):
            _declined(drop, candidate, review)
            continue
        review.renamed.append(candidate)
        position = upgrade.ops.index(drop)
        upgrade.ops.remove(drop)
        upgrade.ops.remove(create)
        if candidate.old.lower() == candidate.new.lower():
            # Case-only: SQLite (and some collations) see the new name as taken: go through a free one.
            step = f"{candidate.new}_renaming"
            renames = [
                RenameTable(candidate.old, step, schema=drop.schema),
                RenameTable(step, candidate.new, schema=drop.schema),
            ]
        else:
            renames = [RenameTable(candidate.old, candidate.new, schema=drop.schema)]
        upgrade.ops[position:position] = renames
        _retarget_indexes(upgrade, candidate.old, candidate.new)
        changed = True
    for table_ops in [op for op in upgrade.ops if isinstance(op, ops.ModifyTableOps)]:
        for drop_column, add_column in list(_column_candidates(table_ops, dialect)):
            candidate = RenameCandidate(
                "column", table_ops.table_name, drop_column.column_name, add_column.column.name
            )
            if not _decide(candidate, policy):
                _declined(drop_column, candidate, review)
                continue
            review.renamed.append(candidate)
            old = drop_column.to_column()
            position = table_ops.ops.index(add_column)
            table_ops.ops.remove(add_column)
            table_ops.ops.remove(drop_column)
            table_ops.ops.insert(
                min(position, len(table_ops.ops)),
                RenameColumn(
                    table_ops.table_name,
                    candidate.old,
                    schema=table_ops.schema,
                    modify_name=candidate.new,
                    existing_type=old.type,
                    existing_nullable=old.nullable,
                ),
            )
            changed = True
    return changed


_NOTES = "async_migrate.warnings"


def _declined(drop: ops.MigrateOperation, candidate: RenameCandidate, review: Review) -> None:
    review.declined.append(candidate)
    trap = (
        " (and SQLite will refuse to create a name that differs only in case)"
        if candidate.old.lower() == candidate.new.lower()
        else ""
    )
    drop.info.setdefault(_NOTES, []).append(
        f"possible rename of {candidate.describe().replace(' -> ', ' to ')}, generated as drop + add: the "
        f"data of {candidate.old} is LOST on upgrade{trap}. If it is a rename, run migrate again with "
        "--renames=yes (or answer y), or write op.rename_table / alter_column(new_column_name=...)"
    )


def _retarget_indexes(upgrade: ops.UpgradeOps, old: str, new: str) -> None:
    """After a table rename, drop the old table's indexes from the renamed table; identical index pairs
    (same name, same columns) are kept as they are instead."""
    drops = [op for op in upgrade.ops if isinstance(op, ops.DropIndexOp) and op.table_name == old]
    creates = [
        op for op in upgrade.ops if isinstance(op, ops.CreateIndexOp) and op.table_name == new
    ]
    for drop in drops:
        twin = next(
            (
                c
                for c in creates
                if c.index_name == drop.index_name
                and [str(x) for x in c.columns] == [str(x) for x in drop.to_index().expressions]
            ),
            None,
        )
        if twin is not None:
            upgrade.ops.remove(drop)
            upgrade.ops.remove(twin)
            creates.remove(twin)
        else:
            drop.table_name = new
            upgrade.ops.remove(drop)
            upgrade.ops.insert(_last_rename_position(upgrade) + 1, drop)


def _last_rename_position(upgrade: ops.UpgradeOps) -> int:
    return max(i for i, op in enumerate(upgrade.ops) if isinstance(op, RenameTable))


# -- lint ---------------------------------------------------------------------------------------------------


def _walk(
    upgrade: ops.OpContainer, table_name: str | None = None
) -> Iterator[tuple[ops.OpContainer, int, ops.MigrateOperation, str | None]]:
    for index, op in enumerate(list(upgrade.ops)):
        if isinstance(op, ops.ModifyTableOps):
            yield from _walk(op, op.table_name)
        else:
            yield upgrade, index, op, table_name or getattr(op, "table_name", None)


def _lint(upgrade: ops.UpgradeOps, dialect: str, review: Review) -> None:
    new_tables = frozenset(op.table_name for op in upgrade.ops if isinstance(op, ops.CreateTableOp))
    for container, index, op, table_name in list(_walk(upgrade)):
        context = LintContext(dialect, new_tables, table_name)
        warnings: list[str] = []
        for rule in _RULES:
            result = rule(op, context)
            if result is None:
                continue
            warnings.extend([result] if isinstance(result, str) else result)
        if warnings:
            container.ops[index] = _Warned(op, warnings)
            label = _label(op, table_name)
            review.findings.extend(Finding(w, label) for w in warnings)


def _label(op: ops.MigrateOperation, table_name: str | None) -> str:
    try:
        diff = op.to_diff_tuple()
        if isinstance(diff, list) and diff:
            diff = diff[0]
        kind = diff[0] if isinstance(diff, tuple) else type(op).__name__
    except Exception:
        kind = type(op).__name__
    column = getattr(op, "column_name", None) or getattr(getattr(op, "column", None), "name", None)
    subject = ".".join(str(p) for p in (table_name, column) if p)
    return f"{kind} {subject}".strip()


@lint_rule
def _noted_during_review(op: ops.MigrateOperation, context: LintContext) -> list[str] | None:
    notes: list[str] | None = op.info.get(_NOTES)
    return notes


@lint_rule
def _drop_loses_data(op: ops.MigrateOperation, context: LintContext) -> str | None:
    if isinstance(op, ops.DropTableOp):
        return f"drops table {op.table_name} and every row in it; make sure nothing still needs the data"
    if isinstance(op, ops.DropColumnOp):
        return (
            f"drops column {context.table_name}.{op.column_name} and its data; if it was renamed, use "
            "alter_column(new_column_name=...) instead"
        )
    return None


@lint_rule
def _not_null_without_server_default(op: ops.MigrateOperation, context: LintContext) -> str | None:
    if (
        isinstance(op, ops.AddColumnOp)
        and context.table_name not in context.new_tables
        and op.column.nullable is False
        and op.column.server_default is None
        and not op.column.primary_key
    ):
        return (
            f"adds NOT NULL column {context.table_name}.{op.column.name} without a server_default: "
            "this fails on a table that has rows. Give the model column a server_default=..., or add "
            "it nullable, backfill, then make it NOT NULL"
        )
    if isinstance(op, ops.AlterColumnOp) and op.modify_nullable is False:
        return (
            f"makes {context.table_name}.{op.column_name} NOT NULL: this fails while any row has NULL "
            "there; backfill first (op.execute('UPDATE ...'))"
        )
    return None


_INTEGER_WIDTH = {"SMALLINT": 1, "INTEGER": 2, "INT": 2, "BIGINT": 3}


@lint_rule
def _type_narrowing(op: ops.MigrateOperation, context: LintContext) -> str | None:
    if not isinstance(op, ops.AlterColumnOp) or op.modify_type is None or op.existing_type is None:
        return None
    old, new = op.existing_type, op.modify_type
    where = f"{context.table_name}.{op.column_name}"
    old_length, new_length = getattr(old, "length", None), getattr(new, "length", None)
    if isinstance(old, sa.Text) and not isinstance(new, sa.Text) and new_length:
        return f"narrows {where} from {old} to {new}: longer values are cut or rejected"
    if old_length and new_length and new_length < old_length:
        return f"narrows {where} from {old} to {new}: longer values are cut or rejected"
    old_int = _INTEGER_WIDTH.get(str(old).upper())
    new_int = _INTEGER_WIDTH.get(str(new).upper())
    if old_int and new_int and new_int < old_int:
        return f"narrows {where} from {old} to {new}: larger numbers no longer fit"
    old_precision, new_precision = getattr(old, "precision", None), getattr(new, "precision", None)
    if old_precision and new_precision and new_precision < old_precision:
        return f"narrows {where} from {old} to {new}: values may no longer fit"
    return None


@lint_rule
def _blocking_index_build(op: ops.MigrateOperation, context: LintContext) -> str | None:
    if (
        context.dialect == "postgresql"
        and isinstance(op, ops.CreateIndexOp)
        and op.table_name not in context.new_tables
        and not op.kw.get("postgresql_concurrently")
    ):
        return (
            f"builds index {op.index_name} on existing table {op.table_name} without "
            "postgresql_concurrently=True: writes to the table wait until it is built. On a big table, "
            "create it with postgresql_concurrently=True inside `with op.get_context().autocommit_block():`"
        )
    return None


_NAMED_CONSTRAINTS = (sa.ForeignKeyConstraint, sa.UniqueConstraint, sa.CheckConstraint)


@lint_rule
def _unnamed_constraint(op: ops.MigrateOperation, context: LintContext) -> str | None:
    unnamed: list[str] = []
    if isinstance(op, ops.AddConstraintOp) and not isinstance(op, ops.CreatePrimaryKeyOp):
        if getattr(op, "constraint_name", None) is None:
            unnamed.append(op.constraint_type)
    elif isinstance(op, ops.CreateTableOp):
        unnamed += [
            type(c).__name__
            for c in op.to_table().constraints
            if isinstance(c, _NAMED_CONSTRAINTS) and not c.name
        ]
    elif isinstance(op, ops.AddColumnOp):
        unnamed += [
            "foreign key" for fk in op.column.foreign_keys if not fk.constraint or not fk.name
        ]
    if not unnamed:
        return None
    return (
        f"creates an unnamed constraint ({', '.join(sorted(set(unnamed)))}) on {context.table_name}: "
        "downgrades and SQLite batch migrations cannot refer to it. Give the MetaData a "
        "naming_convention (see SQLAlchemy's 'Configuring Constraint Naming Conventions')"
    )


# -- entry points -------------------------------------------------------------------------------------------


_REVIEWED = "async_migrate.reviewed"


def review_migration(
    script: ops.MigrationScript,
    dialect: sa.engine.Dialect,
    renames: RenamePolicy = "no",
    review: Review | None = None,
) -> Review:
    """Review one generated migration in place: apply accepted renames (and rebuild its downgrade),
    then mark every lint finding on its operation.

    In a multi-database setup Alembic calls the hook once per database, each time with one more set of
    operations: those already reviewed are skipped, and the findings add up in ``review``.
    """
    review = review or Review()
    for downgrade_index, upgrade in enumerate(script.upgrade_ops_list):
        if upgrade.info.get(_REVIEWED):
            continue
        upgrade.info[_REVIEWED] = True
        if _apply_renames(upgrade, dialect, renames, review):
            script.downgrade_ops_list[downgrade_index].ops[:] = upgrade.reverse().ops
        _lint(upgrade, dialect.name, review)
    return review


_WARNING_LINE = re.compile(rf"^\s*{re.escape(WARNING_MARK)}\s*(.*)$", re.MULTILINE)


def unreviewed_warnings(paths: Iterable[str | Path]) -> list[tuple[str, str]]:
    """``(file, warning)`` for every ``# WARNING:`` comment still in the given revision scripts."""
    found = []
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError:
            continue
        found += [(str(path), m.group(1)) for m in _WARNING_LINE.finditer(text)]
    return found
