"""``render_graph`` draws every revision once, with its marks, and lanes that read back as the real DAG."""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from async_migrate.graph import FORMATS, render_graph

Down = str | tuple[str, ...] | None


def write_rev(
    directory: Path,
    rev: str,
    down: Down,
    message: str | None = None,
    labels: tuple[str, ...] | None = None,
    depends_on: str | None = None,
) -> None:
    versions = directory / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (versions / f"{rev}_rev.py").write_text(
        f'r"""{message or "msg " + rev}\n\nRevision ID: {rev}\n"""\n\n'
        f"revision = {rev!r}\ndown_revision = {down!r}\n"
        f"branch_labels = {labels!r}\ndepends_on = {depends_on!r}\n\n\n"
        "def upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n"
    )


def drawing(text: str) -> str:
    """A golden text graph, written as an indented raw string."""
    return textwrap.dedent(text).strip("\n")


def script_dir(directory: Path) -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(directory))
    return ScriptDirectory.from_config(config)


def history(tmp_path: Path, *revs: tuple[str, Down]) -> ScriptDirectory:
    directory = tmp_path / "migrations"
    for rev, down in revs:
        write_rev(directory, rev, down)
    return script_dir(directory)


# -- reading a text graph back ---------------------------------------------------------------------------

_GLYPHS = set(" |/\\_*")
_Line = tuple[frozenset[str], str]  # the revisions the line comes down from, and how it got here


def _take(
    row: dict[int, list[_Line]], q: int, prefer: Sequence[str] = (), consume: bool = False
) -> frozenset[str]:
    """The lines at column ``q`` (only those that arrived in a ``prefer`` way, if any did)."""
    here = row.get(q, [])
    got = [x for x in here if x[1] in prefer] or list(here)
    if consume:
        row[q] = [x for x in here if x not in got]
    return frozenset().union(*(sources for sources, _ in got))


def _put(row: dict[int, list[_Line]], q: int, sources: frozenset[str], how: str) -> None:
    if sources:
        row.setdefault(q, []).append((sources, how))


def read_text_graph(text: str) -> tuple[list[str], set[tuple[str, str]]]:
    """The revision ids of the node rows, in order, and the (child, parent) edges the lanes draw.

    Reads like a person does: ``|`` goes straight down, ``\\`` down-right, ``/`` down-left (carrying
    the line that arrived diagonally, when a vertical one shares its column), ``_`` carries a ``/``
    further left, ``*`` ends every line arriving at its column. Lines meeting in one column merge.
    """
    above: dict[int, list[_Line]] = {}
    ids: list[str] = []
    edges: set[tuple[str, str]] = set()
    for line in text.split("\n"):
        rev = None
        graph = line
        star = line.find("*")
        if star >= 0:
            end = star
            while end < len(line) and line[end] in _GLYPHS:
                end += 1
            graph, rev = line[:end], line[end:].split()[0]
            ids.append(rev)
        below: dict[int, list[_Line]] = {}
        for q in range(len(graph) - 1, -1, -1):
            if graph[q] == "/":
                _put(below, q - 1, _take(above, q + 1, ("/", "_"), consume=True), "/")
        for q in range(len(graph) - 1, -1, -1):
            if graph[q] == "_":
                moving = [x for x in below.get(q + 1, []) if x[1] in ("/", "_")]
                assert moving, f"a dangling _ in {line!r}"
                below[q + 1] = [x for x in below[q + 1] if x not in moving]
                for sources, _ in moving:
                    _put(below, q - 1, sources, "_")
        for q, glyph in enumerate(graph):
            if glyph == "*":
                assert rev is not None
                edges.update((child, rev) for child in _take(above, q))
                _put(below, q, frozenset([rev]), "*")
            elif glyph == "|":
                _put(below, q, _take(above, q), "|")
            elif glyph == "\\":
                _put(below, q + 1, _take(above, q - 1), "\\")
        above = below
    return ids, edges


def dag_edges(revs: Sequence[tuple[str, Down]]) -> set[tuple[str, str]]:
    edges = set()
    for rev, down in revs:
        for parent in (down,) if isinstance(down, str) else down or ():
            edges.add((rev, parent))
    return edges


# -- the shapes of history -------------------------------------------------------------------------------

