"""Why the inventory is refused on MySQL/MariaDB (docs/mysql.md): each invariant of the
backend, tried against the server, and the library's own tables with the refusal lifted.

Not a speed benchmark: it prints one Markdown table, a row per check, with what the
server answered. Run it against the server that would hold the inventory:

    python benchmarks/mysql_backend.py [--url mysql+asyncmy://root@127.0.0.1:3306/test]

It creates and drops tables named ``pybi_probe_*`` in that database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

import pybatchintory._engines as engines  # noqa: E402
from pybatchintory import Inventory, Settings  # noqa: E402
from pybatchintory._engines import is_transient  # noqa: E402

URL = os.environ.get("PYBATCHINTORY_BENCH_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
Check = Callable[[AsyncEngine], Awaitable[str]]
CHECKS: list[tuple[str, str, Check]] = []


def check(invariant: str, needed: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS.append((invariant, needed, fn))
        return fn

    return register


def answer(exc: BaseException) -> str:
    orig = getattr(exc, "orig", exc)
    text = str(orig)
    if "syntax" in text and "near" in text:  # the part the server could not parse
        text = f"{orig.args[0]}, syntax error near {text.split('near', 1)[1][:40]}"
    return f"{type(orig).__name__}: {text[:100]}"


async def run_sql(engine: AsyncEngine, *statements: str) -> list[Any]:
    async with engine.begin() as conn:
        rows = []
        for sql in statements:
            result = await conn.execute(sa.text(sql))
            rows.append(result.all() if result.returns_rows else result.rowcount)
        return rows


@check("fencing", "UPDATE ... RETURNING (take, finish, heartbeat)")
async def update_returning(engine: AsyncEngine) -> str:
    await run_sql(
        engine,
        "CREATE TABLE pybi_probe_a (id INT PRIMARY KEY, attempt INT)",
        "INSERT INTO pybi_probe_a VALUES (1, 1)",
    )
    try:
        rows = await run_sql(
            engine, "UPDATE pybi_probe_a SET attempt = attempt + 1 WHERE id = 1 RETURNING attempt"
        )
        return f"works: {rows}"
    except sa.exc.DBAPIError as exc:
        return f"refused: {answer(exc)}"


@check("job row lock", "upsert with RETURNING (lock_job), as ON DUPLICATE KEY UPDATE")
async def upsert_returning(engine: AsyncEngine) -> str:
    await run_sql(engine, "CREATE TABLE pybi_probe_b (k VARCHAR(10) PRIMARY KEY, n INT)")
    try:
        rows = await run_sql(
            engine,
            "INSERT INTO pybi_probe_b VALUES ('j', 1) ON DUPLICATE KEY UPDATE n = n + 1 RETURNING n",
        )
        return f"works: {rows}"
    except sa.exc.DBAPIError as exc:
        return f"refused: {answer(exc)}"


@check("timestamps", "microseconds kept by UtcDateTime (DateTime(timezone=True))")
async def microseconds(engine: AsyncEngine) -> str:
    md = sa.MetaData()
    t = sa.Table("pybi_probe_c", md, sa.Column("at", sa.DateTime(timezone=True)))
    async with engine.begin() as conn:
        await conn.run_sync(md.create_all)
        ddl = (await conn.execute(sa.text("SHOW CREATE TABLE pybi_probe_c"))).one()[1]
        written = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
        await conn.execute(sa.insert(t), {"at": written.replace(tzinfo=None)})
        read = await conn.scalar(sa.select(t.c.at))
    column = ddl.split("`at` ", 1)[1].split(" ", 1)[0]
    return f"column {column}: wrote .123456+00:00, read {read.isoformat()}"


@check("reclaim index", "partial index (CREATE INDEX ... WHERE)")
async def partial_index(engine: AsyncEngine) -> str:
    await run_sql(engine, "CREATE TABLE pybi_probe_d (id INT PRIMARY KEY, status VARCHAR(10))")
    try:
        await run_sql(
            engine, "CREATE INDEX ix_probe ON pybi_probe_d (id) WHERE status <> 'succeeded'"
        )
        return "works"
    except sa.exc.DBAPIError as exc:
        return f"refused: {answer(exc)}"


async def _conflict(engine: AsyncEngine, lock_wait: bool) -> str:
    """Two transactions that wait for each other (1213), or one that waits out
    innodb_lock_wait_timeout (1205); is the error retried by retry_transient?"""
    await run_sql(
        engine,
        "CREATE TABLE pybi_probe_e (id INT PRIMARY KEY, n INT)",
        "INSERT INTO pybi_probe_e VALUES (1, 0), (2, 0)",
    )
    first, second = await engine.connect(), await engine.connect()
    try:
        await first.begin()
        await second.begin()
        if lock_wait:
            await second.execute(sa.text("SET SESSION innodb_lock_wait_timeout = 1"))
        await first.execute(sa.text("UPDATE pybi_probe_e SET n = 1 WHERE id = 1"))
        await second.execute(sa.text("UPDATE pybi_probe_e SET n = 1 WHERE id = 2"))
        blocked = asyncio.ensure_future(
            second.execute(sa.text("UPDATE pybi_probe_e SET n = 2 WHERE id = 1"))
        )
        await asyncio.sleep(0.3)
        if not lock_wait:
            try:
                await first.execute(sa.text("UPDATE pybi_probe_e SET n = 2 WHERE id = 2"))
            except sa.exc.DBAPIError as exc:  # the victim: the other one goes on
                await blocked
                return f"{answer(exc)}; is_transient: {is_transient(exc)}"
        try:
            await blocked
        except sa.exc.DBAPIError as exc:
            return f"{answer(exc)}; is_transient: {is_transient(exc)}"
        return "no error"
    finally:
        for conn in (first, second):
            await conn.close()


@check("retries", "deadlock (1213) retried by retry_transient")
async def deadlock(engine: AsyncEngine) -> str:
    return await _conflict(engine, lock_wait=False)


@check("retries", "lock wait timeout (1205) retried by retry_transient")
async def lock_wait_timeout(engine: AsyncEngine) -> str:
    return await _conflict(engine, lock_wait=True)


@check("whole backend", "Inventory.open(), the refusal lifted")
async def whole_backend(engine: AsyncEngine) -> str:
    lifted = engines.INVENTORY_BACKENDS
    engines.INVENTORY_BACKENDS = ("postgresql", "sqlite", "mysql", "mariadb")
    meta = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/meta.sqlite3"
    settings = Settings.model_construct(  # skips the URL check that refuses MySQL
        inventory_url=SecretStr(URL), meta_url=SecretStr(meta), jobs_table="pybi_probe_jobs"
    )
    inv = Inventory(settings=settings)
    try:
        await inv.open()
        return "opened"
    except Exception as exc:  # what breaks first is the measurement
        return f"open() fails: {type(exc).__name__}: {str(exc)[:80] or '(no message)'}"
    finally:
        await inv.close()
        engines.INVENTORY_BACKENDS = lifted


async def drop_probe_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        names = await conn.scalars(
            sa.text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name LIKE 'pybi\\_probe\\_%'"
            )
        )
        for name in names.all():
            await conn.execute(sa.text(f"DROP TABLE `{name}`"))


async def main() -> None:
    engine = create_async_engine(URL)
    async with engine.connect() as conn:
        version = await conn.scalar(sa.text("SELECT VERSION()"))
    print(f"server: {version} at {engine.url.render_as_string(hide_password=True)}\n")
    print("| invariant | needs | the server's answer |")
    print("|---|---|---|")
    try:
        for invariant, needed, fn in CHECKS:
            try:
                outcome = await fn(engine)
            except Exception as exc:
                outcome = f"probe failed: {answer(exc)}"
            finally:
                await drop_probe_tables(engine)
            print(f"| {invariant} | {needed} | {outcome.replace('|', '/')} |", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=URL, help="the MySQL/MariaDB database to probe")
    URL = parser.parse_args().url
    asyncio.run(main())
