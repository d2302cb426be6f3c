"""Sessions: ``nox -s tests`` (SQLite, PostgreSQL and MariaDB), ``nox -s lint``, ``nox -s bench``.

``nox -s tests`` runs the suite on every Python that requires-python allows (3.10 to
3.13): the whole suite, multi-process acceptance tests included, on the newest; the
suite less those (``-m "not slow"``) on 3.11 and 3.12 with the newest dependencies, and
on the oldest Python (3.10) at the lowest versions of the dependencies that
pyproject.toml allows (its ``>=`` floors, pinned with a constraints file), so that a
floor is one that passes. One of them: ``nox -s "tests(3.12)"`` or
``nox -s "tests(floors)"``.

What runs where, and why:

- every test that is not ``slow`` runs on every Python: the sync face, asyncio's
  cancellation and timeouts, typing and the standard library (sqlite3, argparse) differ
  between them, and a test cannot tell which of its lines depend on it. On 3.10 it runs
  at the floors only: the newest dependencies run on three other Pythons, and a fifth
  session cost CI three minutes of its fifteen;
- the ``slow`` tests (many worker processes racing, PgBouncer, the lease soak, the
  horizon chaos, the Dask example, a cold mypy run) run on the newest Python only:
  they exercise the same library code as the rest, at scale, and take minutes.

How it stays fast (CI, 2 cores, about 15 minutes for the four sessions and lint):

- the non-slow tests run on ``XDIST_WORKERS`` pytest-xdist workers: they mostly wait
  (on the databases, on sleeps, on subprocesses), so more workers than cores pays.
  Each worker has a PostgreSQL database of its own (tests/conftest.py), and every test
  a schema or a SQLite file of its own, so workers never see each other's tables, locks
  or sessions;
- the ``slow`` tests then run one at a time, without xdist: they measure concurrency
  with processes of their own and need the machine to themselves;
- the virtualenvs get compiled bytecode at install (uv does not compile by default, and
  with PYTHONDONTWRITEBYTECODE set, every subprocess a test starts would compile
  SQLAlchemy and pydantic again: three times the CPU of an import from bytecode).

Interpreters are found on PATH (``python3.X``), and also among pyenv's installed
versions (``$PYENV_ROOT/versions``), which need not be enabled. A missing interpreter
skips its session, and fails it under CI=true.

PostgreSQL is taken from PYBATCHINTORY_TEST_PG_URL (default: the local server's ``test``
database), MySQL/MariaDB (metadata tables) from PYBATCHINTORY_TEST_MYSQL_URL (default:
mysql+asyncmy://root@127.0.0.1:3306/test); without a server those tests skip with the
reason, and fail under CI=true.
Each session and each xdist worker uses a PostgreSQL database named after it
(``test_py3_13_gw0``...), created when missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox
from packaging.requirements import Requirement

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True
# A missing interpreter skips its session, except under CI (nox's default when CI is
# set), where it fails: CI must not pass by running fewer of them.
# uv makes the virtualenvs in seconds where it is installed (.ci/run installs it);
# virtualenv and pip otherwise.
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"

ROOT = Path(__file__).parent
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
NEWEST, OLDEST = PYTHONS[-1], PYTHONS[0]
EXTRAS = ("test", "examples", "mysql", "otel")
_PASSED_THROUGH = ("PYBATCHINTORY_TEST_PG_URL", "PYBATCHINTORY_TEST_MYSQL_URL", "CI")
# Workers for the non-slow tests: I/O-bound, so twice the two cores of CI's machine.
XDIST_WORKERS = os.environ.get("PYBATCHINTORY_TEST_WORKERS", "4")


def _expose_pyenv_interpreters() -> None:
    """Put pyenv's installed ``python3.X`` first on PATH, through links in .nox/: pyenv's
    shims answer only for the enabled versions, and nox looks interpreters up by name."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    links = ROOT / ".nox" / "pyenv-pythons"
    found = False
    for minor in PYTHONS:
        candidates = sorted(
            versions.glob(f"{minor}.*/bin/python{minor}"),
            key=lambda p: [int(x) for x in p.parts[-3].split(".") if x.isdigit()],
        )
        if not candidates:
            continue
        links.mkdir(parents=True, exist_ok=True)
        link = links / f"python{minor}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(candidates[-1])  # the newest patch release
        found = True
    if found:
        os.environ["PATH"] = os.pathsep.join([str(links), os.environ.get("PATH", "")])


_expose_pyenv_interpreters()


def _floors() -> list[str]:
    """``name==version`` for each ``>=`` floor of the package's dependencies and of the
    extras the tests install: the constraints of the floors session."""
    project = nox.project.load_toml(ROOT / "pyproject.toml")["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins = []
    for text in requirements:
        requirement = Requirement(text)
        lower = [s.version for s in requirement.specifier if s.operator == ">="]
        if len(lower) != 1:
            raise ValueError(f"{text!r} in pyproject.toml needs exactly one >= floor")
        pins.append(f"{requirement.name}=={lower[0]}")
    return pins


@nox.session
@nox.parametrize(
    "python,deps",
    [
        *[nox.param(p, "latest", id=p) for p in PYTHONS if p != OLDEST],
        nox.param(OLDEST, "floors", id="floors"),
    ],
)
def tests(session: nox.Session, deps: str) -> None:
    """The test suite on SQLite, PostgreSQL and MariaDB (examples included, Dask too)."""
    package = f".[{','.join(EXTRAS)}]"
    # Compiled bytecode in the virtualenv (pip compiles by default, uv does not).
    compile_env = {"UV_COMPILE_BYTECODE": "1"}
    if deps == "floors":
        constraints = Path(session.create_tmp()) / "floors.txt"
        constraints.write_text("\n".join(_floors()) + "\n")
        session.log("floors: " + ", ".join(_floors()))
        session.install("-c", str(constraints), "-e", package, env=compile_env)
    else:
        session.install("-e", package, env=compile_env)
    # The package and the tests, which the test's subprocesses import too.
    session.run("python", "-m", "compileall", "-q", "pybatchintory", "tests", silent=True)
    env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
    # A PostgreSQL database per session (and per xdist worker), so that sessions may also
    # run at once: ``test_py3_12_gw0``, ``test_floors``... (tests/conftest.py).
    env["PYBATCHINTORY_TEST_PG_LABEL"] = (
        "floors" if deps == "floors" else f"py{str(session.python).replace('.', '_')}"
    )
    if session.posargs:
        session.run("pytest", *session.posargs, env=env)
        return
    session.run("pytest", "-q", "-n", XDIST_WORKERS, "-m", "not slow", env=env)
    if session.python == NEWEST and deps == "latest":
        session.run("pytest", "-q", "-m", "slow", env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and mypy (strict) on the package."""
    session.install("-e", ".[dev]")
    paths = ("pybatchintory", "tests", "examples", "benchmarks", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark script; each prints one table of medians and ratios."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
