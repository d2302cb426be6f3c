"""A worker process for the multi-process tests, and the checks they share.

Run as ``python -m tests.acceptance._worker <command> '<json arguments>'``:

- ``drain``: several asyncio tasks acquire and finish batches of one or more jobs until
  nothing is left; a batch whose ``range_start`` is divisible by ``fail_every`` fails its
  first attempt, so that retries race too. Prints one JSON line of counts.
- ``hang``: acquire one batch, print it as a JSON line, then sleep until killed.
- ``open``: wait for a start signal (a file appearing), then open the inventory (which
  creates the backend tables) and print ``{"opened": true}``.
- ``write``: insert rows in transactions of random length (0-500 ms), random size, some
  rolled back, for ``seconds`` and until ``min_rows`` committed; prints the counts.
- ``follow``: drain one incremental job while writers insert, until the ``stop_file``
  exists and two acquisitions in a row after it find nothing; prints the counts.

Every test that starts these processes runs a fresh interpreter (no fork): nothing of
the parent's event loop or pooled connections leaks into a worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _inventory(args: dict[str, Any]) -> Any:
    from pybatchintory import Inventory

    settings = {
        "inventory_url": args["url"],
        "meta_url": args["url"],
        "schema_name": args.get("schema"),
        # Few connections per process: sixteen processes share one server with other tests.
        "pool_size": args.get("pool_size", 1),
        # A drain stops at the first acquisition that returns None: the failures it
        # plants must come back at once, not after a backoff (test_backoff covers that).
        "retry_delay_seconds": 0,
    }
    if args.get("isolation_level"):
        settings["isolation_level"] = args["isolation_level"]
    if args.get("busy_timeout_seconds"):
        settings["busy_timeout_seconds"] = args["busy_timeout_seconds"]
    settings.update(args.get("settings", {}))  # e.g. {"pgbouncer": true}
    return Inventory(**settings, worker=f"{args.get('name', 'w')}:{os.getpid()}")


class _Planned(Exception):
    """The failure a drain worker plants in some first attempts."""


async def _drain(args: dict[str, Any]) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = args["jobs"]
    fail_every: int = args.get("fail_every", 0)
    counts = {"succeeded": 0, "failed": 0, "lost": 0}

    async def task(offset: int) -> None:
        from pybatchintory import BatchLostError

        # Each task walks the jobs from a different start, so jobs interleave.
        for k in range(len(jobs)):
            job = jobs[(offset + k) % len(jobs)]
            while True:
                batch = await inv.acquire_batch(
                    source_table=args["table"],
                    job_identifier=job["name"],
                    weight=job.get("weight"),
                    filter=job.get("filter"),
                    id_start=job.get("id_start"),
                    id_end=job.get("id_end"),
                )
                if batch is None:
                    break
                planted = (
                    bool(fail_every) and batch.attempt == 1 and batch.range_start % fail_every == 0
                )
                try:
                    async with batch:
                        await asyncio.sleep(0)  # a yield point inside the lease, as real work has
                        if planted:
                            raise _Planned(f"planted failure of batch {batch.id}")
                except _Planned:
                    counts["failed"] += 1
                except BatchLostError:
                    counts["lost"] += 1
                else:
                    counts["succeeded"] += 1

    inv = _inventory(args)
    async with inv:
        await asyncio.gather(*(task(i) for i in range(args.get("tasks", 2))))
    return counts


async def _hang(args: dict[str, Any]) -> None:
    inv = _inventory(args)
    await inv.open()
    batch = await inv.acquire_batch(
        source_table=args["table"],
        job_identifier=args["job"],
        lease_seconds=args["lease_seconds"],
    )
    assert batch is not None, "the hanging worker found nothing to take"
    record = {
        "id": batch.id,
        "range_start": batch.range_start,
        "range_end": batch.range_end,
        "attempt": batch.attempt,
        "pid": os.getpid(),
    }
    print(json.dumps(record), flush=True)
    # Hung mid-batch: no heartbeat, no outcome, the connection back in the pool.
    await asyncio.sleep(3600)


async def _open(args: dict[str, Any]) -> dict[str, Any]:
    go = Path(args["go_file"])
    deadline = time.monotonic() + 60
    while not go.exists():  # every process starts its creation at the same moment
        if time.monotonic() > deadline:
            raise TimeoutError("no start signal")
        await asyncio.sleep(0.005)
    async with _inventory(args):
        pass
    return {"opened": True}


async def _write(args: dict[str, Any]) -> dict[str, Any]:
    import random

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    rng = random.Random(args["seed"])
    table = sa.Table(
        args["table_name"],
        sa.MetaData(schema=args.get("schema")),
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("uri", sa.String),
        sa.Column("weight", sa.Double),
    )
    engine = create_async_engine(args["url"], pool_size=1)
    committed = rolled_back = transactions = 0
    deadline = time.monotonic() + args["seconds"]
    try:
        async with engine.connect() as conn:
            while time.monotonic() < deadline or committed < args["min_rows"]:
                size = rng.randint(1, args.get("max_batch", 60))
                rows = [
                    {"uri": f"w{args['seed']}/{transactions}/{i}", "weight": 1} for i in range(size)
                ]
                await conn.begin()
                # some transactions insert in two statements, around the wait
                split = rng.randint(0, size) if rng.random() < 0.3 else size
                if split:
                    await conn.execute(sa.insert(table), rows[:split])
                await asyncio.sleep(rng.uniform(0, 0.5))
                if rows[split:]:
                    await conn.execute(sa.insert(table), rows[split:])
                if rng.random() < args.get("rollback_share", 0.1):
                    await conn.rollback()
                    rolled_back += size
                else:
                    await conn.commit()
                    committed += size
                transactions += 1
    finally:
        await engine.dispose()
    return {"committed": committed, "rolled_back": rolled_back, "transactions": transactions}


async def _follow(args: dict[str, Any]) -> dict[str, Any]:
    stop = Path(args["stop_file"])
    counts = {"batches": 0, "items": 0, "empty": 0}

    async def task() -> None:
        empty_after_stop = 0
        while empty_after_stop < 2:
            stopped = stop.exists()  # before the acquisition starts
            batch = await inv.acquire_batch(
                source_table=args["table"],
                job_identifier=args["job"],
                weight=args.get("weight"),
                horizon=args.get("horizon", "exact"),
                load_items=False,
            )
            if batch is None:
                counts["empty"] += 1
                empty_after_stop = empty_after_stop + 1 if stopped else 0
                await asyncio.sleep(0.02)
                continue
            empty_after_stop = 0
            async with batch:
                await asyncio.sleep(0)
            counts["batches"] += 1
            counts["items"] += batch.item_count

    inv = _inventory(args)
    async with inv:
        await asyncio.gather(*(task() for _ in range(args.get("tasks", 2))))
    return counts


def main(argv: Sequence[str]) -> None:
    command, raw = argv[0], argv[1]
    args = json.loads(raw)
    if command == "drain":
        print(json.dumps(asyncio.run(_drain(args))), flush=True)
    elif command == "hang":
        asyncio.run(_hang(args))
    elif command == "open":
        print(json.dumps(asyncio.run(_open(args))), flush=True)
    elif command == "write":
        print(json.dumps(asyncio.run(_write(args))), flush=True)
    elif command == "follow":
        print(json.dumps(asyncio.run(_follow(args))), flush=True)
    else:
        raise SystemExit(f"unknown command {command!r}")


# -- for the tests: starting workers ------------------------------------------------


def worker_command(command: str, args: dict[str, Any]) -> list[str]:
    """The argv that runs one worker process."""
    return [sys.executable, "-m", "tests.acceptance._worker", command, json.dumps(args)]


def start_worker(command: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    """Start a worker in the repository root, its stdout piped."""
    return subprocess.Popen(
        worker_command(command, args),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def run_workers(
    command: str, arg_list: Sequence[dict[str, Any]], timeout: float = 100
) -> list[dict[str, Any]]:
    """Run one worker per argument set at once; return each one's JSON line.

    A worker that exits non-zero fails the test with its stderr.
    """
    procs = [
        await asyncio.create_subprocess_exec(
            *worker_command(command, args),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for args in arg_list
    ]
    try:
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), timeout)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"worker exited {p.returncode}:\n{err.decode()[-4000:]}"
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


# -- for the tests: the invariants of one job ------------------------------------------


async def check_job_invariants(db: Any, job: str, matching_ids: Sequence[int]) -> dict[str, int]:
    """Assert docs/design.md invariants 1 to 3 for ``job`` once its workers are done.

    Ranges pairwise disjoint; every matching id in exactly one batch; nothing left
    running; one log row per attempt, every attempt but the last failed, the last one
    matching the batch's status. Returns the batch and attempt counts.
    """
    batches = await db.rows(
        "SELECT id, range_start, range_end, item_count, attempt, status "
        "FROM {s}inventory WHERE job_identifier = :job ORDER BY range_start",
        job=job,
    )
    assert batches, f"job {job} has no batch"
    assert [b.status for b in batches if b.status != "succeeded"] == [], "a batch is unfinished"
    for before, after in zip(batches, batches[1:]):
        assert before.range_end < after.range_start, f"overlap: {before} and {after}"

    ids = sorted(matching_ids)
    position = 0
    for b in batches:
        inside = 0
        while position < len(ids) and ids[position] <= b.range_end:
            assert ids[position] >= b.range_start, f"id {ids[position]} lies in no batch"
            inside += 1
            position += 1
        assert inside == b.item_count, f"batch {b.id} counts {b.item_count}, holds {inside}"
    assert position == len(ids), f"ids from {ids[position]} on lie in no batch"

    logs = await db.rows(
        "SELECT l.id, l.attempt, l.status, l.processing_end FROM {s}inventory_logs l "
        "JOIN {s}inventory b ON b.id = l.id WHERE b.job_identifier = :job "
        "ORDER BY l.id, l.attempt",
        job=job,
    )
    by_batch: dict[int, list[Any]] = {}
    for log in logs:
        by_batch.setdefault(log.id, []).append(log)
    for b in batches:
        attempts = by_batch.get(b.id, [])
        assert [a.attempt for a in attempts] == list(range(1, b.attempt + 1)), (
            f"batch {b.id} at attempt {b.attempt} has log attempts {[a.attempt for a in attempts]}"
        )
        # every attempt before the last ended, failed or handed back (released)
        assert all(a.status in ("failed", "released") for a in attempts[:-1]), (
            f"batch {b.id} has an earlier attempt still open: {[a.status for a in attempts]}"
        )
        assert attempts[-1].status == b.status
        assert all(a.processing_end is not None for a in attempts)
    return {"batches": len(batches), "attempts": len(logs)}


if __name__ == "__main__":
    main(sys.argv[1:])