LINEAR: list[tuple[str, Down]] = [("a1", None), ("b2", "a1"), ("c3", "b2")]
BRANCH: list[tuple[str, Down]] = [("a1", None), ("b1", "a1"), ("b2", "a1")]
MERGE: list[tuple[str, Down]] = [*BRANCH, ("m3", ("b1", "b2"))]
MERGE3: list[tuple[str, Down]] = [
    ("a1", None),
    ("x1", "a1"),
    ("y1", "a1"),
    ("z1", "a1"),
    ("m4", ("x1", "y1", "z1")),
]
CROSSING: list[tuple[str, Down]] = [
    ("a0", None),
    ("b1", "a0"),
    ("c2", ("a0", "b1")),
    ("d3", ("b1", "a0", "c2")),
]
SHAPES = {
    "linear": LINEAR,
    "branch": BRANCH,
    "merge": MERGE,
    "merge3": MERGE3,
    "crossing": CROSSING,
}


def test_linear_chain(tmp_path: Path) -> None:
    assert render_graph(history(tmp_path, *LINEAR)) == drawing(
        r"""
        * c3 (head) msg c3
        * b2 msg b2
        * a1 msg a1
        """
    )


def test_branch_point_with_two_unmerged_heads(tmp_path: Path) -> None:
    assert render_graph(history(tmp_path, *BRANCH)) == drawing(
        r"""
        * b1 (head) msg b1
        | * b2 (head) msg b2
        |/
        * a1 (branchpoint) msg a1
        """
    )


