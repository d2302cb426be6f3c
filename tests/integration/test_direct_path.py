"""PostgreSQL's hot path on asyncpg itself (pybatchintory._direct, issue 12 point 5).

Acquisitions and finishes run their SQLAlchemy-built statements on asyncpg directly,
with transactions that SQLAlchemy's pool does not know of. What that must not change:
errors are the same (translated, retried, wrapped), a connection whose transaction
was cut off never goes back to the pool in a transaction, a dead one is dropped, and
whoever watches the engine's statements (echo, listeners) still sees them all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from asyncpg.transaction import Transaction  # type: ignore[import-untyped]

from pybatchintory import Inventory, Job
from pybatchintory._direct import _CACHES
from pybatchintory.exceptions import BackendError
from tests.conftest import Db


def _direct_statements(inv: Inventory) -> int:
    """How many statements the direct path compiled for the inventory's engine."""
    return len(_CACHES.get(inv.storage.backend.engine.sync_engine, {}))


async def _lock_job_row(db: Db, job: str) -> Any:
    """A connection holding the job's row lock (what a slow acquisition holds)."""
    conn = await db.engine.connect()
    await conn.begin()
    await conn.execute(
        sa.text(f'SELECT 1 FROM "{db.schema}".inventory_jobs WHERE job_identifier = :j FOR UPDATE'),
        {"j": job},
    )
    return conn


async def _idle_in_transaction(db: Db) -> int:
    """The library's sessions on this test's tables left inside a transaction."""
    return int(
        await db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pybatchintory' "
            "AND datname = current_database() AND state LIKE 'idle in transaction%' "
            "AND position(:schema in query) > 0",
            schema=db.schema,
        )
    )


