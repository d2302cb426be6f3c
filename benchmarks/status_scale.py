"""``status``, ``jobs`` and ``trace`` on a job of 1,000 batches and on one of 1,000,000:
their cost must not grow with the job's history (issue 12, point 5).

Two inventories per database, one job each, bulk-inserted with SQL
(``_common.bulk_history``: 10 ids per batch, each with its log row, the jobs' batch
counters set by the library's ``recount_batches``). What grows is the history: both
jobs have the same four unfinished batches (running, failed with attempts left, failed
out of attempts, released), all others succeeded. ``--scattered`` makes one batch in
1,000 failed and one in 10,000 running instead, so that the unfinished batches grow
with the history too (2 vs 1,100): status and jobs() read those by design. Each job has
a metadata table of every tenth id of its history (trace looks the item up) and 1,000
ids after its cursor (the backlog). The calls on the two are interleaved (small, large,
small, ...), each timed alone; the table gives the medians, the ratio large / small and
whether it is within 1.25x.

    python benchmarks/status_scale.py                       # PostgreSQL and SQLite
    python benchmarks/status_scale.py --db sqlite --large 100000 --reps 20

PostgreSQL: schemas of their own in the benchmark database (``_common.PG_URL``),
dropped afterwards, the batches without the exclusion constraint (see ``_common``).
SQLite: files in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import _common as c

from pybatchintory import Inventory

JOB = "job"
BACKLOG = 1000  # metadata ids after the job's cursor (status counts them)
TARGET = 1.25


async def prepare(inv: Inventory, batches: int, scattered: bool) -> tuple[str, int]:
    """Fill ``inv`` with one job of ``batches`` batches; return its table and top id."""
    started = time.perf_counter()
    source = f"{c.prefix_of(inv)}meta"
    top = await c.bulk_history(inv, [JOB], batches, source, scattered=scattered)
    # Every tenth id of the history (trace looks its item up in the table), and the
    # backlog after the cursor.
    await c.bulk_meta(inv, "meta", [(10, top, 10), (top + 1, top + BACKLOG)])
    entries = await inv.trace(source, 10 * (top // 20))
    assert [e.job_identifier for e in entries] == [JOB], entries
    status = await inv.status(JOB)
    print(
        f"  {batches:,} batches inserted in {time.perf_counter() - started:.1f} s: "
        f"{status.succeeded:,} succeeded, {status.failed} failed, {status.running} running, "
        f"backlog {status.backlog.items if status.backlog else None}"
    )
    return source, top


async def bench(kind: str, small: int, large: int, reps: int, scattered: bool) -> list[list[Any]]:
    print(f"{kind}:")
    async with AsyncExitStack() as stack:
        calls = []
        for n in (small, large):
            inv = await stack.enter_async_context(c.scratch_inventory(kind, "status_scale"))
            source, top = await prepare(inv, n, scattered)
            rng = random.Random(n)

            def trace(
                inv: Inventory = inv, source: str = source, top: int = top, rng: Any = rng
            ) -> Any:
                return inv.trace(source, 10 * rng.randint(1, top // 10))

            ops: dict[str, Callable[[], Awaitable[Any]]] = {
                "status(job)": lambda inv=inv: inv.status(JOB),
                "jobs()": inv.jobs,
                "trace(table, id)": trace,
            }
            calls.append(ops)
        samples: dict[tuple[str, int], list[float]] = {}
        for ops in calls:  # warm the pools, caches and reflected tables
            for call in ops.values():
                await call()
        for _ in range(reps):
            for name in calls[0]:
                for size, ops in enumerate(calls):
                    samples.setdefault((name, size), []).append(await c.timed_ms(ops[name]))
    rows = []
    for name in calls[0]:
        s, g = c.median(samples[(name, 0)]), c.median(samples[(name, 1)])
        ratio = g / s
        rows.append([kind, name, s, g, f"{ratio:.2f}", "yes" if ratio <= TARGET else "**no**"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=[*c.KINDS, "both"], default="both")
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument(
        "--scattered",
        action="store_true",
        help="one batch in 1,000 failed and one in 10,000 running, so that the unfinished "
        "batches grow with the history (default: the same four unfinished batches in both)",
    )
    args = parser.parse_args()
    kinds = c.KINDS if args.db == "both" else (args.db,)
    rows = []
    for kind in kinds:
        rows += asyncio.run(bench(kind, args.small, args.large, args.reps, args.scattered))
    c.print_table(
        f"status, jobs and trace: a job of {args.small:,} batches vs one of {args.large:,}"
        + (" (unfinished batches scattered)" if args.scattered else ""),
        [
            "database",
            "call",
            f"{args.small:,} batches (ms)",
            f"{args.large:,} batches (ms)",
            "ratio",
            f"within {TARGET}x",
        ],
        rows,
        [f"Medians of {args.reps} interleaved calls each; {c.machine()}."],
    )


if __name__ == "__main__":
    main()
