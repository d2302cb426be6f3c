"""Acquisitions cancelled while their connection is being opened leave no connection
unclosed and nothing for asyncio to report (issue 13: the aiosqlite connection left
unclosed, which Python 3.13 reports; asyncpg's "Future exception was never retrieved").

Every acquisition here opens a new connection (NullPool), and is cancelled a few
milliseconds in, so that many cancellations land inside the driver's connect."""

from __future__ import annotations

import asyncio
import gc
import random
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.conftest import Db, cancel_after

# sqlite3 connections opened while a test watches (sqlite3.connect/handle, an audit
# event of Python 3.10+). Held strongly, so that a connection nobody closed is still
# there to be seen, rather than closed quietly by its deallocation (before 3.13 that
# leak is silent).
_watched: list[sqlite3.Connection] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _watched is not None and event == "sqlite3.connect/handle":
        _watched.append(args[0])


sys.addaudithook(_audit)  # an audit hook cannot be removed: it watches only when asked


@contextmanager
def sqlite_connections_opened() -> Iterator[list[sqlite3.Connection]]:
    global _watched
    _watched = opened = []
    try:
        yield opened
    finally:
        _watched = None


def still_open(connections: list[sqlite3.Connection]) -> int:
    count = 0
    for connection in connections:
        try:
            connection.total_changes  # noqa: B018 - raises once the connection is closed
        except sqlite3.ProgrammingError:
            continue
        count += 1
        connection.close()  # (so that the test itself leaves nothing behind)
    return count


@pytest.mark.timeout(240)
async def test_acquisitions_cancelled_while_connecting_leave_nothing_behind(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 500)
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2, "lease_seconds": 600}
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    # What asyncio's default handler would log: a future failed that no one awaited.
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    rng = random.Random(7)
    outcomes = {"cancelled": 0, "acquired": 0}
    try:
        with sqlite_connections_opened() as opened:
            async with db.inventory(engine_options={"poolclass": "NullPool"}) as inv:
                for _ in range(150):
                    acquisition = inv.acquire_batch(**acquire, load_items=False)
                    await cancel_after(acquisition, rng.uniform(0, 0.006), outcomes)
            gc.collect()  # an unretrieved future is reported when it is collected
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert outcomes["cancelled"] > 30, outcomes
    assert not reported, [str(context.get("message")) for context in reported[:3]]
    if db.kind == "sqlite":
        assert opened, "the watch saw no sqlite3 connection"
        assert still_open(opened) == 0, (
            "a connection opened for a cancelled acquisition stayed open"
        )
    # Nothing a cancellation interrupted is lost: the job's batches are all finished.
    assert not await db.scalar("SELECT count(*) FROM {s}inventory WHERE status = 'running'")
