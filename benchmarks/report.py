"""Time the HTML report of one job of a million batches.

The batches are bulk-inserted with one INSERT ... SELECT (``generate_series`` on
PostgreSQL, a recursive CTE on SQLite), never through acquisition: job ``big``, 10 ids
per batch, ended 10 ms apart over 2.8 hours, one in 1,000 failed (half of them out of
attempts, each with an error text in its log row), one in 10,000 running; 100,000 ids
of the metadata table lie after the cursor (PostgreSQL: the table goes without its
exclusion constraint, see ``_common.drop_exclusion_constraint``). Prints the medians of ``--reps`` reports, statuses
and exact coverages, the ratios of the report to the other two (the machine is shared:
ratios travel better than seconds), and the page's size; asserts nothing.

    python benchmarks/report.py                          # PostgreSQL and SQLite
    python benchmarks/report.py --db sqlite --batches 100000 --out /tmp/big.html

PostgreSQL: a schema of its own in the benchmark database (``_common.PG_URL``), dropped
afterwards. SQLite: a file in a temporary directory. The history is ``_common.bulk_history``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# Run as a script, or imported as benchmarks.report (tests/acceptance/test_report.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c

from pybatchintory import Inventory
from pybatchintory._coverage import job_coverage
from pybatchintory._report_data import coverage_bar, failures, timeline
from pybatchintory._status import job_status

JOB = "big"
SPAN = 10  # ids per batch
AHEAD = 100_000  # metadata ids after the cursor: the backlog and the bar's not_taken tail


async def fill(inv: Inventory, batches: int) -> None:
    """Job ``big``: ``batches`` batches, their log rows, its job row and the metadata table."""
    source = f"{c.prefix_of(inv)}big_meta"
    top = await c.bulk_history(inv, [JOB], batches, source, span=SPAN)
    # the first and last of the ids the batches cover, and AHEAD ids after the cursor
    await c.bulk_meta(inv, "big_meta", [(1, 1), (top, top + AHEAD)])


async def median_s(call: Callable[[], Awaitable[object]], reps: int) -> float:
    return await c.median_ms(call, reps, warm=False) / 1000


async def bench(kind: str, batches: int, reps: int, out: str | None) -> None:
    async with c.scratch_inventory(kind, "report") as inv:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=[*c.KINDS, "both"], default="both")
    parser.add_argument("--batches", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", help="write the page here too")
    args = parser.parse_args()
    kinds = c.KINDS if args.db == "both" else (args.db,)
    for kind in kinds:
        asyncio.run(bench(kind, args.batches, args.reps, args.out))


if __name__ == "__main__":
    main()
