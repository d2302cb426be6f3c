"""Fixtures: every integration test runs on a real SQLite file and a real PostgreSQL.

PostgreSQL comes from ``PYBATCHINTORY_TEST_PG_URL`` (default: the local server's
``test`` database). Each test gets its own schema there, dropped afterwards. Where no
server answers, the PostgreSQL tests skip with the reason, except under CI=true, where
a missing server is a failure: CI must never pass by skipping the PostgreSQL suite.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pybatchintory import Inventory

PG_URL = os.environ.get(
    "PYBATCHINTORY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
T = TypeVar("T")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_problem: str | None = None
_pg_checked = False


def run_aside(coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous test code, on an event loop of a
    thread of its own: ``asyncio.run()`` on the main thread would leave that thread
    without an event loop, which pytest-asyncio before 1.0 replaces by one it never
    closes (a ResourceWarning, an error under filterwarnings=error)."""

    async def main() -> T:
        return await coroutine()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def postgres_problem() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    global _pg_checked, _pg_problem
    if not _pg_checked:
        _pg_checked = True

        async def probe() -> None:
            engine = create_async_engine(PG_URL)
            try:
                async with engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
            finally:
                await engine.dispose()

        try:
            run_aside(lambda: asyncio.wait_for(probe(), 10))
        except Exception as exc:  # any failure means "no server"
            _pg_problem = f"PostgreSQL at {PG_URL} unreachable: {type(exc).__name__}: {exc}"
    return _pg_problem


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {problem}; CI must run the PostgreSQL suite", pytrace=False)
    pytest.skip(problem)


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

    def qualified(self, name: str) -> str:
        return f"{self.schema}.{name}" if self.schema else name

    def settings(self) -> dict[str, Any]:
        return {"inventory_url": self.url, "meta_url": self.url, "schema_name": self.schema}

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
        async with self.engine.begin() as conn:
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
            async with self.engine.begin() as conn:
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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        require_postgres()
    return str(request.param)


@pytest.fixture
async def db(db_kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own."""
    if db_kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'test.sqlite3'}"
        engine = create_async_engine(url)
        database = Db("sqlite", url, None, engine)
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
        await engine.dispose()


@pytest.fixture
def pg_only(db: Db) -> Db:
    """The PostgreSQL database of a PostgreSQL-only test (its SQLite variant is deselected
    at collection, not skipped)."""
    assert db.kind == "postgresql", "the SQLite variant of a pg_only test is deselected"
    return db


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that asks for ``pg_only`` has no SQLite variant: deselect it rather than
    report a skip that hides nothing."""
    kept, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        sqlite_variant = callspec is not None and callspec.params.get("db_kind") == "sqlite"
        if sqlite_variant and "pg_only" in getattr(item, "fixturenames", ()):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
