"""Fixtures: every integration test runs on a real SQLite file and a real PostgreSQL.

PostgreSQL comes from ``PYBATCHINTORY_TEST_PG_URL`` (default: the local server's
``test`` database). Each test gets its own schema there, dropped afterwards. Where no
server answers, the PostgreSQL tests skip with the reason, except under CI=true, where
a missing server is a failure: CI must never pass by skipping the PostgreSQL suite.

Tests of the metadata side (``meta_db``) run a third time with the metadata table on
MySQL/MariaDB and the inventory on SQLite (docs/mysql.md): the server comes from
``PYBATCHINTORY_TEST_MYSQL_URL`` (default: the local server's ``test`` database), each
test gets a database of its own there (the URL's database name plus a suffix), dropped
afterwards; a missing server skips, and fails under CI=true, as PostgreSQL does.

A run split over processes (pytest-xdist's workers, or nox sessions run at once) gives
each process a database of its own on that server, so that nothing database-wide
(``pg_locks``, which the exact horizon reads, ``pg_stat_activity``, the migrations'
advisory lock) is shared between tests that run at the same moment: ``PG_URL`` below
names ``<database>_<label>_<worker>`` (``PYBATCHINTORY_TEST_PG_LABEL``, set by each nox
session, and ``PYTEST_XDIST_WORKER``), created on first use from the named database.
Every test that uses the ``db`` fixture, or calls ``require_postgres()`` before it uses
``PG_URL``, gets it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pybatchintory import Batch, Inventory

BASE_PG_URL = os.environ.get(
    "PYBATCHINTORY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get(
    "PYBATCHINTORY_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test"
)


def _database_of_this_process(base: str) -> str:
    """``base`` with the database of this process: the named one in a plain run, else the
    named one suffixed by the run's label and the xdist worker id (``test_py3_12_gw1``)."""
    parts = [os.environ.get("PYBATCHINTORY_TEST_PG_LABEL"), os.environ.get("PYTEST_XDIST_WORKER")]
    suffix = "_".join(p for p in parts if p)
    if not suffix:
        return base
    url = make_url(base)
    return url.set(database=f"{url.database}_{suffix}").render_as_string(hide_password=False)


PG_URL = _database_of_this_process(BASE_PG_URL)
T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def run_aside(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous test code, on an event loop of a
    thread of its own: ``asyncio.run()`` on the main thread would leave that thread
    without an event loop, which pytest-asyncio before 1.0 replaces by one it never
    closes (a ResourceWarning, an error under filterwarnings=error)."""

    async def main() -> T:
        return await coroutine()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _select_one(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    finally:
        await engine.dispose()


def _unreachable(
    server: str, shown_url: str, probe: Callable[[], Awaitable[None]], seconds: float
) -> str | None:
    """Why ``probe`` of ``server`` failed within ``seconds``, or None when it answered."""
    try:
        run_aside(lambda: asyncio.wait_for(probe(), seconds))
    except Exception as exc:  # any failure means "no server"
        return f"{server} at {shown_url} unreachable: {type(exc).__name__}: {exc}"
    return None


@functools.cache
def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers (probed once)."""

    async def probe() -> None:
        if PG_URL != BASE_PG_URL:
            await _create_database_if_missing(BASE_PG_URL, make_url(PG_URL).database)
        await _select_one(PG_URL)

    shown = make_url(PG_URL).render_as_string(hide_password=True)
    # CREATE DATABASE on a busy machine can take seconds: more time when it may run.
    return _unreachable("PostgreSQL", shown, probe, 10 if PG_URL == BASE_PG_URL else 30)


async def _create_database_if_missing(server_url: str, name: str | None) -> None:
    """Create database ``name`` through ``server_url``'s database, unless it exists; a
    process that creates it at the same moment is no error."""
    assert name, "a database name"
    engine = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            )
            if not exists:
                try:
                    await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                except sa.exc.DBAPIError as exc:
                    if "already exists" not in str(exc):
                        raise
    finally:
        await engine.dispose()


