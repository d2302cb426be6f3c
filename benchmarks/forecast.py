"""The forecast's read does not grow with a job's history: its median time on an
inventory of N batches and on one of 10 N, and the ratio.

The batches are bulk-inserted with SQL as in ``observe.py`` (four jobs, one batch in a
thousand failed, one in ten thousand running). The forecast reads a job's last 100
batches on the ``(job_identifier, range_start)`` index: the ratio should stay near 1.

    python benchmarks/forecast.py                     # PostgreSQL and SQLite
    python benchmarks/forecast.py --db sqlite --batches 40000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from observe import PG_URL, fill, median_ms

from pybatchintory import Inventory, Job


async def one(kind: str, batches: int) -> float:
    """The forecast's median time (ms) on an inventory of ``batches`` batches."""
    schema = None
    tmp = None
    admin = None
    if kind == "postgresql":
        url = PG_URL
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.ext.asyncio.create_async_engine(url)
        async with admin.begin() as conn:
            await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    else:
        tmp = tempfile.TemporaryDirectory()
        url = f"sqlite+aiosqlite:///{tmp.name}/forecast.sqlite3"
    prefix = f"{schema}." if schema else ""
    try:
        async with Inventory(url, schema_name=schema) as inv:
            await fill(inv, prefix, batches)
            # The filled batches start and end at once: give the job's last 100 a second
            # of work, so that the pace is measured as on a real history.
            later = (
                "processing_start + interval '1 second'"
                if kind == "postgresql"
                else "strftime('%Y-%m-%d %H:%M:%f', processing_start, '+1 second')"
            )
            async with inv.inventory_engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        f"UPDATE {prefix}inventory SET processing_end = {later} WHERE id IN "
                        f"(SELECT id FROM {prefix}inventory WHERE job_identifier = 'job_3' "
                        "ORDER BY range_start DESC LIMIT 100)"
                    )
                )
            job = Job("job_3", source_table=f"{prefix}meta".rstrip("."), weight=10)
            forecast = await inv.forecast(job)
            assert forecast.sample_batches > 90, forecast
            return await median_ms(lambda: inv.forecast(job), 30)
    finally:
        if admin is not None:
            async with admin.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            await admin.dispose()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["postgresql", "sqlite", "both"], default="both")
    parser.add_argument("--batches", type=int, default=40_000)
    args = parser.parse_args()
    kinds = ["postgresql", "sqlite"] if args.db == "both" else [args.db]
    for kind in kinds:
        small = asyncio.run(one(kind, args.batches))
        large = asyncio.run(one(kind, 10 * args.batches))
        print(
            f"{kind}: forecast (backlog count + last 100 batches) {small:.2f} ms at "
            f"{args.batches:,} batches, {large:.2f} ms at {10 * args.batches:,}: "
            f"ratio {large / small:.2f}"
        )


if __name__ == "__main__":
    main()
