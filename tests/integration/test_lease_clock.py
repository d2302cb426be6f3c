"""A lease runs from the moment it is granted, not from the start of the transaction
that granted it (issue 13, item 1).

PostgreSQL's now() is the transaction's start: an acquisition that waited for the job's
row lock longer than its lease used to insert (or reclaim) a batch that was already
expired, and a second worker took it at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

from pybatchintory import Batch, Inventory
from tests.conftest import Db

# The lease of the batches under test, and how long the acquisition waits for the lock
# first: longer than the lease, so a lease counted from the transaction's start would be
# over at birth. Seconds, not one: a test on a busy machine (xdist workers on two cores)
# may take a second between the grant and the next acquisition.
LEASE = 3
WAIT = LEASE + 1.5


async def _hold_the_job(db: Db, job: str, seconds: float, held: asyncio.Event) -> None:
    """Keep the job's row (PostgreSQL) or the database's write lock (SQLite) for a while."""
    async with db.engine.connect() as conn:
        if db.kind == "sqlite":
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.begin()
            await conn.execute(
                sa.text(
                    f"SELECT 1 FROM {db.qualified('inventory_jobs')} "
                    "WHERE job_identifier = :j FOR UPDATE"
                ),
                {"j": job},
            )
        held.set()
        await asyncio.sleep(seconds)
        await conn.rollback()


async def _acquire_after_waiting(db: Db, inv: Inventory, acquire: dict[str, Any]) -> Batch | None:
    held = asyncio.Event()
    holder = asyncio.ensure_future(_hold_the_job(db, "j", WAIT, held))
    await held.wait()
    if db.kind == "postgresql":
        # Start the acquisition's transaction before the lock is released: it waits.
        task = asyncio.ensure_future(inv.acquire_batch(**acquire))
        await db.blocked_session_pid()
    else:
        task = asyncio.ensure_future(inv.acquire_batch(**acquire))
    batch = await task
    await holder
    return batch


async def test_a_new_batch_granted_after_a_long_wait_is_not_born_expired(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2, "lease_seconds": LEASE}
    async with db.inventory(busy_timeout_seconds=10) as inv, db.inventory() as other:
        first = await inv.acquire_batch(**acquire)  # creates the job row
        assert first is not None
        await first.success()

        batch = await _acquire_after_waiting(db, inv, acquire)
        assert batch is not None and batch.attempt == 1
        # Granted just now with a LEASE s lease: nobody may take it over yet.
        again = await other.acquire_batch(**acquire)
        assert again is not None
        assert again.id != batch.id, "the batch was born expired and handed out twice"
        await again.success()
        await batch.success()


async def test_a_reclaimed_batch_granted_after_a_long_wait_is_not_born_expired(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2, "lease_seconds": LEASE}
    async with db.inventory(busy_timeout_seconds=10) as inv, db.inventory() as other:
        abandoned = await inv.acquire_batch(**acquire)
        assert abandoned is not None
        await asyncio.sleep(LEASE + 0.2)  # its lease runs out: the next acquisition reclaims it

        batch = await _acquire_after_waiting(db, inv, acquire)
        assert batch is not None
        assert (batch.id, batch.attempt) == (abandoned.id, 2)
        again = await other.acquire_batch(**acquire)
        assert again is not None
        assert again.id != batch.id, "the reclaimed batch was born expired"
        await again.success()
        await batch.success()


async def test_a_heartbeat_extends_the_lease_from_the_moment_it_runs(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", lease_seconds=5)
        assert batch is not None
        await batch.heartbeat()
        delta = await db.scalar(
            "SELECT extract(epoch FROM lease_expires_at - clock_timestamp()) FROM {s}inventory"
            if db.kind == "postgresql"
            else "SELECT (julianday(lease_expires_at) - julianday('now')) * 86400 FROM inventory"
        )
        assert 4.0 < float(delta) <= 5.01  # (julianday arithmetic rounds)
        await batch.success()
