"""Time ``trace``, ``status`` and ``jobs`` on an inventory of one million batches.

The batches are bulk-inserted with SQL (``_common.bulk_history``), never through
acquisition: four jobs over one metadata table, 250,000 batches each, every batch with
its log row; one batch in a thousand failed, one in ten thousand running. Prints the
median of repeated calls. ``status_scale.py`` compares a job of 1,000 batches with one
of 1,000,000 instead.

    python benchmarks/observe.py                      # PostgreSQL and SQLite
    python benchmarks/observe.py --db sqlite --batches 100000

PostgreSQL: a schema of its own in the benchmark database (``_common.PG_URL``), dropped
afterwards, its table without the exclusion constraint (see ``_common``). SQLite: a file
in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

import _common as c

JOBS = 4
BACKLOG = 1000  # metadata rows ahead of each job's cursor


async def bench(kind: str, batches: int) -> None:
    async with c.scratch_inventory(kind, "observe") as inv:
        start = time.perf_counter()
        source = f"{c.prefix_of(inv)}meta"
        # No stored definitions: trace does not look the ids up in the small metadata table.
        top = await c.bulk_history(
            inv, [f"job_{j}" for j in range(JOBS)], batches, source, definition=False
        )
        await c.bulk_meta(inv, "meta", [(top - BACKLOG + 1, top + BACKLOG)])
        print(
            f"{kind}: {batches:,} batches (+ log rows) inserted in {time.perf_counter() - start:.1f} s"
        )
        rng = random.Random(4)
        entries = await inv.trace(source, top // 2)
        assert len(entries) == JOBS, entries
        trace = await c.median_ms(lambda: inv.trace(source, rng.randint(1, top)), 200)
        status = await c.median_ms(lambda: inv.status("job_3"), 10)
        figures = await inv.status("job_3")
        jobs = await c.median_ms(inv.jobs, 10)
        print(
            f"  trace(table, id): {trace:8.2f} ms median of 200 ({JOBS} jobs, {JOBS} batches found)"
        )
        print(
            f"  status(job):      {status:8.2f} ms median of 10 ({figures.succeeded:,} succeeded, "
            f"{figures.failed} failed, {figures.running} running; backlog {figures.backlog})"
        )
        print(f"  jobs():           {jobs:8.2f} ms median of 10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=[*c.KINDS, "both"], default="both")
    parser.add_argument("--batches", type=int, default=1_000_000)
    args = parser.parse_args()
    kinds = c.KINDS if args.db == "both" else (args.db,)
    for kind in kinds:
        asyncio.run(bench(kind, args.batches))


if __name__ == "__main__":
    main()
