"""Time ``trace``, ``status`` and ``jobs`` on an inventory of one million batches.

The batches are bulk-inserted with SQL (``generate_series`` on PostgreSQL, a recursive
CTE on SQLite), never through acquisition: four jobs over one metadata table, 250,000
batches each, every batch with its log row; one batch in a thousand failed, one in
ten thousand running. Prints the median of repeated calls.

    python benchmarks/observe.py                      # PostgreSQL and SQLite
    python benchmarks/observe.py --db sqlite --batches 100000

PostgreSQL: ``PYBATCHINTORY_BENCH_PG_URL`` (default the local ``test`` database), in a
schema of its own, dropped afterwards. SQLite: a file in a temporary directory.
"""

# The SQL below is built from constants and a generated schema name, never from input.

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pybatchintory import Inventory

PG_URL = os.environ.get(
    "PYBATCHINTORY_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
JOBS = 4
SPAN = 10  # ids per batch
BACKLOG = 1000  # metadata rows ahead of each job's cursor


def series(dialect: str, n: int) -> str:
    """A ``g(i)`` row source of 1..n."""
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS g(i)"
    return f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s) AS g"


async def fill(inv: Inventory, prefix: str, batches: int) -> int:
    """Insert the batches, their logs, the jobs and the metadata rows; return the highest id."""
    engine = inv.inventory_engine
    dialect = engine.dialect.name
    per_job = batches // JOBS
    now = "now()" if dialect == "postgresql" else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    # Batch i belongs to job i % JOBS; each job's ranges are consecutive spans of SPAN ids.
    status = "CASE WHEN i % 10000 = 7 THEN 'running' WHEN i % 1000 = 3 THEN 'failed' ELSE 'succeeded' END"
    top = per_job * SPAN
    async with engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory (id, job_identifier, generation, processing_start, "
                "processing_end, range_start, range_end, weight, item_count, attempt, max_attempts, "
                "status, lease_expires_at, worker) "
                f"SELECT i, 'job_' || (i % {JOBS}), 0, {now}, {now}, ((i - 1) / {JOBS}) * {SPAN} + 1, "
                f"((i - 1) / {JOBS}) * {SPAN} + {SPAN}, {SPAN}, {SPAN}, 1, 3, {status}, "
                f"CASE WHEN i % 10000 = 7 THEN {now} END, 'bench' FROM {series(dialect, batches)}"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory_logs (id, attempt, processing_start, processing_end, "
                "status, logging, worker) SELECT id, 1, processing_start, processing_end, status, "
                f"CASE WHEN status = 'failed' THEN 'Traceback: boom' END, worker FROM {prefix}inventory"
            )
        )
        for j in range(JOBS):
            await conn.execute(
                sa.text(
                    f"INSERT INTO {prefix}inventory_jobs (job_identifier, source_kind, source, id_column, "
                    f"filter_text, cursor, generation, created_at, updated_at) VALUES "
                    f"('job_{j}', 'table', :source, 'id', '', {top}, 0, {now}, {now})"
                ),
                {"source": f"{prefix}meta".rstrip(".")},
            )
        await conn.execute(
            sa.text(
                f"CREATE TABLE {prefix}meta (id BIGINT PRIMARY KEY, uri TEXT NOT NULL, weight FLOAT NOT NULL)"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}meta (id, uri, weight) SELECT i + {top - BACKLOG}, 'f', 1 "
                f"FROM {series(dialect, 2 * BACKLOG)}"
            )
        )
        if dialect == "postgresql":
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory_logs"))
        else:
            await conn.execute(sa.text("ANALYZE"))
    return top


async def median_ms(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    await call()  # warm the pool and the caches
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def bench(kind: str, batches: int) -> None:
    schema = None
    tmp = None
    if kind == "postgresql":
        url = PG_URL
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.ext.asyncio.create_async_engine(url)
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    else:
        tmp = tempfile.TemporaryDirectory()
        url = f"sqlite+aiosqlite:///{tmp.name}/observe.sqlite3"
    prefix = f"{schema}." if schema else ""
    try:
        async with Inventory(url, schema_name=schema) as inv:
            start = time.perf_counter()
            top = await fill(inv, prefix, batches)
            print(
                f"{kind}: {batches:,} batches (+ log rows) inserted in {time.perf_counter() - start:.1f} s"
            )
            table = f"{prefix}meta".rstrip(".")
            rng = random.Random(4)
            entries = await inv.trace(table, top // 2)
            assert len(entries) == JOBS, entries
            trace = await median_ms(lambda: inv.trace(table, rng.randint(1, top)), 200)
            status = await median_ms(lambda: inv.status("job_3"), 10)
            figures = await inv.status("job_3")
            jobs = await median_ms(inv.jobs, 10)
            print(
                f"  trace(table, id): {trace:8.2f} ms median of 200 ({JOBS} jobs, {JOBS} batches found)"
            )
            print(
                f"  status(job):      {status:8.2f} ms median of 10 ({figures.succeeded:,} succeeded, "
                f"{figures.failed} failed, {figures.running} running; backlog {figures.backlog})"
            )
            print(f"  jobs():           {jobs:8.2f} ms median of 10")
    finally:
        if schema:
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--batches", type=int, default=1_000_000)
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    for kind in kinds:
        asyncio.run(bench(kind, args.batches))


if __name__ == "__main__":
    main()
