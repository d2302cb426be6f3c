"""Lease soak: live workers must never lose their batches (issue 13, DONE criterion).

Worker processes, each with "holder" tasks that keep a batch longer than its lease
(1 s by default) while ``async with batch:`` renews it, and "hammer" tasks that acquire
and finish as fast as they can, so that renewals and finishes compete with acquisitions
for the database (SQLite's single write lock, PostgreSQL's job row lock). No worker
dies, so every batch reclaimed because its lease ran out was taken from a live worker:
the figure must be zero.

    python benchmarks/lease_soak.py --db sqlite --seconds 120
    python benchmarks/lease_soak.py --db postgresql --seconds 120 [--url URL]

Loopback databases only: a SQLite file in a temporary directory, or a schema of its own
on the PostgreSQL server of ``--url`` (default ``PYBATCHINTORY_TEST_PG_URL`` or the local
``pbi_lease`` database), dropped afterwards. Prints one JSON line.

Figures of issue 13 (2 shared cores, load 3-7; 4 processes x (4 holders + 2 hammers),
120 s): batches taken from live workers, before -> after the fix:
SQLite 296 (of 16 732) -> 0 (of 7 884); PostgreSQL 6 (of 9 943) -> 0 (of 15 197).
SQLite pays for the fairness in acquisitions: hammers only, 20 s, 3 039 -> 2 033
batches (and 12 -> 0 lost), as acquisitions defer to other processes' renewals and
finishes. Isolation, PostgreSQL, 2 processes x 2 hammers, 20 s: READ COMMITTED 2 787
batches split 1 390 / 1 397; SERIALIZABLE 1 990 split 951 / 1 039 (40001 retries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/lease_soak.py` from a checkout
    sys.path.insert(0, str(ROOT))

from pybatchintory import Inventory  # noqa: E402
from pybatchintory.exceptions import BatchLostError  # noqa: E402

DEFAULT_PG_URL = os.environ.get(
    "PYBATCHINTORY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/pbi_lease"
)
JOB = "soak"
LEASE_EXPIRED_PREFIX = "lease expired"


async def _seed(url: str, schema: str | None, items: int) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if schema:
                await conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            prefix = f'"{schema}".' if schema else ""
            id_type = "BIGINT" if schema else "INTEGER"
            await conn.execute(
                sa.text(
                    f"CREATE TABLE {prefix}meta (id {id_type} PRIMARY KEY, weight FLOAT NOT NULL)"
                )
            )
            if schema:
                await conn.execute(
                    sa.text(f"INSERT INTO {prefix}meta SELECT g, 1 FROM generate_series(1, :n) g"),
                    {"n": items},
                )
            else:
                await conn.execute(
                    sa.text(
                        "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :n) "
                        "INSERT INTO meta SELECT i, 1 FROM s"
                    ),
                    {"n": items},
                )
    finally:
        await engine.dispose()


async def _worker_main(args: dict[str, Any]) -> dict[str, int]:
    counts = {"held": 0, "hammered": 0, "lost": 0, "errors": 0}
    table = f"{args['schema']}.meta" if args["schema"] else "meta"
    acquire = {
        "source_table": table,
        "job_identifier": JOB,
        "weight": 10,
        "lease_seconds": args["lease"],
        "load_items": False,
        # the soak's table takes explicit ids (no sequence): the exact horizon would refuse it
        "horizon": None,
    }
    rng = random.Random(args["index"])
    settings: dict[str, Any] = {"schema_name": args["schema"], "busy_timeout_seconds": 30}
    if args.get("isolation"):
        settings["isolation_level"] = args["isolation"]
    async with Inventory(
        args["url"], args["url"], worker=f"soak-{args['index']}", **settings
    ) as inv:
        # Every process ready (started, imported, open) before the clock starts.
        args["ready"].put(args["index"])
        while args["deadline"].value == 0:
            await asyncio.sleep(0.01)
        deadline = args["deadline"].value

        async def holder() -> None:
            while time.time() < deadline:
                try:
                    batch = await inv.acquire_batch(**acquire)
                    if batch is None:
                        return
                    async with batch:  # renews every third of the lease
                        await asyncio.sleep(rng.uniform(1.5, 3.0) * args["lease"])
                    counts["held"] += 1
                except BatchLostError:
                    counts["lost"] += 1
                except Exception as exc:  # a backend error is a failure of the run too
                    counts["errors"] += 1
                    print(f"holder error: {type(exc).__name__}: {exc}", file=sys.stderr)

        async def hammer() -> None:
            while time.time() < deadline:
                try:
                    batch = await inv.acquire_batch(**acquire)
                    if batch is None:
                        return
                    await batch.success()
                    counts["hammered"] += 1
                except BatchLostError:
                    counts["lost"] += 1
                except Exception as exc:
                    counts["errors"] += 1
                    print(f"hammer error: {type(exc).__name__}: {exc}", file=sys.stderr)

        tasks = [holder() for _ in range(args["holders"])] + [
            hammer() for _ in range(args["hammers"])
        ]
        await asyncio.gather(*tasks)
    return counts


def _worker(args: dict[str, Any], results: Any) -> None:
    results.put(asyncio.run(_worker_main(args)))


async def _reclaimed(url: str, schema: str | None) -> dict[str, int]:
    prefix = f'"{schema}".' if schema else ""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            expired = await conn.scalar(
                sa.text(f"SELECT count(*) FROM {prefix}inventory_logs WHERE logging LIKE :p"),
                {"p": LEASE_EXPIRED_PREFIX + "%"},
            )
            batches = await conn.scalar(sa.text(f"SELECT count(*) FROM {prefix}inventory"))
            if schema:
                await conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                await conn.commit()
    finally:
        await engine.dispose()
    return {"reclaimed_from_live_workers": int(expired or 0), "batches": int(batches or 0)}


def run(
    db: str,
    *,
    seconds: float,
    processes: int,
    holders: int,
    hammers: int,
    lease: float = 1.0,
    url: str | None = None,
    items: int = 2_000_000,
    isolation: str | None = None,
) -> dict[str, Any]:
    """Run the soak; return its figures (``reclaimed_from_live_workers`` must be 0)."""
    tmp = None
    if db == "sqlite":
        tmp = tempfile.mkdtemp(prefix="pbi_soak_")
        url, schema = f"sqlite+aiosqlite:///{tmp}/soak.sqlite3", None
    else:
        url, schema = url or DEFAULT_PG_URL, f"soak_{uuid.uuid4().hex[:10]}"
    asyncio.run(_seed(url, schema, items))
    ctx = multiprocessing.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Queue()
    shared_deadline = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                {
                    "url": url,
                    "schema": schema,
                    "index": i,
                    "holders": holders,
                    "hammers": hammers,
                    "lease": lease,
                    "deadline": shared_deadline,
                    "ready": ready,
                    "isolation": isolation,
                },
                results,
            ),
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    started = time.time()
    deadline = shared_deadline.value = started + seconds
    totals = {"held": 0, "hammered": 0, "lost": 0, "errors": 0}
    per_process: list[int] = []  # batches finished by each process: the fairness
    finished = 0
    hard_stop = deadline + 30 + 10 * lease
    while finished < processes and time.time() < hard_stop:
        try:
            counts = results.get(timeout=max(0.1, hard_stop - time.time()))
        except Exception:  # queue.Empty: the hard stop passed
            break
        finished += 1
        per_process.append(counts["held"] + counts["hammered"])
        for key, value in counts.items():
            totals[key] += value
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
    figures: dict[str, Any] = {
        "db": db,
        "seconds": seconds,
        "processes": processes,
        "holders_per_process": holders,
        "hammers_per_process": hammers,
        "lease_seconds": lease,
        "isolation": isolation or "default",
        "processes_finished": finished,
        "per_process": sorted(per_process),
        **totals,
        **asyncio.run(_reclaimed(url, schema)),
        "elapsed": round(time.time() - started, 1),
    }
    if tmp is not None:
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], required=True)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--holders", type=int, default=4, help="holder tasks per process")
    parser.add_argument(
        "--hammers", type=int, default=2, help="acquire-and-finish tasks per process"
    )
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--url", default=None)
    parser.add_argument(
        "--isolation", choices=["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"], default=None
    )
    args = parser.parse_args()
    figures = run(
        args.db,
        seconds=args.seconds,
        processes=args.processes,
        holders=args.holders,
        hammers=args.hammers,
        lease=args.lease,
        url=args.url,
        isolation=args.isolation,
    )
    print(json.dumps(figures))
    sys.exit(0 if figures["reclaimed_from_live_workers"] == 0 and figures["lost"] == 0 else 1)


if __name__ == "__main__":
    main()
