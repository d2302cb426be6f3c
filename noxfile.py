"""Sessions: ``nox -s tests`` (SQLite and PostgreSQL), ``nox -s lint``, ``nox -s bench``.

PostgreSQL is taken from PYBATCHINTORY_TEST_PG_URL (default: the local server's ``test``
database); without a server those tests skip with the reason, and fail under CI=true.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

_PASSED_THROUGH = ("PYBATCHINTORY_TEST_PG_URL", "CI")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, on SQLite and PostgreSQL (examples included, Dask too)."""
    session.install("-e", ".[test,examples]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy (strict) on the package."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "pybatchintory", "tests", "examples", "benchmarks")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark script; each prints one table of medians and ratios."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
