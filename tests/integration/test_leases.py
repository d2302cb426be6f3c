"""Leases and fencing: an expired batch is handed out again, and its stale worker can
record nothing over the new owner (issue 3, test 4; docs/design.md, invariants 2 to 4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from pybatchintory import Batch, BatchLostError, Inventory
from tests.conftest import Db


async def wait_for_batch(inv: Inventory, timeout: float = 60, **acquire: Any) -> Batch:
    """Acquire until a batch comes back (a lease must run out first)."""
    deadline = time.monotonic() + timeout
    while (batch := await inv.acquire_batch(**acquire)) is None:
        assert time.monotonic() < deadline, "the expired batch was never handed out again"
        await asyncio.sleep(0.1)
    return batch


async def test_a_stale_worker_cannot_finish_a_batch_that_was_reclaimed(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 5)
    stale_inv, new_inv = db.inventory(worker="stale"), db.inventory(worker="new")
    async with stale_inv, new_inv:
        stale = await stale_inv.acquire_batch(
            source_table=table, job_identifier="j", lease_seconds=0.5
        )
        assert stale is not None and stale.attempt == 1
        # The whole table is in the stale batch: until its lease runs out there is nothing.
        new = await wait_for_batch(new_inv, source_table=table, job_identifier="j")
        assert (new.id, new.range_start, new.range_end, new.attempt) == (stale.id, 1, 5, 2)

        for finish in (stale.success, stale.heartbeat, lambda: stale.error("late failure")):
            with pytest.raises(BatchLostError, match=f"batch {stale.id} attempt 1"):
                await finish()
        await new.success({"by": "new"})
        with pytest.raises(BatchLostError):
            await stale.success({"by": "stale"})

    row = (await db.rows("SELECT status, attempt, result, worker FROM {s}inventory"))[0]
    assert (row.status, row.attempt, row.worker) == ("succeeded", 2, "new")
    assert row.result in ({"by": "new"}, '{"by": "new"}')
    logs = await db.rows(
        "SELECT attempt, status, logging, worker FROM {s}inventory_logs ORDER BY attempt"
    )
    assert [(log.attempt, log.status, log.worker) for log in logs] == [
        (1, "failed", "stale"),
        (2, "succeeded", "new"),
    ]
    assert "lease expired" in logs[0].logging


async def test_heartbeat_moves_the_lease_forward_on_the_database_clock(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", lease_seconds=60)
        assert batch is not None
        first = batch.lease_expires_at
        await asyncio.sleep(0.05)
        await batch.heartbeat()
        assert batch.lease_expires_at > first
        stored = await db.scalar("SELECT lease_expires_at FROM {s}inventory")
        assert stored is not None
        await batch.success()
        assert await db.scalar("SELECT lease_expires_at FROM {s}inventory") is None


async def test_async_with_renews_the_lease_in_the_background_so_nobody_reclaims_it(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv, db.inventory(worker="other") as other:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", lease_seconds=0.6)
        assert batch is not None
        async with batch:
            seen = {await db.scalar("SELECT lease_expires_at FROM {s}inventory")}
            deadline = time.monotonic() + 60
            while len(seen) < 4:  # three renewals observed in the table
                assert time.monotonic() < deadline, "the lease was never renewed"
                await asyncio.sleep(0.05)
                seen.add(await db.scalar("SELECT lease_expires_at FROM {s}inventory"))
        assert batch.status == "succeeded"
        # Renewed and then finished: the other worker never got it.
        assert await other.acquire_batch(source_table=table, job_identifier="j") is None
    assert await db.scalar("SELECT attempt FROM {s}inventory") == 1
    assert await db.scalar("SELECT count(*) FROM {s}inventory_logs") == 1


async def test_an_expired_batch_on_its_last_attempt_stays_failed_until_retried(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        lost = await inv.acquire_batch(
            source_table=table, job_identifier="j", max_attempts=1, lease_seconds=0.3
        )
        assert lost is not None
        deadline = time.monotonic() + 60
        while await db.scalar("SELECT status FROM {s}inventory") == "running":
            assert time.monotonic() < deadline
            # Acquisitions look at the expired batch; with no attempt left, they close it.
            assert await inv.acquire_batch(source_table=table, job_identifier="j") is None
            await asyncio.sleep(0.1)
        log = (await db.rows("SELECT status, logging FROM {s}inventory_logs"))[0]
        assert log.status == "failed" and "lease expired" in log.logging
        with pytest.raises(BatchLostError):
            await lost.success()

        assert await inv.retry("j") == [lost.id]
        again = await inv.acquire_batch(source_table=table, job_identifier="j")
        assert again is not None and (again.id, again.attempt) == (lost.id, 2)
        await again.success()
    assert await db.scalar("SELECT status FROM {s}inventory") == "succeeded"