@functools.cache
def mysql_problem() -> str | None:
    """Why MySQL/MariaDB cannot be used, or None when it answers (probed once)."""
    return _unreachable("MySQL", MYSQL_URL, lambda: _select_one(MYSQL_URL), 10)


def _require(problem: str | None, suite: str) -> None:
    """Skip without the server; under CI=true fail instead, so CI never passes by
    skipping."""
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {problem}; CI must run the {suite} suite", pytrace=False)
    pytest.skip(problem)


def require_postgres() -> None:
    _require(postgres_problem(), "PostgreSQL")


def require_mysql() -> None:
    _require(mysql_problem(), "MySQL/MariaDB")


def job_options_of(inv: Inventory) -> dict[str, Any]:
    """:attr:`Db.job_options` for helpers that have only the inventory."""
    backend = sa.engine.make_url(inv.settings.meta_dsn).get_backend_name()
    return {"horizon": None} if backend in ("mysql", "mariadb") else {}


def meta_table_def(md: sa.MetaData, name: str) -> sa.Table:
    """The metadata table the tests use: id, uri, weight, category."""
    return sa.Table(
        name,
        md,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("uri", sa.String(200), nullable=False),
        sa.Column("weight", sa.Double, nullable=True),
        sa.Column("category", sa.String(20), nullable=True),
    )


@dataclass
class Db:
    """One real database for one test: its URL, a schema (PostgreSQL) and helpers."""

    kind: str
    url: str
    schema: str | None
    engine: AsyncEngine
    inventories: list[Inventory] = field(default_factory=list)
    # The metadata tables' database when it is not the inventory's (MariaDB, meta_db)
    meta_url: str | None = None
    separate_meta_engine: AsyncEngine | None = None

    @property
    def meta_engine(self) -> AsyncEngine:
        """The engine of the metadata tables: the inventory's unless they live apart."""
        return self.separate_meta_engine or self.engine

    @property
    def job_options(self) -> dict[str, Any]:
        """What every job reading a table here must pass: on MySQL/MariaDB the exact
        horizon (the default) is refused, so the tests opt out as a user must
        (docs/mysql.md); nothing elsewhere."""
        return {"horizon": None} if self.kind == "mariadb" else {}

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def settings(self) -> dict[str, Any]:
        # Failed batches come back at once: the tests of replay order and attempts are
        # about order, not time; tests/integration/test_backoff.py sets a delay.
        return {
            "inventory_url": self.url,
            "meta_url": self.meta_url or self.url,
            "schema_name": self.schema,
            "retry_delay_seconds": 0,
        }

    def inventory(self, **overrides: Any) -> Inventory:
        """An Inventory on this database, closed at the end of the test."""
        inv = Inventory(**{**self.settings(), **overrides})
        self.inventories.append(inv)
        return inv

    async def create_meta(
        self, name: str = "meta", weights: Iterable[float | None] = (), category: str | None = None
    ) -> str:
        """Create a metadata table with one row per weight; return its qualified name."""
        md = sa.MetaData(schema=self.schema)
        meta_table_def(md, name)
        async with self.meta_engine.begin() as conn:
            await conn.run_sync(md.create_all)
        await self.add_items(name, weights, category)
        return self.qualified(name)

    async def add_items(
        self, name: str, weights: Iterable[float | None], category: str | None = None
    ) -> None:
        table = meta_table_def(sa.MetaData(schema=self.schema), name)
        rows = [
            {"uri": f"s3://bucket/{name}/{i}", "weight": w, "category": category}
            for i, w in enumerate(weights)
        ]
        if rows:
            async with self.meta_engine.begin() as conn:
                await conn.execute(sa.insert(table), rows)

    async def rows(self, sql: str, **params: Any) -> Sequence[sa.Row[Any]]:
        """Run a query; ``{s}`` in it is replaced by the schema prefix."""
        prefix = f"{self.schema}." if self.schema else ""
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.text(sql.replace("{s}", prefix)), params)).all()

    async def scalar(self, sql: str, **params: Any) -> Any:
        rows = await self.rows(sql, **params)
        return rows[0][0] if rows else None

    async def blocked_session_pid(self) -> int:
        """PostgreSQL: the pid of our session that waits for a lock on this schema's
        tables, once there is one (polled for up to a minute)."""
        deadline = time.monotonic() + 60
        while True:
            pid = await self.scalar(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND application_name = 'pybatchintory' AND position(:schema in query) > 0",
                schema=self.schema,
            )
            if pid is not None:
                return int(pid)
            assert time.monotonic() < deadline, "no session of ours ever waited for the lock"
            await asyncio.sleep(0.02)


