"""SQLite: a garbage collection while a finish waits for the write lock does not stop
the event loop (issue 13: the Python 3.10 livelock of two inventories on one file).

On Python 3.10 a statement that failed ("database is locked") stayed attached to its
cursor; the collector, on the event loop's thread, reset it, which waits for the
connection's mutex, held by the connection's thread for as long as a finish of that
connection sits in SQLite's busy handler. Here one pooled connection serves a failing
acquisition and then a finish, while a connection of the test holds the write lock."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time

import pytest

from tests.conftest import Db


@pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
async def test_collecting_garbage_while_a_finish_waits_for_the_lock_does_not_stall(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 10)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2}
    path = db.url.split(":///", 1)[1]
    one_connection = {"pool_size": 1, "max_overflow": 0}
    # Unfixed, the collection below waits out most of the busy timeout (9 s or more of
    # these 10); a collection of the test process's heap takes well under 3 s even on a
    # loaded machine.
    async with db.inventory(busy_timeout_seconds=10, engine_options=one_connection) as inv:
        batch = await inv.acquire_batch(**acquire)
        assert batch is not None
        holder = sqlite3.connect(path, isolation_level=None)
        gc.disable()  # the failed statements' garbage waits for the collection below
        try:
            holder.execute("BEGIN IMMEDIATE")
            # Its BEGIN IMMEDIATE fails again and again (it backs off in between).
            acquiring = asyncio.ensure_future(inv.acquire_batch(**acquire))
            await asyncio.sleep(0.4)
            # The finish takes the one connection and waits in SQLite's busy handler.
            finishing = asyncio.ensure_future(batch.success())
            await asyncio.sleep(0.4)
            started = time.monotonic()
            gc.collect()
            stalled = time.monotonic() - started
        finally:
            gc.enable()
            holder.execute("COMMIT")
            holder.close()
        await asyncio.wait_for(finishing, 30)
        taken = await asyncio.wait_for(acquiring, 30)
        assert taken is not None and (taken.range_start, taken.range_end) == (3, 4)
        await taken.success()
    assert stalled < 3.0, f"the event loop stood still for {stalled:.1f} s"
    assert batch.status == "succeeded"
