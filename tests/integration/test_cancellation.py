"""Cancellation at any await point leaks no pooled connection and leaves no session
idle in transaction holding a lock (issue 3, test 6)."""

from __future__ import annotations

import asyncio
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from pybatchintory import Inventory
from tests.acceptance._worker import check_job_invariants
from tests.conftest import Db, cancel_while_processing


async def idle_in_transaction(db: Db) -> list[str]:
    """Our sessions idle in a transaction: those whose last query named the test schema."""
    if db.kind != "postgresql":
        return []
    rows = await db.rows(
        "SELECT query FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
        "AND application_name = 'pybatchintory' AND position(:schema in query) > 0",
        schema=db.schema,
    )
    return [r.query for r in rows]


async def assert_nothing_held(db: Db, inv: Inventory) -> None:
    """No connection checked out of either pool, no transaction left open on the server."""
    deadline = time.monotonic() + 30
    while True:
        checked_out = (
            inv.inventory_engine.pool.checkedout(),  # type: ignore[attr-defined]
            inv.meta_engine.pool.checkedout(),  # type: ignore[attr-defined]
        )
        idle = await idle_in_transaction(db)
        if checked_out == (0, 0) and not idle:
            return
        # A connection being returned finishes its rollback shortly; then it must be back.
        assert time.monotonic() < deadline, f"checked out {checked_out}, idle in transaction {idle}"
        await asyncio.sleep(0.05)


async def test_cancelling_acquisitions_at_many_delays_leaks_nothing_and_loses_nothing(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 400)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 5, "lease_seconds": 0.5}
    # SQLite: a short busy timeout, so that a write lock left held by a cancelled
    # acquisition would fail the next one instead of only slowing it down.
    async with db.inventory(busy_timeout_seconds=1) as inv:
        await inv.open()
        delays = [0.0, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03, 0.05]
        outcomes = {"cancelled": 0, "acquired": 0}
        for _ in range(3):
            for delay in delays:
                try:
                    batch = await asyncio.wait_for(inv.acquire_batch(**acquire), delay)
                except asyncio.TimeoutError:  # on Python 3.10 not the builtin TimeoutError
                    outcomes["cancelled"] += 1
                else:
                    outcomes["acquired"] += 1
                    assert batch is not None
                    await batch.success()
                await assert_nothing_held(db, inv)
        assert outcomes["cancelled"] > 0

        # Whatever a cancellation left behind (a batch committed but never returned, or
        # failed while its items loaded) is reclaimed: draining covers every id once.
        while (batch := await inv.acquire_batch(**acquire)) is not None:
            await batch.success()
        deadline = time.monotonic() + 60
        while await db.scalar("SELECT count(*) FROM {s}inventory WHERE status <> 'succeeded'"):
            assert time.monotonic() < deadline, "a batch left by a cancellation was never reclaimed"
            await asyncio.sleep(0.1)
            while (batch := await inv.acquire_batch(**acquire)) is not None:
                await batch.success()
        await assert_nothing_held(db, inv)
    await check_job_invariants(db, "j", list(range(1, 401)))


async def lock_job_row(db: Db, conn: AsyncConnection, job: str) -> None:
    await conn.execute(
        sa.text(
            f"SELECT 1 FROM {db.qualified('inventory_jobs')} WHERE job_identifier = :j FOR UPDATE"
        ),
        {"j": job},
    )


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_cancelling_an_acquisition_blocked_on_the_job_lock_releases_its_session(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 10)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2}
    async with db.inventory() as inv:
        first = await inv.acquire_batch(**acquire)
        assert first is not None
        await first.success()
        async with db.engine.connect() as holder:
            await holder.begin()
            await lock_job_row(db, holder, "j")
            task = asyncio.ensure_future(inv.acquire_batch(**acquire))
            await db.blocked_session_pid()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await assert_nothing_held(db, inv)
            await holder.rollback()
        # Nothing was written by the cancelled call, and the next one works.
        assert await db.scalar("SELECT count(*) FROM {s}inventory") == 1
        nxt = await inv.acquire_batch(**acquire)
        assert nxt is not None and (nxt.range_start, nxt.range_end) == (3, 4)
        await nxt.success()
        await assert_nothing_held(db, inv)


async def test_cancelling_the_body_of_async_with_releases_the_batch(db: Db) -> None:
    """A cancelled body was interrupted, not failed: the batch is released (issue 9)."""
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j")
        assert batch is not None
        await cancel_while_processing(batch)
        assert batch.status == "released"
        await assert_nothing_held(db, inv)
        again = await inv.acquire_batch(source_table=table, job_identifier="j")
        assert again is not None and (again.id, again.attempt) == (batch.id, 2)
        assert again.max_attempts == batch.max_attempts + 1  # the attempt was given back
        await again.success()
    log = (await db.rows("SELECT status, logging FROM {s}inventory_logs WHERE attempt = 1"))[0]
    assert log.status == "released" and "CancelledError" in log.logging


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_a_cancellation_during_the_exit_bookkeeping_does_not_cut_it_short(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j")
        assert batch is not None

        async def work() -> None:
            async with batch:
                pass  # the success recorded on exit waits for the row lock held below

        async with db.engine.connect() as holder:
            await holder.begin()
            await holder.execute(
                sa.text(f"SELECT 1 FROM {db.qualified('inventory')} WHERE id = :i FOR UPDATE"),
                {"i": batch.id},
            )
            task = asyncio.ensure_future(work())
            await db.blocked_session_pid()
            task.cancel()  # asyncio's own cancellation, as wait_for or a TaskGroup sends
            await asyncio.sleep(0.2)
            assert not task.done()  # still recording, not abandoned
            await holder.rollback()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert batch.status == "succeeded"
        await assert_nothing_held(db, inv)
    assert await db.scalar("SELECT status FROM {s}inventory") == "succeeded"
    assert await db.scalar("SELECT status FROM {s}inventory_logs") == "succeeded"
