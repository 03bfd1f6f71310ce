"""``history --graph``: the revision DAG as terminal lanes (like ``git log --graph``), Mermaid or Graphviz.

Only the scripts are read (:meth:`ScriptDirectory.walk_revisions`); the database's revisions, if wanted,
are passed in as ``current_heads``. Every format shows each revision once with its short id, marks
(``(head)``, ``(current)``, ``(branchpoint)``, ``(mergepoint)``), message, branch labels and
``depends_on`` revisions. Branch labels are Alembic's (``Script.branch_labels``): a label also names
the later revisions of its branch, as in ``alembic history``.

The text lanes, newest first (Alembic's walk order, which lists every revision before its parents)::

    *   m3 (head) (current) (mergepoint) merge heads [label: feature]
    |\\
    * | b1 add email
    | * b2 add phone [label: feature]
    |/
    * a1 (branchpoint) create account

``*`` is a revision; ``|`` a lane waiting for a parent; ``\\`` opens a lane for a merge's further parent;
``/`` (and ``_`` when crossing lanes) joins the children of a branch point; a revision without parents
(a base) ends its lane with one row that leaves that column empty, so that an unrelated revision drawn
below it is not mistaken for its parent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.script import Script, ScriptDirectory

__all__ = ["FORMATS", "render_graph"]

FORMATS = ("text", "mermaid", "dot")
"""The values ``render_graph`` accepts for ``fmt`` (for ``click.Choice``)."""

SHORT_ID_LENGTH = 7
"""Longer revision ids are shown by their shortest unique prefix of at least this length (Alembic accepts
unique prefixes of four or more characters wherever a revision id is expected)."""


@dataclass(frozen=True)
class _Node:
    revision: str
    short: str
    parents: tuple[str, ...]
    dependencies: tuple[str, ...]
    labels: tuple[str, ...]
    message: str
    head: bool
    current: bool
    branch_point: bool
    merge_point: bool

    @property
    def marks(self) -> list[str]:
        marks = []
        if self.head:
            marks.append("(head)")
        if self.current:
            marks.append("(current)")
        if self.branch_point:
            marks.append("(branchpoint)")
        if self.merge_point:
            marks.append("(mergepoint)")
        return marks

    def notes(self, short: dict[str, str]) -> list[str]:
        notes = []
        if self.labels:
            kind = "label" if len(self.labels) == 1 else "labels"
            notes.append(f"[{kind}: {', '.join(self.labels)}]")
        if self.dependencies:
            notes.append(f"[depends on: {', '.join(short[d] for d in self.dependencies)}]")
        return notes

    def title(self, short: dict[str, str]) -> str:
        """One line: short id, marks, message, labels and dependencies."""
        parts = [self.short, *self.marks]
        if self.message:
            parts.append(self.message)
        return " ".join(parts + self.notes(short))


def render_graph(
    script: ScriptDirectory, current_heads: Sequence[str] = (), fmt: str = "text"
) -> str:
    """The revision graph of ``script`` as ``fmt``: ``"text"``, ``"mermaid"`` or ``"dot"``.

    ``current_heads`` are the database's revisions, marked ``(current)``; ids that no script has are
    ignored. The result has no trailing newline; with no revisions, ``text`` is empty.
    Raises :class:`ValueError` for another ``fmt``; Alembic's errors (e.g. a missing down revision)
    propagate.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown graph format {fmt!r}; the formats are: {', '.join(FORMATS)}.")
    nodes = _nodes(script.walk_revisions(), set(current_heads))
    short = {node.revision: node.short for node in nodes}
    if fmt == "mermaid":
        return _mermaid(nodes, short)
    if fmt == "dot":
        return _dot(nodes, short)
    return _text(nodes, short)


