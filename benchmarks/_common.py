"""Shared helpers of the benchmark scripts: databases, cached tables, timing, tables.

Large metadata tables are built with SQL (``generate_series`` on PostgreSQL, a recursive
CTE on SQLite), never through the library, and cached between runs: a table is reused
when its build was recorded complete with the wanted row count.

PostgreSQL: the database ``pybi_bench`` on the server of ``PYBATCHINTORY_BENCH_PG_URL``
(default ``postgresql+asyncpg://postgres@127.0.0.1:5432/pybi_bench``), created if absent.
SQLite: files under ``$TMPDIR/pybi_bench`` (``PYBATCHINTORY_BENCH_DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

from pybatchintory import Inventory  # noqa: E402

PG_URL = os.environ.get(
    "PYBATCHINTORY_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/pybi_bench"
)
CACHE_DIR = Path(
    os.environ.get("PYBATCHINTORY_BENCH_DIR", Path(tempfile.gettempdir()) / "pybi_bench")
)
META_SCHEMA = "bench_meta"
BATCH_ITEMS = 100  # every item weighs 1, so a weight budget of 100 gives 100-item batches
JOB = "bench_job"
KINDS = ("postgresql", "sqlite")  # what --db both means


def pg_dsn(url: str = PG_URL) -> str:
    """The asyncpg DSN of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def pg_server_dsn() -> str:
    """A DSN of the maintenance database on the same server (to CREATE DATABASE)."""
    base, _, _ = pg_dsn().rpartition("/")
    return f"{base}/postgres"