async def test_acquire_and_finish_run_on_asyncpg_directly(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
        assert batch is not None and [i["id"] for i in batch.items] == [1, 2, 3]
        await batch.success()
        assert _direct_statements(inv) >= 4  # lock, reclaim lookup, plan, record, finish
        status = await inv.status("j")
    assert (status.succeeded, status.running, status.cursor) == (1, 0, 3)


async def test_listeners_on_the_engine_still_see_every_statement(pg_only: Db) -> None:
    # OpenTelemetry's SQLAlchemy instrumentation and echo=True listen this way: with a
    # listener, the hot path goes through SQLAlchemy so that they miss nothing.
    db = pg_only
    table = await db.create_meta(weights=[1] * 4)
    seen: list[str] = []
    async with db.inventory() as inv:
        engine = inv.storage.backend.engine.sync_engine
        sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        assert batch is not None
        await batch.success()
        assert _direct_statements(inv) == 0
    assert any("inventory_jobs" in s and "ON CONFLICT" in s for s in seen)  # the job lock
    assert any(s.startswith("WITH new_batch") for s in seen)  # the record
    assert any(s.startswith("WITH finished") for s in seen)  # the finish


@asynccontextmanager
async def _waiting_for_the_job_lock(
    db: Db, inv: Inventory, table: str
) -> AsyncIterator[tuple[asyncio.Future[Any], int]]:
    """An acquisition of job "j" (its first batch done) waiting for the job's row lock,
    which another session holds until the block ends; and the waiting session's pid."""
    first = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
    assert first is not None
    await first.success()
    holder = await _lock_job_row(db, "j")
    try:
        waiting = asyncio.ensure_future(
            inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        )
        yield waiting, await db.blocked_session_pid()
    finally:
        await holder.rollback()
        await holder.close()


async def test_a_cancelled_acquisition_leaves_no_transaction_open(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory(pool_size=1) as inv:
        async with _waiting_for_the_job_lock(db, inv, table) as (waiting, _):
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await _idle_in_transaction(db) == 0
        # the one pooled connection is usable: the next acquisition takes id 2
        second = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert second is not None and (second.range_start, second.range_end) == (2, 2)
        await second.success()


async def test_a_killed_session_is_a_backend_error_and_is_not_pooled_again(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory(pool_size=1) as inv:
        async with _waiting_for_the_job_lock(db, inv, table) as (waiting, pid):
            await db.scalar("SELECT pg_terminate_backend(:pid)", pid=pid)
            with pytest.raises(BackendError, match="acquiring a batch of job 'j' failed"):
                await asyncio.wait_for(waiting, 30)
        second = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert second is not None and (second.range_start, second.range_end) == (2, 2)
        await second.success()
    rows = await db.rows("SELECT range_start FROM {s}inventory ORDER BY range_start")
    assert [r[0] for r in rows] == [1, 2]  # the killed acquisition recorded nothing


async def test_conflicts_under_serializable_are_retried_on_the_direct_path(pg_only: Db) -> None:
    # Under SERIALIZABLE, every acquisition that waited for the job's row fails with
    # 40001 once the holder commits; the translated error must reach retry_transient.
    db = pg_only
    table = await db.create_meta(weights=[1] * 40)
    async with db.inventory(isolation_level="SERIALIZABLE") as inv:

        async def drain() -> list[tuple[int, int]]:
            got = []
            while batch := await inv.acquire_batch(
                source_table=table, job_identifier="j", weight=1
            ):
                got.append((batch.range_start, batch.range_end))
                await batch.success()
            return got

        results = await asyncio.gather(*(drain() for _ in range(4)))
        assert _direct_statements(inv) > 0
    taken = sorted(r for result in results for r in result)
    assert taken == [(i, i) for i in range(1, 41)]  # every id once, none lost


async def test_a_batch_taken_while_waiting_for_the_job_lock_is_not_taken_twice(
    pg_only: Db,
) -> None:
    # The job's lock statement also looks for a batch to reclaim, in the snapshot it took
    # before waiting for the lock: a batch the lock's holder took meanwhile looks free
    # there. The fenced take must find it gone and look again (docs/design.md, step 2).
    db = pg_only
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        failed = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert failed is not None
        await failed.error(RuntimeError("boom"))  # reclaimable at once (no backoff here)
        holder = await _lock_job_row(db, "j")
        try:
            waiting = asyncio.ensure_future(
                inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
            )
            await db.blocked_session_pid()
            # the holder takes the failed batch over, as another worker's acquisition would
            await holder.execute(
                sa.text(
                    f"UPDATE \"{db.schema}\".inventory SET status = 'running', attempt = 2, "
                    "lease_expires_at = now() + interval '1 hour' WHERE id = :id"
                ),
                {"id": failed.id},
            )
            await holder.commit()
            got = await asyncio.wait_for(waiting, 30)
        finally:
            await holder.close()
        assert got is not None and (got.range_start, got.attempt) == (2, 1)  # a new range
        await got.success()
    row = (await db.rows("SELECT status, attempt FROM {s}inventory WHERE id = :i", i=failed.id))[0]
    assert (row.status, row.attempt) == ("running", 2)  # still the holder's, untouched


async def test_an_acquisition_cancelled_during_begin_leaves_no_transaction_behind(
    pg_only: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # BEGIN is one short round trip, so a cancellation is made to land in it: asyncpg's
    # Transaction.start schedules the task's cancel() and then runs as is, against the
    # real server. A BEGIN cut there used to leave the pooled session inside a
    # transaction, in which every later acquisition and finish silently nested.
    db = pg_only
    table = await db.create_meta(weights=[1] * 4)
    original = Transaction.start
    armed = [False]

    async def start(self: Transaction) -> None:
        if armed[0]:
            armed[0] = False
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().call_soon(task.cancel)
        await original(self)

    monkeypatch.setattr(Transaction, "start", start)
    async with db.inventory(pool_size=1) as inv:
        first = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert first is not None
        await first.success()
        armed[0] = True
        with pytest.raises(asyncio.CancelledError):
            await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert not armed[0]  # the cancellation was scheduled inside BEGIN
        assert await _idle_in_transaction(db) == 0
        second = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
        assert second is not None and second.range_start == 2
        await second.success()
    # committed for everyone else: another worker sees both and goes on at id 3
    async with db.inventory() as other:
        third = await asyncio.wait_for(
            other.acquire_batch(source_table=table, job_identifier="j", weight=1), 30
        )
        assert third is not None and third.range_start == 3
        await third.success()


async def test_after_a_server_restart_one_call_fails_and_the_pool_heals(pg_only: Db) -> None:
    # Every pooled session dies at once (a restart, a failover): as on SQLAlchemy's own
    # path, the first call that meets a dead session fails with BackendError, and the
    # pool replaces that connection and every older one.
    db = pg_only
    table = await db.create_meta(weights=[1] * 40)
    async with db.inventory(pool_size=4) as inv:
        opened = await asyncio.gather(
            *(inv.acquire_batch(source_table=table, job_identifier="j", weight=1) for _ in range(4))
        )
        for batch in opened:
            assert batch is not None
            await batch.success()
        await db.scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'pybatchintory' AND datname = current_database()"
        )
        failures: list[BaseException] = []
        for _ in range(10):
            try:
                batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=1)
            except Exception as exc:
                failures.append(exc)
                continue
            assert batch is not None
            await batch.success()
    assert len(failures) <= 1, failures
    assert all(isinstance(f, BackendError) for f in failures), failures


async def test_items_of_every_common_type_come_back_as_sqlalchemy_reads_them(
    pg_only: Db,
) -> None:
    # Items are read by asyncpg itself where SQLAlchemy would not convert a column's
    # values, and through SQLAlchemy where it would (an ARRAY, say): either way a
    # worker gets what a plain SQLAlchemy read of the rows gives.
    db = pg_only
    t = f'"{db.schema}".typed'
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {t} (id bigserial PRIMARY KEY, weight float8, doc jsonb, "
                "raw json, amount numeric(12, 3), at timestamptz, day date, ref uuid, "
                "tags text[], counts int[], addr inet, flag boolean, blob bytea, span interval)"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {t} (weight, doc, raw, amount, at, day, ref, tags, counts, addr, "
                "flag, blob, span) VALUES (1.5, '{\"a\": [1, 2]}', '{\"b\": null}', 12.345, "
                "'2024-03-01 12:00:00+02', '2024-03-01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', "
                "'{x,y}', '{1,2}', '10.0.0.1', true, '\\x0102', '1 day 2 hours'), "
                "(2, 'null', '[]', NULL, NULL, NULL, NULL, '{}', NULL, NULL, false, NULL, NULL)"
            )
        )
    async with db.engine.connect() as conn:
        table = await conn.run_sync(
            lambda sync: sa.Table("typed", sa.MetaData(), schema=db.schema, autoload_with=sync)
        )
        rows = [dict(r._mapping) for r in await conn.execute(sa.select(table).order_by(table.c.id))]
    arrays = {"tags", "counts"}
    plain = [c for c in rows[0] if c not in arrays]
    async with db.inventory() as inv:
        for name, columns, direct in (("plain", plain, True), ("all", list(rows[0]), False)):
            job = Job(name, source_table=f"{db.schema}.typed", item_columns=columns)
            assert (await inv.storage.source(job))._plain_items is direct
            batch = await inv.acquire_batch(job)
            assert batch is not None
            await batch.success()
            expected = [{c: row[c] for c in columns} for row in rows]
            assert batch.items == expected, name
            got_types = [type(v) for v in batch.items[0].values()]
            assert got_types == [type(v) for v in expected[0].values()], name
