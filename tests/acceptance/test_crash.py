"""Workers die: kill -9 mid-batch, and a connection terminated by the server during
acquire, heartbeat and finish (issue 3, tests 3 and 5)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable
from typing import Any

import pytest
import sqlalchemy as sa

from pybatchintory import BackendError
from tests.acceptance._worker import start_worker
from tests.conftest import Db


async def test_a_batch_of_a_killed_worker_is_handed_out_again_after_its_lease(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 8)
    lease = 2.0
    worker = start_worker(
        "hang",
        {"url": db.url, "schema": db.schema, "table": table, "job": "j", "lease_seconds": lease},
    )
    try:
        line = await asyncio.to_thread(worker.stdout.readline)  # type: ignore[union-attr]
        assert line, worker.stderr.read()  # type: ignore[union-attr]
        taken = json.loads(line)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        worker.stdout.close()  # type: ignore[union-attr]
        worker.stderr.close()  # type: ignore[union-attr]
    killed_at = time.monotonic()

    async with db.inventory(worker="survivor") as inv:
        deadline = killed_at + 60
        while (batch := await inv.acquire_batch(source_table=table, job_identifier="j")) is None:
            assert time.monotonic() < deadline, "the dead worker's batch was never reclaimed"
            await asyncio.sleep(0.05)
        reclaimed_after = time.monotonic() - killed_at
        assert (batch.id, batch.range_start, batch.range_end, batch.attempt) == (
            taken["id"],
            taken["range_start"],
            taken["range_end"],
            2,
        )
        assert (batch.range_start, batch.range_end) == (1, 8)
        await batch.success()
    print(f"\n[{db.kind}] kill -9 -> reclaimed after {reclaimed_after:.2f} s (lease {lease} s)")

    logs = await db.rows(
        "SELECT attempt, status, logging, worker FROM {s}inventory_logs ORDER BY attempt"
    )
    assert [(log.attempt, log.status) for log in logs] == [(1, "failed"), (2, "succeeded")]
    assert "lease expired" in logs[0].logging and logs[1].worker == "survivor"
    assert await db.scalar("SELECT count(*) FROM {s}inventory") == 1


# -- connections terminated by the server (PostgreSQL) -------------------------------


async def terminate_while_blocked(
    db: Db, lock_sql: str, call: Awaitable[Any], **params: Any
) -> None:
    """Hold a row lock, start ``call``, kill its session while it waits; expect BackendError."""
    async with db.engine.connect() as holder:
        await holder.begin()
        await holder.execute(sa.text(lock_sql.replace("{s}", f"{db.schema}.")), params)
        task = asyncio.ensure_future(call)
        pid = await db.blocked_session_pid()
        assert await db.scalar("SELECT pg_terminate_backend(:pid)", pid=pid) is True
        with pytest.raises(BackendError) as raised:
            await task
        await holder.rollback()
    message = str(raised.value)
    assert "terminat" in message.lower() or "connection" in message.lower(), message


async def inventory_state(db: Db) -> list[tuple[Any, ...]]:
    batches = await db.rows(
        "SELECT id, range_start, range_end, attempt, status, lease_expires_at FROM {s}inventory ORDER BY id"
    )
    logs = await db.rows("SELECT id, attempt, status FROM {s}inventory_logs ORDER BY id, attempt")
    cursor = await db.scalar("SELECT cursor FROM {s}inventory_jobs")
    return [tuple(b) for b in batches] + [tuple(log) for log in logs] + [(cursor,)]


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_a_connection_killed_during_acquire_writes_nothing_and_the_next_call_works(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 10)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 3}
    async with db.inventory() as inv:
        first = await inv.acquire_batch(**acquire)
        assert first is not None
        await first.success()
        before = await inventory_state(db)
        await terminate_while_blocked(
            db,
            "SELECT 1 FROM {s}inventory_jobs WHERE job_identifier = 'j' FOR UPDATE",
            inv.acquire_batch(**acquire),
        )
        assert await inventory_state(db) == before  # no partial commit
        nxt = await inv.acquire_batch(**acquire)
        assert nxt is not None and (nxt.range_start, nxt.range_end, nxt.attempt) == (4, 6, 1)
        await nxt.success()
    ranges = await db.rows("SELECT range_start, range_end FROM {s}inventory ORDER BY range_start")
    assert [tuple(r) for r in ranges] == [(1, 3), (4, 6)]  # no duplicate range


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.parametrize("operation", ["heartbeat", "success", "error"])
async def test_a_connection_killed_during_heartbeat_or_finish_changes_nothing(
    db: Db, operation: str
) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
        assert batch is not None
        before = await inventory_state(db)
        calls = {
            "heartbeat": batch.heartbeat,
            "success": lambda: batch.success({"n": 3}),
            "error": lambda: batch.error("worker gave up"),
        }
        await terminate_while_blocked(
            db,
            "SELECT 1 FROM {s}inventory WHERE id = :i FOR UPDATE",
            calls[operation](),
            i=batch.id,
        )
        assert await inventory_state(db) == before
        assert batch.status == "running"
        await calls[operation]()  # once the database answers again, the same call works
        if batch.status == "running":
            await batch.success()
        taken = []
        while nxt := await inv.acquire_batch(source_table=table, job_identifier="j", weight=3):
            taken.append((nxt.range_start, nxt.range_end, nxt.attempt))
            await nxt.success()
        # A failed batch is replayed first; otherwise the job goes on after it.
        assert taken == ([(1, 3, 2), (4, 6, 1)] if operation == "error" else [(4, 6, 1)])
    rows = await db.rows("SELECT range_start, range_end FROM {s}inventory ORDER BY range_start")
    assert [tuple(r) for r in rows] == [(1, 3), (4, 6)]