def test_branch_then_merge(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    write_rev(directory, "a1", None, "create account")
    write_rev(directory, "b1", "a1", "add email")
    write_rev(directory, "b2", "a1", "add phone", labels=("feature",))
    write_rev(directory, "m3", ("b1", "b2"), "merge heads")
    # Alembic gives the label to the branch's later revisions too (what `feature@head` resolves).
    assert render_graph(script_dir(directory), ["m3"]) == drawing(
        r"""
        *   m3 (head) (current) (mergepoint) merge heads [label: feature]
        |\
        * | b1 add email
        | * b2 add phone [label: feature]
        |/
        * a1 (branchpoint) create account
        """
    )


def test_three_way_merge(tmp_path: Path) -> None:
    assert render_graph(history(tmp_path, *MERGE3)) == drawing(
        r"""
        *     m4 (head) (mergepoint) msg m4
        |\
        | |\
        * | | x1 msg x1
        | * | y1 msg y1
        | | * z1 msg z1
        |/ /
        |/
        * a1 (branchpoint) msg a1
        """
    )


def test_a_lane_crossing_others_to_join_its_branch_point(tmp_path: Path) -> None:
    assert render_graph(history(tmp_path, *CROSSING)) == drawing(
        r"""
        *     d3 (head) (mergepoint) msg d3
        |\
        | |\
        | | *   c2 (mergepoint) msg c2
        | | |\
        | |_|/
        |/| |
        * | | b1 (branchpoint) msg b1
        |/ /
        |/
        * a0 (branchpoint) msg a0
        """
    )


def two_bases(tmp_path: Path) -> ScriptDirectory:
    """Two independent branches, each with its own base and label; one depends on the other."""
    directory = tmp_path / "migrations"
    write_rev(directory, "a1", None, "create account", labels=("accounts",))
    write_rev(directory, "a2", "a1", "add email")
    write_rev(directory, "s1", None, "create shop", labels=("shop",))
    write_rev(directory, "s2", "s1", "shop owner", depends_on="a2")
    return script_dir(directory)


def test_two_bases_with_labels_and_a_dependency(tmp_path: Path) -> None:
    # A base ends its lane with a row that leaves its column empty: s1 is not drawn as a2's child.
    script = two_bases(tmp_path)
    assert render_graph(script) == drawing(
        r"""
        * s2 (head) shop owner [label: shop] [depends on: a2]
        * s1 create shop [label: shop]

        * a2 (head) add email [label: accounts]
        * a1 create account [label: accounts]
        """
    )
    assert "    r_a2 -.->|depends on| r_s2" in render_graph(script, fmt="mermaid")
    assert '    "a2" -> "s2" [style=dashed, label="depends on"];' in render_graph(script, fmt="dot")


def test_a_base_left_of_other_lanes_moves_them_over(tmp_path: Path) -> None:
    revs: list[tuple[str, Down]] = [("a0", None), ("b1", "a0"), ("c0", None), ("d2", ("b1", "c0"))]
    text = render_graph(history(tmp_path, *revs))
    assert read_text_graph(text) == (["d2", "b1", "a0", "c0"], dag_edges(revs))
    assert text == drawing(
        r"""
        *   d2 (head) (mergepoint) msg d2
        |\
        * | b1 msg b1
        * | a0 msg a0
         /
        * c0 msg c0
        """
    )


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_lanes_read_back_as_the_dag(tmp_path: Path, shape: str) -> None:
    ids, edges = read_text_graph(render_graph(history(tmp_path, *SHAPES[shape])))
    assert sorted(ids) == sorted(rev for rev, _ in SHAPES[shape])
    assert edges == dag_edges(SHAPES[shape])


def test_random_histories_read_back_as_their_dag(tmp_path: Path) -> None:
    rnd = random.Random(20240611)
    for case in range(60):
        names = rnd.sample([f"r{i:02d}" for i in range(100)], rnd.randint(1, 16))
        revs: list[tuple[str, Down]] = []
        for k, name in enumerate(names):
            if k == 0 or rnd.random() < 0.1:
                down: Down = None
            else:
                parents = rnd.sample(names[:k], min(k, rnd.choice([1, 1, 1, 2, 2, 3])))
                down = parents[0] if len(parents) == 1 else tuple(parents)
            revs.append((name, down))
        script = history(tmp_path / str(case), *revs)
        text = render_graph(script)
        ids, edges = read_text_graph(text)
        assert ids == [s.revision for s in script.walk_revisions()], text
        assert edges == dag_edges(revs), f"{revs}\n{text}"


# -- every format --------------------------------------------------------------------------------------


def node_ids(text: str, fmt: str) -> list[str]:
    """The revision of every node the output declares, in order."""
    pattern = {
        "text": r"^[ |/\\_]*\*[ |]* (\S+)",
        "mermaid": r'^    r_(\w+)\["',
        "dot": r'^    "([^"]+)" \[label=',
    }[fmt]
    return re.findall(pattern, text, re.MULTILINE)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_revision_appears_exactly_once(tmp_path: Path, shape: str, fmt: str) -> None:
    text = render_graph(history(tmp_path, *SHAPES[shape]), fmt=fmt)
    assert sorted(node_ids(text, fmt)) == sorted(rev for rev, _ in SHAPES[shape])


@pytest.mark.parametrize("fmt", FORMATS)
def test_current_marks_the_database_revisions(tmp_path: Path, fmt: str) -> None:
    script = history(tmp_path, *MERGE)
    text = render_graph(script, ["b2", "not-a-script"], fmt)
    assert text.count("(current)") == 1
    current = next(line for line in text.splitlines() if "(current)" in line)
    assert "b2" in current
    assert "(current)" not in render_graph(script, (), fmt)


def test_mermaid_output(tmp_path: Path) -> None:
    text = render_graph(history(tmp_path, *MERGE), ["m3"], "mermaid")
    assert text == (
        "flowchart BT\n"
        '    r_m3["m3 (head) (current) (mergepoint) msg m3"]\n'
        '    r_b1["b1 msg b1"]\n'
        '    r_b2["b2 msg b2"]\n'
        '    r_a1["a1 (branchpoint) msg a1"]\n'
        "    r_b1 --> r_m3\n"
        "    r_b2 --> r_m3\n"
        "    r_a1 --> r_b1\n"
        "    r_a1 --> r_b2\n"
        "    classDef head stroke-width:3px\n"
        "    classDef current fill:#d4f7d4,stroke:#2e7d32\n"
        "    class r_m3 head\n"
        "    class r_m3 current"
    )


def test_dot_output(tmp_path: Path) -> None:
    text = render_graph(history(tmp_path, *MERGE), ["b1"], "dot")
    assert text == (
        "digraph revisions {\n"
        "    rankdir=BT;\n"
        '    node [shape=box, fontname="monospace"];\n'
        '    "m3" [label="m3 (head) (mergepoint)\\nmsg m3", penwidth=3];\n'
        '    "b1" [label="b1 (current)\\nmsg b1", style=filled, fillcolor="#d4f7d4"];\n'
        '    "b2" [label="b2\\nmsg b2"];\n'
        '    "a1" [label="a1 (branchpoint)\\nmsg a1"];\n'
        '    "b1" -> "m3";\n'
        '    "b2" -> "m3";\n'
        '    "a1" -> "b1";\n'
        '    "a1" -> "b2";\n'
        "}"
    )


def test_three_way_merge_edges(tmp_path: Path) -> None:
    script = history(tmp_path, *MERGE3)
    mermaid = render_graph(script, fmt="mermaid")
    dot = render_graph(script, fmt="dot")
    for child, parent in dag_edges(MERGE3):
        assert f"    r_{parent} --> r_{child}\n" in mermaid
        assert f'    "{parent}" -> "{child}";\n' in dot
    assert mermaid.count("-->") == dot.count("->") == len(dag_edges(MERGE3))


def test_messages_and_ids_are_escaped(tmp_path: Path) -> None:
    directory = tmp_path / "migrations"
    write_rev(directory, "ae1027a6acf0", None, 'say "hi" \\ <b> & #1')
    write_rev(directory, "ae1027a6bd11", "ae1027a6acf0", "second\n   line  wrapped")
    script = script_dir(directory)
    text = render_graph(script)
    # Long ids show their shortest unique prefix of 7+ characters; messages are one line.
    assert text == (
        "* ae1027a6b (head) second line wrapped\n"  #
        '* ae1027a6a say "hi" \\ <b> & #1'
    )
    mermaid = render_graph(script, fmt="mermaid")
    assert '    r_ae1027a6acf0["ae1027a6a say #quot;hi#quot; \\ #lt;b#gt; #amp; #35;1"]' in mermaid
    assert "    r_ae1027a6acf0 --> r_ae1027a6bd11" in mermaid
    dot = render_graph(script, fmt="dot")
    assert '    "ae1027a6acf0" [label="ae1027a6a\\nsay \\"hi\\" \\\\ <b> & #1"];' in dot
    assert '    "ae1027a6acf0" -> "ae1027a6bd11";' in dot


def test_no_revisions(tmp_path: Path) -> None:
    (tmp_path / "migrations" / "versions").mkdir(parents=True)
    script = script_dir(tmp_path / "migrations")
    assert render_graph(script) == ""
    assert render_graph(script, fmt="mermaid").startswith("flowchart BT\n")
    assert render_graph(script, fmt="dot").splitlines()[-1] == "}"


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"Unknown graph format 'svg'; the formats are: text, mermaid, dot"
    ):
        render_graph(history(tmp_path, *LINEAR), fmt="svg")