def _to_tuple(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _nodes(scripts: Iterable[Script], current: set[str]) -> list[_Node]:
    scripts = list(scripts)
    ids = [s.revision for s in scripts]
    shorts = _short_ids(ids)
    nodes = []
    for s in scripts:
        # Alembic resolves depends_on (which may name a branch label) to revision ids when it loads.
        dependencies = getattr(s, "_resolved_dependencies", None)
        if dependencies is None:
            dependencies = _to_tuple(s.dependencies)
        nodes.append(
            _Node(
                revision=s.revision,
                short=shorts[s.revision],
                parents=_to_tuple(s.down_revision),
                dependencies=tuple(d for d in dependencies if d in shorts),
                labels=tuple(sorted(s.branch_labels)),
                message=" ".join(s.doc.split()),
                head=s.is_head,
                current=s.revision in current,
                branch_point=s.is_branch_point,
                merge_point=s.is_merge_point,
            )
        )
    return nodes


def _short_ids(ids: Sequence[str]) -> dict[str, str]:
    """Each id's shortest prefix of at least ``SHORT_ID_LENGTH`` characters that starts no other id
    (the whole id when it is itself the start of another)."""
    ordered = sorted(set(ids))
    short = {}
    for k, rev in enumerate(ordered):
        # In sorted order, the ids sharing the longest prefix with ``rev`` are its neighbours.
        neighbours = ordered[max(k - 1, 0) : k] + ordered[k + 1 : k + 2]
        shared = max((_shared_prefix(rev, other) for other in neighbours), default=0)
        short[rev] = rev[: max(SHORT_ID_LENGTH, shared + 1)]
    return short


def _shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# -- text --------------------------------------------------------------------------------------------


class _Row:
    """One line of graph glyphs: lane ``j`` is drawn at column ``2 * j``; diagonals at odd columns."""

    def __init__(self) -> None:
        self.cells: dict[int, str] = {}

    def lane(self, j: int, glyph: str = "|") -> _Row:
        self.cells[2 * j] = glyph
        return self

    def at(self, column: int, glyph: str) -> _Row:
        self.cells[column] = glyph
        return self

    def render(self, width: int = 0) -> str:
        size = max([width, *(c + 1 for c in self.cells)])
        return "".join(self.cells.get(c, " ") for c in range(size))


def _text(nodes: Sequence[_Node], short: dict[str, str]) -> str:
    lanes: list[str] = []  # lane j waits for the revision lanes[j]
    out: list[str] = []
    for index, node in enumerate(nodes):
        waiting = [j for j, rev in enumerate(lanes) if rev == node.revision]
        if not waiting:  # no child drawn yet: a head, in a new lane on the right
            lanes.append(node.revision)
            waiting = [len(lanes) - 1]
        col = waiting[0]
        # A branch point: join its children's lanes into the leftmost, nearest first.
        for _ in waiting[1:]:
            i = lanes.index(node.revision, col + 1)
            out.extend(_join(len(lanes), col, i))
            del lanes[i]

        row = _Row()
        for j in range(len(lanes)):
            row.lane(j, "*" if j == col else "|")
        # A merge's message starts where its widest lane row will end, as in git.
        width = 2 * (len(lanes) + max(len(node.parents) - 1, 0))
        out.append(f"{row.render(width - 1)} {node.title(short)}")

        if not node.parents:
            if index + 1 < len(nodes):
                # A base ends its lane with an empty column (lanes on its right move left).
                row = _Row()
                for j in range(len(lanes)):
                    if j < col:
                        row.lane(j)
                    elif j > col:
                        row.at(2 * j - 1, "/")
                out.append(row.render().rstrip())
            del lanes[col]
            continue

        lanes[col] = node.parents[0]
        # A merge: open one lane per further parent, each from the lane just opened; lanes on the
        # right move one column right per row.
        for r, parent in enumerate(node.parents[1:], start=1):
            source = col + r - 1
            row = _Row()
            for j in range(len(lanes)):
                if j <= source:
                    row.lane(j)
                else:
                    row.at(2 * j + 1, "\\")
            row.at(2 * source + 1, "\\")
            out.append(row.render().rstrip())
            lanes.insert(col + r, parent)
    return "\n".join(out)


def _join(count: int, col: int, i: int) -> list[str]:
    """The rows that bring lane ``i`` into lane ``col < i`` among ``count`` lanes; lanes right of ``i``
    move one column left."""
    first = _Row()
    for j in range(count):
        if j < i:
            first.lane(j)
        elif j > i:
            first.at(2 * j - 1, "/")
    first.at(2 * i - 1, "/")
    if i == col + 1:
        return [first.render().rstrip()]
    # Cross the lanes in between: `| |_|/` then `|/| |`.
    for column in range(2 * col + 3, 2 * i - 2, 2):
        first.at(column, "_")
    second = _Row()
    for j in range(count - 1):
        second.lane(j)
    second.at(2 * col + 1, "/")
    return [first.render().rstrip(), second.render().rstrip()]


# -- mermaid -------------------------------------------------------------------------------------------

_MERMAID_ESCAPES = {"#": "#35;", '"': "#quot;", "&": "#amp;", "<": "#lt;", ">": "#gt;"}


def _mermaid_ids(nodes: Sequence[_Node]) -> dict[str, str]:
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for node in nodes:
        base = "r_" + re.sub(r"[^0-9A-Za-z_]", "_", node.revision)
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        ids[node.revision] = name
    return ids


def _mermaid(nodes: Sequence[_Node], short: dict[str, str]) -> str:
    ids = _mermaid_ids(nodes)
    lines = ["flowchart BT"]
    for node in nodes:
        text = "".join(_MERMAID_ESCAPES.get(c, c) for c in node.title(short))
        lines.append(f'    {ids[node.revision]}["{text}"]')
    # Edges point from a revision to the revisions built on it: base at the bottom, heads on top.
    for node in nodes:
        for parent in node.parents:
            lines.append(f"    {ids[parent]} --> {ids[node.revision]}")
        for dependency in node.dependencies:
            lines.append(f"    {ids[dependency]} -.->|depends on| {ids[node.revision]}")
    lines.append("    classDef head stroke-width:3px")
    lines.append("    classDef current fill:#d4f7d4,stroke:#2e7d32")
    for name, members in (
        ("head", [n for n in nodes if n.head]),
        ("current", [n for n in nodes if n.current]),
    ):
        if members:
            lines.append(f"    class {','.join(ids[n.revision] for n in members)} {name}")
    return "\n".join(lines)


# -- dot -----------------------------------------------------------------------------------------------


def _dot_string(text: str) -> str:
    """A double-quoted DOT string; newlines become DOT's centred line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _dot(nodes: Sequence[_Node], short: dict[str, str]) -> str:
    lines = [
        "digraph revisions {",
        "    rankdir=BT;",
        '    node [shape=box, fontname="monospace"];',
    ]
    for node in nodes:
        label = [" ".join([node.short, *node.marks])]
        if node.message:
            label.append(node.message)
        label.extend(node.notes(short))
        attributes = ["label=" + _dot_string("\n".join(label))]
        if node.head:
            attributes.append("penwidth=3")
        if node.current:
            attributes.append('style=filled, fillcolor="#d4f7d4"')
        lines.append(f"    {_dot_string(node.revision)} [{', '.join(attributes)}];")
    # Edges point from a revision to the revisions built on it: base at the bottom, heads on top.
    for node in nodes:
        for parent in node.parents:
            lines.append(f"    {_dot_string(parent)} -> {_dot_string(node.revision)};")
        for dependency in node.dependencies:
            lines.append(
                f"    {_dot_string(dependency)} -> {_dot_string(node.revision)}"
                ' [style=dashed, label="depends on"];'
            )
    lines.append("}")
    return "\n".join(lines)
