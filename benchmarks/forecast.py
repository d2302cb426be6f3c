"""The forecast's read does not grow with a job's history: its median time on an
inventory of N batches and on one of 10 N, and the ratio.

The batches are bulk-inserted with SQL as in ``observe.py`` (``_common.bulk_history``:
four jobs, one batch in a thousand failed, one in ten thousand running). The forecast reads a job's last 100
batches on the ``(job_identifier, range_start)`` index: the ratio should stay near 1.

    python benchmarks/forecast.py                     # PostgreSQL and SQLite
    python benchmarks/forecast.py --db sqlite --batches 40000
"""

from __future__ import annotations

import argparse
import asyncio

import _common as c
import sqlalchemy as sa

from pybatchintory import Job

JOBS = 4
BACKLOG = 1000  # metadata rows ahead of each job's cursor


async def one(kind: str, batches: int) -> float:
    """The forecast's median time (ms) on an inventory of ``batches`` batches."""
    async with c.scratch_inventory(kind, "forecast") as inv:
        prefix = c.prefix_of(inv)
        source = f"{prefix}meta"
        top = await c.bulk_history(inv, [f"job_{j}" for j in range(JOBS)], batches, source)
        await c.bulk_meta(inv, "meta", [(top - BACKLOG + 1, top + BACKLOG)])
        # Give the job's last 100 batches a second of work each, so that the pace is
        # measured as on a real history.
        later = (
            "processing_start + interval '1 second'"
            if kind == "postgresql"
            else "strftime('%Y-%m-%d %H:%M:%f', processing_start, '+1 second') || '000'"
        )
        async with inv.inventory_engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"UPDATE {prefix}inventory SET processing_end = {later} WHERE id IN "
                    f"(SELECT id FROM {prefix}inventory WHERE job_identifier = 'job_3' "
                    "ORDER BY range_start DESC LIMIT 100)"
                )
            )
        job = Job("job_3", source_table=source, weight=10)
        forecast = await inv.forecast(job)
        assert forecast.sample_batches > 90, forecast
        return await c.median_ms(lambda: inv.forecast(job), 30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=[*c.KINDS, "both"], default="both")
    parser.add_argument("--batches", type=int, default=40_000)
    args = parser.parse_args()
    kinds = c.KINDS if args.db == "both" else (args.db,)
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