def test_history_graph_through_the_cli(tmp_path: Path) -> None:
    """``quart db history --graph`` marks the database's revision, in each format."""
    import asyncio

    from quart import Quart
    from sqlalchemy import MetaData

    from async_migrate import Migrate, Migrator

    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    directory = tmp_path / "migrations"

    async def prepare() -> None:
        async with Migrator(url, None, directory, stdout=None) as migrator:
            await migrator.init()
            for rev, down in (("a1", None), ("b1", "a1"), ("b2", "a1")):
                (directory / "versions" / f"{rev}.py").write_text(
                    f'"""{rev} message"""\nrevision = {rev!r}\ndown_revision = {down!r}\n'
                    "branch_labels = None\ndepends_on = None\n"
                    "def upgrade():\n    pass\ndef downgrade():\n    pass\n"
                )
            await migrator.upgrade("b1")

    asyncio.run(prepare())
    app = Quart(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    Migrate(app, MetaData(), directory=directory)
    from async_migrate.extension import MigrateState

    assert isinstance(app.extensions.get("migrate"), MigrateState)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["db", "history", "--graph"])
    assert result.exit_code == 0, result.output
    assert "b1 (head) (current) b1 message" in result.output
    assert "a1 (branchpoint) a1 message" in result.output
    result = runner.invoke(args=["db", "history", "--graph", "--format", "mermaid"])
    assert result.exit_code == 0 and result.output.startswith("flowchart BT")
    result = runner.invoke(args=["db", "history", "--graph", "--format", "dot"])
    assert result.exit_code == 0 and result.output.startswith("digraph revisions")
