"""The metadata table on MariaDB/MySQL against the same table on PostgreSQL, in one run.

ms per acquire-items-succeed cycle (100-item batches), the inventory on PostgreSQL in
both cases, the metadata table (``ROWS`` items, weight 1) on PostgreSQL or on MySQL;
``horizon=None`` on both, so that both plan the same way (the exact horizon is refused on
MySQL, docs/mysql.md). Repetitions interleave the two; medians and their ratio.

    python benchmarks/mysql_meta.py [--quick] [--reps N]

MySQL: ``PYBATCHINTORY_BENCH_MYSQL_URL`` (default
``mysql+asyncmy://root@127.0.0.1:3306/pybi_bench``, the database created if absent);
the table ``bench_items_<rows>`` there is built once and reused.
"""

from __future__ import annotations

import os
import uuid

import _common as c
import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

MYSQL_URL = os.environ.get(
    "PYBATCHINTORY_BENCH_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/pybi_bench"
)
ROWS = 20_000


async def mysql_meta_table(rows: int) -> str:
    """A MySQL table of ``rows`` items (ids 1..rows, weight 1), built once."""
    url = sa.engine.make_url(MYSQL_URL)
    server = create_async_engine(url.set(database=""))
    try:
        async with server.begin() as conn:
            exists = await conn.scalar(
                sa.text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :n"),
                {"n": url.database},
            )
            if not exists:  # (IF NOT EXISTS would print the server's warning)
                await conn.execute(sa.text(f"CREATE DATABASE `{url.database}`"))
    finally:
        await server.dispose()
    name = f"bench_items_{rows}"
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            found = await conn.scalar(
                sa.text(
                    "SELECT table_rows FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name = :n"
                ),
                {"n": name},
            )
            count = await conn.scalar(sa.text(f"SELECT count(*) FROM `{name}`")) if found else 0
            if count != rows:
                if found is not None:
                    await conn.execute(sa.text(f"DROP TABLE `{name}`"))
                await conn.execute(
                    sa.text(
                        f"CREATE TABLE `{name}` (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                        "uri VARCHAR(200) NOT NULL, weight DOUBLE NOT NULL)"
                    )
                )
                insert = sa.text(f"INSERT INTO `{name}` (uri, weight) VALUES (:uri, 1)")
                for start in range(1, rows + 1, 5000):
                    chunk = range(start, min(start + 5000, rows + 1))
                    await conn.execute(insert, [{"uri": f"s3://bench/items/{i}"} for i in chunk])
    finally:
        await engine.dispose()
    return name


async def main() -> None:
    args = c.arguments(__doc__ or "")
    reps = args.reps or 5
    cycles = 10 if args.quick else 40
    pg_table = await c.pg_meta_table(ROWS)
    my_table = await mysql_meta_table(ROWS)
    schema = f"inv_{uuid.uuid4().hex[:10]}"
    sources = {"postgresql": (c.PG_URL, pg_table), "mysql": (MYSQL_URL, my_table)}
    timings: dict[str, list[float]] = {kind: [] for kind in sources}
    try:
        for rep in range(reps):
            for kind, (meta_url, table) in sources.items():
                inv = c.Inventory(inventory_url=c.PG_URL, meta_url=meta_url, schema_name=schema)
                async with inv:
                    # the exact horizon is refused on MySQL
                    cycler = c.LibraryCycler(inv, table, f"{c.JOB}_{kind}_{rep}", horizon=None)
                    await cycler.cycle()  # warm: reflection, pools
                    timings[kind].append(await c.ms_per_cycle(cycler.cycle, cycles))
    finally:
        conn = await asyncpg.connect(c.pg_dsn())
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()
    pg, my = c.median(timings["postgresql"]), c.median(timings["mysql"])
    c.print_table(
        f"Metadata table on MySQL vs PostgreSQL ({ROWS:,} rows, inventory on PostgreSQL)",
        ["metadata table on", "ms per cycle (median)", "ratio to PostgreSQL"],
        [["PostgreSQL (asyncpg)", pg, 1.0], ["MySQL/MariaDB (asyncmy)", my, my / pg]],
        [
            f"{reps} repetitions of {cycles} cycles, interleaved; 100-item batches, "
            f"horizon=None on both. {c.machine()}"
        ],
    )


if __name__ == "__main__":
    c.run(main)
