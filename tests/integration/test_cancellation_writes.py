"""A write cancelled midway runs to its end, then the cancellation goes on (issue 13,
items 2 and 3).

SQLite: aiosqlite runs BEGIN IMMEDIATE and COMMIT in a thread of its own; cancelling the
awaiting task midway left that connection holding the database's write lock, and every
other writer then waited out its busy timeout and failed with "database is locked".
PostgreSQL: an acquisition cancelled around its commit could commit a batch that never
reached its caller, and the batch stayed running without an owner until its lease ran
out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from pybatchintory import Batch
from tests.conftest import Db, cancel_after


async def _cancel_after(delay: float, call: Callable[[], Awaitable[Any]]) -> bool:
    """Run ``call``, cancelling it after ``delay``; True if the cancellation came first."""
    task = asyncio.ensure_future(call())
    await asyncio.sleep(delay)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    except Exception:  # e.g. BatchLostError after a cancelled finish
        return False
    return False


async def _another_writer_gets_through(db: Db) -> float:
    """Seconds a write from another connection takes (SQLite: with a 1 s busy timeout)."""
    started = time.monotonic()
    if db.kind == "sqlite":
        engine = create_async_engine(db.url, connect_args={"timeout": 1})
        try:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                await conn.exec_driver_sql("UPDATE inventory_jobs SET updated_at = updated_at")
                await conn.commit()
        finally:
            await engine.dispose()
    else:
        async with db.engine.begin() as conn:
            await conn.execute(sa.text("SET LOCAL lock_timeout = '1s'"))
            await conn.execute(sa.text(f"UPDATE {db.qualified('inventory')} SET worker = worker"))
    return time.monotonic() - started


@pytest.mark.timeout(240)
async def test_cancelling_heartbeats_and_finishes_midway_leaves_no_lock_held(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 200)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 1, "lease_seconds": 0.3}
    rng = random.Random(13)
    cancelled = 0
    async with db.inventory(busy_timeout_seconds=5) as inv:
        for round_ in range(60):
            batch = await inv.acquire_batch(**acquire, load_items=False)
            assert batch is not None
            # Mid-heartbeat: the natural trigger is leaving ``async with batch:`` while
            # the lease renewal runs; cancel heartbeats at small random delays.
            for _ in range(3):
                cancelled += await _cancel_after(rng.uniform(0, 0.004), batch.heartbeat)
            finish = batch.success if round_ % 2 else (lambda b=batch: b.error("boom"))
            cancelled += await _cancel_after(rng.uniform(0, 0.004), finish)
            assert await _another_writer_gets_through(db) < 0.9
        assert cancelled > 0
        # The inventory itself keeps working, promptly.
        batch = await asyncio.wait_for(inv.acquire_batch(**acquire), 5)
        assert batch is not None
        await asyncio.wait_for(batch.success(), 5)


@pytest.mark.timeout(240)
async def test_leaving_async_with_during_renewals_leaves_no_lock_held(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 100)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 1, "lease_seconds": 0.15}
    rng = random.Random(7)
    async with db.inventory(busy_timeout_seconds=5) as inv:
        for _ in range(40):
            batch = await inv.acquire_batch(**acquire, load_items=False)
            assert batch is not None
            async with batch:  # renews every 0.05 s; leaving it cancels the renewal
                await asyncio.sleep(rng.uniform(0.04, 0.12))
            assert batch.status == "succeeded"
            assert await _another_writer_gets_through(db) < 0.9


async def _running(db: Db) -> int:
    return int(await db.scalar("SELECT count(*) FROM {s}inventory WHERE status = 'running'"))


@pytest.mark.timeout(300)
async def test_cancelled_acquisitions_leave_no_batch_running_without_an_owner(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 2000)
    # A long lease: a batch left behind would stay running for the rest of the test.
    acquire = {"source_table": table, "job_identifier": "j", "weight": 3, "lease_seconds": 600}
    rng = random.Random(3)
    outcomes = {"cancelled": 0, "acquired": 0}
    async with db.inventory(busy_timeout_seconds=5) as inv:
        # A typical acquisition's duration, to spread the cancellations over it.
        # (The first acquisition reflects the table: time the second one.)
        for _ in range(2):
            started = time.monotonic()
            probe = await inv.acquire_batch(**acquire, load_items=False)
            span = max(time.monotonic() - started, 0.002) * 1.5
            assert probe is not None
            await probe.success()

        async def one(load_items: bool) -> Batch | None:
            return await inv.acquire_batch(**acquire, load_items=load_items)

        for i in range(300):
            await cancel_after(one(load_items=bool(i % 3)), rng.uniform(0, span), outcomes)
            assert await _running(db) == 0, f"a batch was left running after {outcomes}"
    assert outcomes["cancelled"] > 30
    # Refunded, not counted: no batch used up its attempts on cancellations.
    assert not await db.scalar(
        "SELECT count(*) FROM {s}inventory WHERE status = 'failed' AND attempt >= max_attempts"
    )


@pytest.mark.timeout(300)
async def test_concurrent_cancelled_acquisitions_leave_no_batch_running(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 2000)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2, "lease_seconds": 600}
    rng = random.Random(5)
    async with db.inventory(busy_timeout_seconds=10) as inv:

        async def worker(n: int) -> None:
            for _ in range(25):
                task = asyncio.ensure_future(inv.acquire_batch(**acquire, load_items=False))
                await asyncio.sleep(rng.uniform(0, 0.03))
                task.cancel()
                try:
                    batch = await task
                except asyncio.CancelledError:
                    continue
                assert batch is not None
                await batch.success()

        await asyncio.gather(*(worker(n) for n in range(4)))
        assert await _running(db) == 0