def arguments(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> argparse.Namespace:
    """The common command line: ``--quick`` (small sizes, seconds) and ``--reps``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (median reported)")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


# -- tables ------------------------------------------------------------------------


async def ensure_pg_database() -> None:
    """Create the benchmark database and its metadata schema if absent."""
    name = pg_dsn().rpartition("/")[2].split("?")[0]
    server = await asyncpg.connect(pg_server_dsn())
    try:
        if not await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await server.execute(f'CREATE DATABASE "{name}"')
    finally:
        await server.close()
    conn = await asyncpg.connect(pg_dsn())
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {META_SCHEMA}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {META_SCHEMA}.builds (name text PRIMARY KEY, rows bigint NOT NULL)"
        )
    finally:
        await conn.close()


async def pg_meta_table(rows: int) -> str:
    """A PostgreSQL metadata table of ``rows`` items (ids 1..rows, weight 1), cached."""
    await ensure_pg_database()
    name = f"items_{rows}"
    conn = await asyncpg.connect(pg_dsn())
    try:
        built = await conn.fetchval(f"SELECT rows FROM {META_SCHEMA}.builds WHERE name = $1", name)
        if built == rows:
            await _identity(conn, name, rows)
            return f"{META_SCHEMA}.{name}"
        started = time.perf_counter()
        print(f"  building {META_SCHEMA}.{name} ({rows:,} rows) on PostgreSQL...", file=sys.stderr)
        await conn.execute("SET maintenance_work_mem = '256MB'")
        async with conn.transaction():
            await conn.execute(f"DROP TABLE IF EXISTS {META_SCHEMA}.{name}")
            await conn.execute(
                f"CREATE TABLE {META_SCHEMA}.{name} "
                "(id bigint NOT NULL, uri text NOT NULL, weight double precision NOT NULL)"
            )
            await conn.execute(
                f"INSERT INTO {META_SCHEMA}.{name} "
                "SELECT g, 's3://bench/items/' || g, 1 FROM generate_series(1, $1::bigint) g",
                rows,
            )
            # The key after the load: one sorted index build instead of 10M inserts into it.
            await conn.execute(f"ALTER TABLE {META_SCHEMA}.{name} ADD PRIMARY KEY (id)")
            await conn.execute(
                f"INSERT INTO {META_SCHEMA}.builds VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET rows = EXCLUDED.rows",
                name,
                rows,
            )
        await _identity(conn, name, rows)
        await conn.execute(f"VACUUM ANALYZE {META_SCHEMA}.{name}")
        print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        return f"{META_SCHEMA}.{name}"
    finally:
        await conn.close()


async def _identity(conn: Any, name: str, rows: int) -> None:
    """Give the id an identity default (sequence CACHE 1), as the exact horizon (on by
    default) requires of a PostgreSQL table; tables cached before it had none."""
    identity = await conn.fetchval(
        "SELECT attidentity FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'id'",
        f"{META_SCHEMA}.{name}",
    )
    if identity in ("a", "d", b"a", b"d"):
        return
    await conn.execute(
        f"ALTER TABLE {META_SCHEMA}.{name} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY "
        f"(START WITH {rows + 1})"
    )


def sqlite_meta_file(rows: int) -> Path:
    """A SQLite file holding table ``items`` of ``rows`` items, cached (built aside, then renamed)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    path = CACHE_DIR / f"meta_{rows}.sqlite3"
    if path.exists():
        return path
    started = time.perf_counter()
    print(f"  building {path} ({rows:,} rows) on SQLite...", file=sys.stderr)
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    conn = sqlite3.connect(partial)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(
            "CREATE TABLE items (id INTEGER PRIMARY KEY, uri TEXT NOT NULL, weight REAL NOT NULL)"
        )
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) "
            "INSERT INTO items SELECT x, 's3://bench/items/' || x, 1.0 FROM n",
            (rows,),
        )
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
    finally:
        conn.close()
    partial.rename(path)
    print(f"  built in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


@dataclass
class Target:
    """Where one measurement's metadata table and inventory live."""

    kind: str  # 'sqlite' or 'postgresql'
    meta_url: str
    inventory_url: str
    source_table: str
    schema: str | None  # the inventory's own schema (PostgreSQL)
    workdir: Path | None = None  # the inventory's directory (SQLite)

    def inventory(self, **overrides: Any) -> Inventory:
        return Inventory(
            inventory_url=self.inventory_url,
            meta_url=self.meta_url,
            schema_name=self.schema,
            **overrides,
        )


@asynccontextmanager
async def target(kind: str, rows: int) -> AsyncIterator[Target]:
    """A metadata table of ``rows`` items and a fresh, empty inventory, removed afterwards."""
    if kind == "postgresql":
        table = await pg_meta_table(rows)
        schema = f"inv_{uuid.uuid4().hex[:10]}"
        try:
            yield Target(kind, PG_URL, PG_URL, table, schema)
        finally:
            conn = await asyncpg.connect(pg_dsn())
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()
    else:
        meta = sqlite_meta_file(rows)
        workdir = Path(tempfile.mkdtemp(prefix="pybi_bench_inv_"))
        try:
            yield Target(
                kind,
                f"sqlite+aiosqlite:///{meta}",
                f"sqlite+aiosqlite:///{workdir / 'inventory.sqlite3'}",
                "items",
                None,
                workdir,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def recount_sql(tgt: Target) -> str:
    """The library's statement that sets the jobs' batch counters (schema version 5)
    from their rows, as SQL text for the target's own driver connection."""
    from sqlalchemy.dialects import postgresql, sqlite

    from pybatchintory._tables import build_tables, recount_batches

    tables = build_tables(tgt.inventory().settings)
    dialect = postgresql.dialect() if tgt.kind == "postgresql" else sqlite.dialect()
    compiled = recount_batches(tables).compile(
        dialect=dialect, compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


async def prefill_history(tgt: Target, batches: int, first_id: int, span: int = 50) -> int:
    """Write ``batches`` succeeded batches of JOB (and their log rows) by SQL, covering
    ids ``first_id``.. in ranges of ``span``, and move the job's cursor past them.

    The job row must exist (one real acquisition first). Returns the new cursor.
    """
    last = first_id + batches * span - 1
    if tgt.kind == "postgresql":
        s = tgt.schema
        conn = await asyncpg.connect(pg_dsn())
        try:
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {s}.inventory (job_identifier, generation, processing_start, "
                    "processing_end, range_start, range_end, weight, item_count, attempt, "
                    "max_attempts, status) SELECT $1, 0, now(), now(), $2::bigint + (g - 1) * $3, "
                    "$2::bigint + g * $3 - 1, $3, $3, 1, 3, 'succeeded' "
                    "FROM generate_series(1, $4::bigint) g",
                    JOB,
                    first_id,
                    span,
                    batches,
                )
                await conn.execute(
                    f"INSERT INTO {s}.inventory_logs (id, attempt, processing_start, processing_end, status) "
                    f"SELECT id, 1, processing_start, processing_end, 'succeeded' FROM {s}.inventory "
                    f"WHERE id NOT IN (SELECT id FROM {s}.inventory_logs)"
                )
                await conn.execute(
                    f"UPDATE {s}.inventory_jobs SET cursor = $1 WHERE job_identifier = $2",
                    last,
                    JOB,
                )
                await conn.execute(recount_sql(tgt))
            await conn.execute(f"ANALYZE {s}.inventory")
            await conn.execute(f"ANALYZE {s}.inventory_logs")
        finally:
            await conn.close()
    else:
        assert tgt.workdir is not None
        conn = sqlite3.connect(tgt.workdir / "inventory.sqlite3")
        try:
            now = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"
            conn.execute(
                "WITH RECURSIVE n(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM n WHERE g < ?) "
                "INSERT INTO inventory (job_identifier, generation, processing_start, processing_end, "
                "range_start, range_end, weight, item_count, attempt, max_attempts, status) "
                f"SELECT ?, 0, {now}, {now}, ? + (g - 1) * ?, ? + g * ? - 1, ?, ?, 1, 3, 'succeeded' FROM n",
                (batches, JOB, first_id, span, first_id, span, span, span),
            )
            conn.execute(
                "INSERT INTO inventory_logs (id, attempt, processing_start, processing_end, status) "
                "SELECT id, 1, processing_start, processing_end, 'succeeded' FROM inventory "
                "WHERE id NOT IN (SELECT id FROM inventory_logs)"
            )
            conn.execute(
                "UPDATE inventory_jobs SET cursor = ? WHERE job_identifier = ?", (last, JOB)
            )
            conn.execute(recount_sql(tgt))
            conn.commit()
            conn.execute("ANALYZE")
            conn.commit()
        finally:
            conn.close()
    return last


# -- the measured cycle ------------------------------------------------------------


class LibraryCycler:
    """Acquire-items-succeed cycles through the library: 100-item batches of one job.

    When a small table runs out, the cycler moves on to a fresh job (which starts again
    at id 1), so that any number of cycles can be measured on any table.
    """

    def __init__(self, inv: Inventory, source_table: str, job: str = JOB, **options: Any) -> None:
        self.inv, self.source_table, self.job, self.jobs_used = inv, source_table, job, 1
        self.options = options  # more of the job's options (horizon=None, say)

    async def cycle(self) -> None:
        for _ in range(2):
            batch = await self.inv.acquire_batch(
                source_table=self.source_table,
                job_identifier=self.job,
                weight=BATCH_ITEMS,
                **self.options,
            )
            if batch is not None:
                assert len(batch.items) == batch.item_count
                await batch.success()
                return
            self.jobs_used += 1
            self.job = f"{JOB}_{self.jobs_used}"
        raise RuntimeError(f"the metadata table {self.source_table} is empty")


async def ms_per_cycle(cycle: Callable[[], Awaitable[None]], cycles: int) -> float:
    """Milliseconds per call of ``cycle``, over ``cycles`` calls."""
    started = time.perf_counter()
    for _ in range(cycles):
        await cycle()
    return (time.perf_counter() - started) * 1000 / cycles


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(
    title: str, header: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()
) -> None:
    """A Markdown table, so that it can be pasted into the README as is."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n### {title}\n")

    def line(r: Sequence[str]) -> str:
        cells_ = (c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        return "| " + " | ".join(cells_) + " |"

    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    for r in cells[1:]:
        print(line(r))
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())


# -- bulk-inserted histories (observe.py, report.py, forecast.py, status_scale.py) -----
#
# The SQL below is built from constants, job names chosen by the scripts and generated
# schema names, never from input.


def series(dialect: str, n: int) -> str:
    """A ``g(i)`` row source of 1..n (``generate_series``, or a recursive CTE on SQLite)."""
    if dialect == "postgresql":
        return f"generate_series(1, {n}) AS g(i)"
    return (
        f"(WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n}) "
        "SELECT i FROM s) AS g"
    )


def moment(dialect: str, seconds: str) -> str:
    """2026-01-01 plus ``seconds`` (an SQL expression), as the inventory stores times."""
    if dialect == "postgresql":
        return f"(timestamptz '2026-01-01 00:00:00+00' + ({seconds}) * interval '1 second')"
    return (
        f"(strftime('%Y-%m-%d %H:%M:%f', '2026-01-01', '+' || ({seconds}) || ' seconds') || '000')"
    )


@asynccontextmanager
async def scratch_inventory(kind: str, name: str = "bench") -> AsyncIterator[Inventory]:
    """An open Inventory on empty tables: a PostgreSQL schema of its own in the
    benchmark database, or a SQLite file in a temporary directory; removed afterwards."""
    schema = None
    workdir = None
    if kind == "postgresql":
        await ensure_pg_database()
        schema = f"{name}_{uuid.uuid4().hex[:8]}"
        url = PG_URL
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"pybi_{name}_"))
        url = f"sqlite+aiosqlite:///{workdir / 'inventory.sqlite3'}"
    try:
        async with Inventory(url, schema_name=schema) as inv:
            yield inv
    finally:
        if schema is not None:
            conn = await asyncpg.connect(pg_dsn())
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def prefix_of(inv: Inventory) -> str:
    """``schema.`` of the inventory's tables, or nothing."""
    schema = inv.settings.schema_name
    return f"{schema}." if schema else ""


async def drop_exclusion_constraint(conn: Any, inv: Inventory) -> None:
    """PostgreSQL: drop the batches' exclusion constraint, if any, before a bulk load.

    It checks each inserted range against a GiST index whose leading columns (job,
    generation) are the same for every row: 0.5 ms a row at 20,000 batches, 15 minutes
    for a million; adding it afterwards costs as much. It guards writes, and what the
    benchmarks time reads through the b-tree indexes, so their tables go without it."""
    from pybatchintory._migrations import exclusion_constraint_name

    if conn.dialect.name != "postgresql":
        return
    tables = inv.storage.tables
    name = exclusion_constraint_name(tables)
    found = await conn.scalar(
        sa.text(
            "SELECT 1 FROM pg_constraint WHERE conname = :name AND conrelid = to_regclass(:table)"
        ),
        {"name": name, "table": f"{prefix_of(inv)}{tables.batches.name}"},
    )
    if found is not None:
        await conn.execute(
            sa.text(f"ALTER TABLE {prefix_of(inv)}{tables.batches.name} DROP CONSTRAINT {name}")
        )


async def set_counters(conn: Any, inv: Inventory) -> None:
    """Set the jobs' batch counters (schema version 5) from their bulk-inserted rows,
    with the library's own statement (the one a reset and the upgrade run)."""
    from pybatchintory._tables import recount_batches

    await conn.execute(recount_batches(inv.storage.tables))


async def analyze(conn: Any, inv: Inventory) -> None:
    prefix = prefix_of(inv)
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
        await conn.execute(sa.text(f"ANALYZE {prefix}inventory_logs"))
    else:
        await conn.execute(sa.text("ANALYZE"))


async def bulk_history(
    inv: Inventory,
    jobs: Sequence[str],
    batches: int,
    source: str,
    span: int = 10,
    definition: bool = True,
    scattered: bool = True,
) -> int:
    """Insert ``batches`` batches with their log rows, by SQL, and the jobs' rows (each
    over ``source``, with its counters, and with its definition unless ``definition`` is
    false: then trace does not look the item up in ``source``); return the highest id
    covered.

    Batch i belongs to job ``jobs[i % len(jobs)]``; each job's ranges are consecutive
    spans of ``span`` ids from id 1, so every job covers the same ids. One batch in 1,000
    failed (half of those out of attempts, each with an error text in its log row), one
    in 10,000 running; batch i started i / 100 s after 2026-01-01 and took up to 5 s.
    Not ``scattered``: instead the last four batches only are unfinished (running, failed
    with attempts left, failed out of attempts, released), however many there are.
    """
    from pybatchintory import Job
    from pybatchintory.job import job_definition

    engine = inv.inventory_engine
    dialect = engine.dialect.name
    prefix = prefix_of(inv)
    n = len(jobs)
    top = (batches // n) * span
    running, failed = "i % 10000 = 7", "i % 1000 = 3"
    out_of_attempts, released = "i % 2000 = 3", "1 = 0"  # half the failed
    if not scattered:
        running, failed = f"i = {batches}", f"i IN ({batches - 1}, {batches - 2})"
        out_of_attempts, released = f"i = {batches - 2}", f"i = {batches - 3}"
    status = (
        f"CASE WHEN {running} THEN 'running' WHEN {failed} THEN 'failed' "
        f"WHEN {released} THEN 'released' ELSE 'succeeded' END"
    )
    attempt = f"CASE WHEN {out_of_attempts} THEN 3 ELSE 1 END"
    started = moment(dialect, "i / 100.0")
    ended = moment(dialect, "i / 100.0 + (i % 50) / 10.0")
    owner = f"CASE i % {n} " + " ".join(f"WHEN {k} THEN '{j}'" for k, j in enumerate(jobs)) + " END"
    async with engine.begin() as conn:
        await drop_exclusion_constraint(conn, inv)
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory (id, job_identifier, generation, processing_start, "
                "processing_end, range_start, range_end, weight, item_count, attempt, max_attempts, "
                "status, lease_expires_at, worker) "
                f"SELECT i, {owner}, 0, {started}, CASE WHEN {running} THEN NULL ELSE {ended} END, "
                f"((i - 1) / {n}) * {span} + 1, ((i - 1) / {n}) * {span} + {span}, {span}, {span}, "
                f"{attempt}, 3, {status}, CASE WHEN {running} THEN {ended} END, 'bench' "
                f"FROM {series(dialect, batches)}"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {prefix}inventory_logs (id, attempt, processing_start, processing_end, "
                "status, logging, worker) SELECT id, attempt, processing_start, processing_end, status, "
                "CASE WHEN status = 'failed' THEN 'Traceback (most recent call last):\n  ...\n"
                "ValueError: row ' || range_start || ' is <corrupt> & unreadable' END, worker "
                f"FROM {prefix}inventory"
            )
        )
        for job in jobs:
            await conn.execute(
                sa.text(
                    f"INSERT INTO {prefix}inventory_jobs (job_identifier, source_kind, source, "
                    "id_column, filter_text, cursor, generation, created_at, updated_at, definition) "
                    f"VALUES (:job, 'table', :source, 'id', '', {top}, 0, {moment(dialect, '0')}, "
                    f"{moment(dialect, str(batches / 100))}, :definition)"
                ),
                {
                    "job": job,
                    "source": source,
                    "definition": job_definition(Job(job, source_table=source, weight=span))
                    if definition
                    else None,
                },
            )
        await set_counters(conn, inv)
        await analyze(conn, inv)
    return top


async def bulk_meta(inv: Inventory, name: str, spans: Sequence[tuple[int, ...]]) -> str:
    """A metadata table ``name`` (id, uri, weight 1) next to the inventory's tables,
    holding the ids of each ``(first, last)`` or ``(first, last, step)`` span; returns
    its qualified name."""
    dialect = inv.inventory_engine.dialect.name
    table = f"{prefix_of(inv)}{name}"
    async with inv.inventory_engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, uri TEXT NOT NULL, "
                "weight FLOAT NOT NULL)"
            )
        )
        for first, last, *rest in spans:
            step = rest[0] if rest else 1
            await conn.execute(
                sa.text(
                    f"INSERT INTO {table} (id, uri, weight) SELECT {first} + (i - 1) * {step}, "
                    f"'f', 1 FROM {series(dialect, (last - first) // step + 1)}"
                )
            )
        if dialect == "postgresql":
            await conn.execute(sa.text(f"ANALYZE {table}"))
    return table


async def median_ms(call: Callable[[], Awaitable[Any]], repeat: int, warm: bool = True) -> float:
    """The median of ``repeat`` calls, in milliseconds (after one unmeasured call)."""
    if warm:
        await call()  # the pool and the caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def timed_ms(call: Callable[[], Awaitable[Any]]) -> float:
    """One call's time, in milliseconds."""
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000
