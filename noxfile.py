"""nox sessions: tests (SQLite and PostgreSQL), lint, typecheck, bench, docs."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, on SQLite files and the PostgreSQL and MariaDB servers of this machine."""
    session.install("-e", ".[test]")
    session.run("bash", "scripts/start-postgres", external=True)
    session.run("bash", "scripts/start-mariadb", external=True)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "async_migrate", "tests", "bench", "examples")
    session.run("ruff", "format", "--check", "async_migrate")
    session.run("python", "scripts/check_layout.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: figures and ratios against the reference tools, measured in the same run."""
    session.install("-e", ".[test]")
    session.run("bash", "scripts/start-postgres", external=True)
    session.run("python", "-m", "bench", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site (Sphinx, autodoc, sphinx-click, MyST), warnings as errors: docs/_build/html."""
    session.install("-e", ".[docs,all]")
    args = ["-E", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"]
    session.run("python", "-m", "sphinx", *args, *session.posargs)
