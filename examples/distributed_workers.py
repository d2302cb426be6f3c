"""Several worker processes drain one backfill on PostgreSQL, then check the coverage.

Run it with ``python examples/distributed_workers.py`` (PostgreSQL from
``--url`` or ``DISTRIBUTED_WORKERS_URL``, default the local ``test`` database). Each
worker is a separate process with its own Inventory: they coordinate only through the
database, as workers on many machines would. ``--dask`` runs the same worker function
on a Dask ``LocalCluster`` instead (``pip install "dask[distributed]"``); on a real
cluster, pass the scheduler's address to ``Client`` and nothing else changes.

The demo lives in its own schema (``--schema``), dropped and made anew at every run.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import re
import sys
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pybatchintory import Inventory

DEFAULT_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
JOB = "backfill_2024"


async def build_demo(url: str, schema: str, items: int) -> None:
    """A metadata table of ``items`` files with their sizes in MiB, in a fresh schema."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        await conn.execute(
            sa.text(
                f'CREATE TABLE "{schema}".files (id bigserial PRIMARY KEY, '
                "uri text NOT NULL, weight double precision NOT NULL)"
            )
        )
        rng = random.Random(7)
        await conn.execute(
            sa.text(f'INSERT INTO "{schema}".files (uri, weight) VALUES (:uri, :weight)'),  # noqa: S608
            [
                {"uri": f"s3://lake/part-{i:05d}.parquet", "weight": rng.randint(1, 64)}
                for i in range(items)
            ],
        )
    await engine.dispose()


async def drain(url: str, schema: str, name: str, budget_mib: float) -> dict[str, Any]:
    """One worker: take batches of at most ``budget_mib`` until the backfill is done."""
    processed = {"worker": name, "batches": 0, "items": 0, "mib": 0.0}
    async with Inventory(
        url, schema_name=schema, pool_size=1, worker=f"{name}:{os.getpid()}"
    ) as inv:
        while (
            batch := await inv.acquire_batch(
                source_table=f"{schema}.files",
                job_identifier=JOB,
                weight=budget_mib,
                lease_seconds=60,
            )
        ) is not None:
            async with batch:  # renews the lease while working; success on exit
                await asyncio.sleep(0.001 * batch.item_count)  # stands for real work
            processed["batches"] += 1
            processed["items"] += batch.item_count
            processed["mib"] += batch.weight
    return processed


def run_worker(url: str, schema: str, name: str, budget_mib: float) -> dict[str, Any]:
    """The worker's entry point in a process or on a Dask worker: its own event loop."""
    return asyncio.run(drain(url, schema, name, budget_mib))


def run_processes(url: str, schema: str, workers: int, budget: float) -> list[dict[str, Any]]:
    # spawn: a fresh interpreter per worker, nothing inherited from this one.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.starmap(run_worker, [(url, schema, f"proc{i}", budget) for i in range(workers)])


def run_dask(url: str, schema: str, workers: int, budget: float) -> list[dict[str, Any]]:
    from dask.distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        futures = client.map(
            run_worker,
            [url] * workers,
            [schema] * workers,
            [f"dask{i}" for i in range(workers)],
            [budget] * workers,
            pure=False,
        )
        return list(client.gather(futures))


async def coverage(url: str, schema: str) -> dict[str, Any]:
    """Check the backfill: ranges disjoint, every id in one batch, one log row per attempt."""
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        # The schema is a plain identifier (checked by main); values are bound.
        files = f'SELECT id FROM "{schema}".files ORDER BY id'  # noqa: S608
        ids = (await conn.execute(sa.text(files))).scalars().all()
        batches = (
            await conn.execute(
                sa.text(
                    f'SELECT id, range_start, range_end, attempt, status FROM "{schema}".inventory '  # noqa: S608
                    "WHERE job_identifier = :job ORDER BY range_start"
                ),
                {"job": JOB},
            )
        ).all()
        logs = f'SELECT count(*) FROM "{schema}".inventory_logs'  # noqa: S608
        attempts = await conn.scalar(sa.text(logs))
    await engine.dispose()
    disjoint = all(a.range_end < b.range_start for a, b in zip(batches, batches[1:]))
    covered = (
        sum(1 for i in ids if any(b.range_start <= i <= b.range_end for b in batches))
        if len(ids) <= 20000
        else None
    )
    return {
        "items": len(ids),
        "batches": len(batches),
        "disjoint": disjoint,
        "complete": covered == len(ids),
        "unfinished": sum(1 for b in batches if b.status != "succeeded"),
        "one_log_per_attempt": attempts == sum(b.attempt for b in batches),
    }


def _identifier(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a plain schema name")
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("DISTRIBUTED_WORKERS_URL", DEFAULT_URL))
    parser.add_argument("--schema", default="distributed_demo", type=_identifier)
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget-mib", type=float, default=256.0)
    parser.add_argument(
        "--dask", action="store_true", help="run the workers on a Dask LocalCluster"
    )
    args = parser.parse_args(argv)

    asyncio.run(build_demo(args.url, args.schema, args.items))
    runner = run_dask if args.dask else run_processes
    results = runner(args.url, args.schema, args.workers, args.budget_mib)
    for r in sorted(results, key=lambda r: r["worker"]):
        print(
            f"{r['worker']:>6}: {r['batches']:4d} batches, {r['items']:5d} items, {r['mib']:8.0f} MiB"
        )
    check = asyncio.run(coverage(args.url, args.schema))
    print(
        f"coverage: {check['items']} items in {check['batches']} batches by {args.workers} "
        f"{'Dask workers' if args.dask else 'processes'}: disjoint={check['disjoint']} "
        f"complete={check['complete']} unfinished={check['unfinished']} "
        f"one_log_per_attempt={check['one_log_per_attempt']}"
    )
    return {"workers": results, "coverage": check}


if __name__ == "__main__":
    outcome = main()
    sys.exit(0 if outcome["coverage"]["complete"] and outcome["coverage"]["disjoint"] else 1)
