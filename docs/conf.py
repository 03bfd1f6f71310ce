"""Sphinx configuration of the async_migrate docs: `nox -s docs`, or

    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html

The reference pages come from the package's docstrings (autodoc), the commands page from its click
commands (sphinx-click), the Markdown pages (docs/deploying.md, sections of README.md) through
myst-parser. The build needs no network: links into the Python, SQLAlchemy, Alembic and click
docs (intersphinx, which downloads their inventories) are made only with
ASYNC_MIGRATE_DOCS_INTERSPHINX=1.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package of this checkout, installed or not

project = "async_migrate"
author = "the async_migrate authors"
copyright = "the async_migrate authors"
release = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
version = release

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
    "sphinx_click",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# References to SQLAlchemy, Alembic and Quart classes cannot resolve offline: no nitpicky mode.
nitpicky = False
# `text` is code, as in Markdown: click help strings (shown by sphinx-click) use single backticks.
default_role = "literal"

# -- autodoc: the docstrings are reST (:class:, :param x:, :func:) ---------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "class"
# Defaults as written in the source (``stdout=SYS_STDOUT``), not the repr of the object.
autodoc_preserve_defaults = True

# -- intersphinx: off unless asked for (it downloads inventories) ----------------------------------
if os.environ.get("ASYNC_MIGRATE_DOCS_INTERSPHINX") == "1":
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "sqlalchemy": ("https://docs.sqlalchemy.org/en/20/", None),
        "alembic": ("https://alembic.sqlalchemy.org/en/latest/", None),
        "click": ("https://click.palletsprojects.com/en/stable/", None),
    }

# -- HTML -----------------------------------------------------------------------------------------
html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"async_migrate {release}"
html_show_sourcelink = False


class ExceptionTree(SphinxDirective):
    """``.. exception-tree:: module``: every exception class defined in ``module``, as a tree of
    links (each under its first base of the module), then each one documented by ``autoexception``
    with its bases shown. A new exception class in the module appears without editing the page."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        module = importlib.import_module(name)
        source = inspect.getsource(module)
        classes = sorted(
            (
                obj
                for obj in vars(module).values()
                if inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
            ),
            key=lambda cls: source.index(f"class {cls.__name__}("),
        )
        children: dict[type, list[type]] = {}
        roots = []
        for cls in classes:
            parent = next((base for base in cls.__bases__ if base in classes), None)
            if parent is None:
                roots.append(cls)
            else:
                children.setdefault(parent, []).append(cls)

        def link(cls: type) -> str:
            return f":exc:`~{name}.{cls.__name__}`"

        def tree(cls: type, depth: int) -> list[str]:
            also = [base for base in cls.__bases__[1:] if base in classes]
            extra = f" (also a {', '.join(map(link, also))})" if also else ""
            lines = [f"{'  ' * depth}- {link(cls)}{extra}", ""]
            for child in children.get(cls, []):
                lines += tree(child, depth + 1)
            return lines

        text = [line for root in roots for line in tree(root, 0)]
        for cls in classes:
            text += ["", f".. autoexception:: {name}.{cls.__name__}", "   :members:"]
            text += ["   :show-inheritance:"]
        container = nodes.container()
        self.state.nested_parse(StringList(text, source=f"<exception-tree {name}>"), 0, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("exception-tree", ExceptionTree)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
