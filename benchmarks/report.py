"""Time the HTML report of one job of a million batches.

The batches are bulk-inserted with one INSERT ... SELECT (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite), never through acquisition: job ``big``, 10 ids
per batch, ended 10 ms apart over 2.8 hours, one in 1,000 failed (half of them out of
attempts, each with an error text in its log row), one in 10,000 running; 100,000 ids
of the metadata table lie after the cursor (PostgreSQL: the table goes without its
exclusion constraint, see fill()). Prints the medians of ``--reps`` reports, statuses
and exact coverages, the ratios of the report to the other two (the machine is shared:
ratios travel better than seconds), and the page's size; asserts nothing.

    python benchmarks/report.py                          # PostgreSQL and SQLite
    python benchmarks/report.py --db sqlite --batches 100000 --out /tmp/big.html

PostgreSQL: ``PYBATCHINTORY_BENCH_PG_URL`` (default the local ``test`` database), in a
schema of its own, dropped afterwards. SQLite: a file in a temporary directory.
"""

# The SQL below is built from constants and a generated schema name, never from input.

from __future__ import annotations

import argparse
import asyncio
import os
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

from pybatchintory import Inventory, Job
from pybatchintory._coverage import job_coverage
from pybatchintory._migrations import exclusion_constraint_name
from pybatchintory._report_data import coverage_bar, failures, timeline
from pybatchintory._status import job_status
from pybatchintory.job import job_definition

PG_URL = os.environ.get(
    "PYBATCHINTORY_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
JOB = "big"
SPAN = 10  # ids per batch
AHEAD = 100_000  # metadata ids after the cursor: the backlog and the bar's not_taken tail


def _series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS g(i)"
    return f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) SELECT i FROM s) AS g"


def _moment(dialect: str, seconds: str) -> str:
    """2026-01-01 plus ``seconds`` (an SQL expression), as the inventory stores times."""
    if dialect == "postgresql":
        return f"(timestamptz '2026-01-01 00:00:00+00' + ({seconds}) * interval '1 second')"
    return (
        f"(strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || ({seconds}) || ' seconds') || '000')"
    )


async def fill(inv: Inventory, batches: int) -> None:
    """Job ``big``: ``batches`` batches, their log rows, its job row and the metadata table."""
    engine = inv.inventory_engine
    dialect = engine.dialect.name
    tables = inv.storage.tables
    schema = inv.settings.schema_name
    prefix = f"{schema}." if schema else ""
    top = batches * SPAN
    source = f"{prefix}big_meta"
    status = "CASE WHEN i % 10000 = 7 THEN 'running' WHEN i % 1000 = 3 THEN 'failed' ELSE 'succeeded' END"
    attempt = "CASE WHEN i % 2000 = 3 THEN 3 ELSE 1 END"  # half the failed: out of attempts
    started = _moment(dialect, "i / 100.0")
    ended = _moment(dialect, "i / 100.0 + (i % 50) / 10.0")
    async with engine.begin() as conn:
        # PostgreSQL's exclusion constraint checks each inserted range against a GiST
        # index whose leading columns (job, generation) are the same for every row: 0.5
        # ms a row at 20,000 batches, 15 minutes for a million; adding it afterwards
        # costs as much. It guards writes, and the report reads through the b-tree
        # indexes, so the benchmark's table goes without it.
        exclusion = None
        if dialect == "postgresql":
            exclusion = await conn.scalar(
                sa.text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conname = :name AND conrelid = to_regclass(:table)"
                ),
                {"name": exclusion_constraint_name(tables), "table": f"{prefix}inventory"},
            )
        if exclusion is not None:
            await conn.execute(
                sa.text(
                    f"ALTER TABLE {prefix}inventory DROP CONSTRAINT {exclusion_constraint_name(tables)}"
                )
            )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory (id, job_identifier, generation, processing_start, "
                "processing_end, range_start, range_end, weight, item_count, attempt, max_attempts, "
                "status, lease_expires_at, worker) "
                f"SELECT i, '{JOB}', 0, {started}, CASE WHEN i % 10000 = 7 THEN NULL ELSE {ended} END, "
                f"(i - 1) * {SPAN} + 1, i * {SPAN}, {SPAN}, {SPAN}, {attempt}, 3, {status}, "
                f"CASE WHEN i % 10000 = 7 THEN {ended} END, 'bench' FROM {_series(dialect, batches)}"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory_logs (id, attempt, processing_start, processing_end, "
                "status, logging, worker) SELECT id, attempt, processing_start, processing_end, status, "
                "CASE WHEN status = 'failed' THEN 'Traceback (most recent call last):\n  ...\n"
                "ValueError: row ' || range_start || ' is <corrupt> & unreadable' END, worker "
                f"FROM {prefix}inventory WHERE job_identifier = '{JOB}'"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory_jobs (job_identifier, source_kind, source, id_column, "
                f"filter_text, cursor, generation, created_at, updated_at, definition) VALUES "
                f"('{JOB}', 'table', :source, 'id', '', {top}, 0, {_moment(dialect, '0')}, "
                f"{_moment(dialect, str(batches / 100))}, :definition)"
            ),
            {
                "source": source,
                "definition": job_definition(Job(JOB, source_table=source, weight=SPAN)),
            },
        )
        await conn.execute(
            sa.text(f"CREATE TABLE {prefix}big_meta (id BIGINT PRIMARY KEY, weight FLOAT NOT NULL)")
        )
        # the first and last of the ids the batches cover, and AHEAD ids after the cursor
        await conn.execute(sa.text(f"INSERT INTO {prefix}big_meta VALUES (1, 1), ({top}, 1)"))
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}big_meta (id, weight) SELECT i + {top}, 1 "
                f"FROM {_series(dialect, AHEAD)}"
            )
        )
        if dialect == "postgresql":
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory_logs"))
        else:
            await conn.execute(sa.text("ANALYZE"))


async def median_s(call: Callable[[], Awaitable[Any]], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def bench(kind: str, batches: int, reps: int, out: str | None) -> None:
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
        url = f"sqlite+aiosqlite:///{tmp.name}/report.sqlite3"
    try:
        async with Inventory(url, schema_name=schema) as inv:
            start = time.perf_counter()
            await fill(inv, batches)
            print(
                f"{kind}: {batches:,} batches (+ log rows) inserted in {time.perf_counter() - start:.1f} s"
            )
            page = await inv.html_report([JOB])
            report = await median_s(lambda: inv.html_report([JOB]), reps)
            status = await median_s(lambda: job_status(inv.storage, JOB), reps)
            coverage = await median_s(lambda: job_coverage(inv.storage, JOB), reps)
            segments = len((await job_coverage(inv.storage, JOB)).segments)
            store = inv.storage
            parts = {
                "bar": await median_s(lambda: coverage_bar(store, JOB), reps),
                "timeline": await median_s(lambda: timeline(store, JOB, 0), reps),
                "failures": await median_s(lambda: failures(store, JOB, 0), reps),
            }
            print(f"  report:   {report:7.2f} s median of {reps} ({len(page) / 1024:.0f} KiB page)")
            print(
                f"  status:   {status:7.2f} s median of {reps} (report / status: {report / status:.1f})"
            )
            print(
                f"  coverage: {coverage:7.2f} s median of {reps}, {segments:,} segments "
                f"(report / exact coverage: {report / coverage:.2f})"
            )
            print("  parts:   " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
            if out:
                Path(out).write_text(page, encoding="utf-8")
                print(f"  written to {out}")
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
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the page here too")
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    for kind in kinds:
        asyncio.run(bench(kind, args.batches, args.reps, args.out))


if __name__ == "__main__":
    main()