async def cancel_after(
    acquisition: Awaitable[Batch | None], delay: float, outcomes: dict[str, int]
) -> None:
    """Run ``acquisition`` and cancel it ``delay`` seconds in; count it in ``outcomes``
    as ``cancelled`` or ``acquired``, recording success of a batch it still handed out."""
    task = asyncio.ensure_future(acquisition)
    await asyncio.sleep(delay)
    task.cancel()
    try:
        batch = await task
    except asyncio.CancelledError:
        outcomes["cancelled"] += 1
        return
    outcomes["acquired"] += 1
    assert batch is not None
    await batch.success()


async def cancel_while_processing(batch: Batch) -> None:
    """Cancel a task while its ``async with batch`` body runs, and see it end cancelled."""
    started = asyncio.Event()

    async def work() -> None:
        async with batch:
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(work())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture
async def db(db_kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    async with _database(db_kind, tmp_path) as database:
        yield database


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
async def meta_db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    """The ``db`` of a test of the metadata side, plus a third variant: the metadata
    tables on MySQL/MariaDB (a database of its own), the inventory on SQLite."""
    kind = str(request.param)
    if kind == "postgresql":
        require_postgres()
    elif kind == "mariadb":
        require_mysql()
    async with _database(kind, tmp_path) as database:
        yield database


@asynccontextmanager
async def _database(kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}"
    meta_database = None
    if kind == "sqlite":
        engine = create_async_engine(sqlite_url)
        database = Db("sqlite", sqlite_url, None, engine)
    elif kind == "mariadb":
        base = sa.engine.make_url(MYSQL_URL)
        meta_database = f"{base.database}_{uuid.uuid4().hex[:12]}"
        server = create_async_engine(base)
        try:
            async with server.begin() as conn:
                await conn.execute(sa.text(f"CREATE DATABASE `{meta_database}`"))
        finally:
            await server.dispose()
        meta_url = base.set(database=meta_database).render_as_string(hide_password=False)
        engine = create_async_engine(sqlite_url)
        meta_engine = create_async_engine(meta_url)
        database = Db(
            "mariadb", sqlite_url, None, engine, meta_url=meta_url, separate_meta_engine=meta_engine
        )
    else:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        engine = create_async_engine(PG_URL)
        async with engine.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        database = Db("postgresql", PG_URL, schema, engine)
    try:
        yield database
    finally:
        for inv in database.inventories:
            await inv.close()
        if database.schema:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA "{database.schema}" CASCADE'))
        if meta_database is not None:
            async with database.meta_engine.begin() as conn:
                await conn.execute(sa.text(f"DROP DATABASE `{meta_database}`"))
            await database.meta_engine.dispose()
        await engine.dispose()


@pytest.fixture
def pg_only(db: Db) -> Db:
    """The PostgreSQL database of a PostgreSQL-only test (its SQLite and MariaDB variants
    are deselected at collection, not skipped)."""
    assert db.kind == "postgresql", "the SQLite variant of a pg_only test is deselected"
    return db


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for ``pg_only`` has no SQLite (nor MariaDB) variant: deselect it
    rather than report a skip that hides nothing."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        kind = params.get("db_kind", params.get("meta_db"))
        if kind in ("sqlite", "mariadb") and "pg_only" in getattr(item, "fixturenames", ()):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
