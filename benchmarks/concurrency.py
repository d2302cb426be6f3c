"""Concurrency: batches per second with 1, 4 and 16 worker processes on PostgreSQL.

Each worker is a process with its own Inventory (or its own raw asyncpg connections for
the floor), acquiring 100-item batches, loading their items and recording success in a
loop for a fixed time. "one job": every worker takes batches of the same job, so they
queue on that job's row lock. "16 jobs": worker i works job i mod 16. Library and floor
are measured interleaved in one run, each on a fresh inventory.

    python benchmarks/concurrency.py [--quick] [--reps N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
import uuid
from typing import Any

import _common as c
import asyncpg
from _floor import PgFloor


def extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=None, help="measured seconds per configuration"
    )
    parser.add_argument("--workers", type=int, nargs="*", default=None)


async def _work(how: str, tgt: c.Target, job: str, seconds: float, barrier: Any) -> int:
    if how == "library":
        inv = await tgt.inventory(worker=job).open()
        runner: Any = c.LibraryCycler(inv, tgt.source_table, job)
    else:
        inv = None
        runner = await PgFloor(tgt.schema or "", tgt.source_table, job, worker=job).open()
    try:
        for _ in range(3):
            await runner.cycle()
        await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        deadline = time.perf_counter() + seconds
        count = 0
        while time.perf_counter() < deadline:
            await runner.cycle()
            count += 1
        return count
    finally:
        if inv is not None:
            await inv.close()
        else:
            await runner.close()


def _worker(how: str, tgt: c.Target, job: str, seconds: float, barrier: Any, out: Any) -> None:
    try:
        out.put(asyncio.run(_work(how, tgt, job, seconds, barrier)))
    except BaseException as exc:  # report it, or the parent would wait for nothing
        barrier.abort()
        out.put(f"{type(exc).__name__}: {exc}")
        raise


async def _prepare(rows: int) -> c.Target:
    # Not the c.target() context manager: asyncio.run() would finalise its generator
    # (dropping the schema) as soon as this loop ends, before the workers start.
    tgt = c.Target(
        "postgresql",
        c.PG_URL,
        c.PG_URL,
        await c.pg_meta_table(rows),
        f"inv_{uuid.uuid4().hex[:10]}",
    )
    async with tgt.inventory():  # create the backend tables once, before the workers race
        pass
    return tgt


async def _drop(schema: str) -> None:
    conn = await asyncpg.connect(c.pg_dsn())
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def measure(how: str, workers: int, jobs: int, rows: int, seconds: float) -> float:
    """Batches per second of ``workers`` processes over ``jobs`` jobs, on a fresh inventory."""
    tgt = asyncio.run(_prepare(rows))
    try:
        ctx = mp.get_context("fork")
        barrier, out = ctx.Barrier(workers), ctx.Queue()
        procs = [
            ctx.Process(
                target=_worker, args=(how, tgt, f"{c.JOB}_{i % jobs}", seconds, barrier, out)
            )
            for i in range(workers)
        ]
        for p in procs:
            p.start()
        counts = [out.get(timeout=120 + seconds) for _ in procs]
        failed = [x for x in counts if not isinstance(x, int)]
        if failed:
            raise RuntimeError(f"a {how} worker failed: {failed[0]}")
        for p in procs:
            p.join()
        return sum(counts) / seconds
    finally:
        asyncio.run(_drop(tgt.schema or ""))


def main() -> None:
    args = c.arguments(__doc__.splitlines()[0], extra)
    rows = 100_000 if args.quick else 1_000_000
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    reps = args.reps or (1 if args.quick else 3)
    counts = args.workers or ([1, 4] if args.quick else [1, 4, 16])
    asyncio.run(c.pg_meta_table(rows))
    configs = [(how, n, jobs) for jobs in (1, 16) for n in counts for how in ("library", "asyncpg")]
    samples: dict[tuple[str, int, int], list[float]] = {k: [] for k in configs}
    for _ in range(reps):
        for key in configs:
            samples[key].append(measure(key[0], key[1], key[2], rows, seconds))

    table = []
    for jobs in (1, 16):
        for n in counts:
            lib = c.median(samples[("library", n, jobs)])
            raw = c.median(samples[("asyncpg", n, jobs)])
            label = "one job" if jobs == 1 else f"{min(n, jobs)} job(s), worker i on job i mod 16"
            table.append([label, n, raw, lib, f"{100 * lib / raw:.0f}%"])
    c.print_table(
        "Concurrency on PostgreSQL: batches per second (100-item acquire-items-succeed cycles)",
        ["jobs", "workers (processes)", "floor batches/s", "library batches/s", "library / floor"],
        table,
        [
            f"Median of {reps} runs of {seconds:g} s each, library and asyncpg floor interleaved; "
            f"{rows:,}-row table; {c.machine()}: workers and PostgreSQL share the 2 cores.",
            "Target (issue 12): one worker and 16 workers on 16 jobs reach at least 70% of the floor.",
        ],
    )


if __name__ == "__main__":
    main()
