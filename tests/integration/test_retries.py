"""Retry policy: failed batches are replayed up to max_attempts, then stay failed until
``retry()``; transient 40001/40P01 conflicts are retried transparently (issue 3, tests
7 and 9)."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from pybatchintory import InvalidArgumentError, Inventory
from tests.conftest import Db


async def fail(inv: Inventory, table: str, expect: tuple[int, int, int], **acquire: object) -> int:
    """Acquire, check (range_start, range_end, attempt), record a failure; return the id."""
    batch = await inv.acquire_batch(source_table=table, job_identifier="j", **acquire)
    assert batch is not None
    assert (batch.range_start, batch.range_end, batch.attempt) == expect
    await batch.error(RuntimeError(f"boom {batch.attempt}"))
    return batch.id


async def test_a_failed_batch_is_replayed_before_new_ranges_until_its_attempts_are_used(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        first = await fail(inv, table, (1, 3, 1), weight=3, max_attempts=2)
        # Same range, next attempt, before the new range 4..6.
        with caplog.at_level(logging.WARNING, logger="pybatchintory"):
            assert await fail(inv, table, (1, 3, 2), weight=3, max_attempts=2) == first
        assert any("last attempt" in r.getMessage() for r in caplog.records)

        # Used up: the job moves on, and the failed batch stays failed.
        rest = await inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
        assert rest is not None and (rest.range_start, rest.range_end, rest.attempt) == (4, 6, 1)
        await rest.success()
        assert await inv.acquire_batch(source_table=table, job_identifier="j", weight=3) is None
        assert await db.scalar("SELECT status FROM {s}inventory WHERE id = :i", i=first) == "failed"

        assert await inv.retry("j") == [first]
        replay = await inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
        assert replay is not None and (replay.id, replay.range_end, replay.attempt) == (first, 3, 3)
        await replay.success()

    logs = await db.rows(
        "SELECT attempt, status, logging FROM {s}inventory_logs WHERE id = :i ORDER BY attempt",
        i=first,
    )
    assert [(log.attempt, log.status) for log in logs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "succeeded"),
    ]
    assert "RuntimeError: boom 1" in logs[0].logging and "boom 2" in logs[1].logging


async def test_max_attempts_comes_from_settings_and_retry_can_name_one_batch(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory(max_attempts=1) as inv:
        a = await fail(inv, table, (1, 2, 1), weight=2)
        b = await fail(inv, table, (3, 4, 1), weight=2)
        assert await inv.acquire_batch(source_table=table, job_identifier="j", weight=2) is None
        assert await inv.retry("j", batch_id=b) == [b]
        with pytest.raises(InvalidArgumentError, match="still has attempts left"):
            await inv.retry("j", batch_id=b)  # it has an attempt left already
        again = await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        assert again is not None and (again.id, again.attempt) == (b, 2)
        await again.success()
        assert await inv.acquire_batch(source_table=table, job_identifier="j", weight=2) is None
        assert await inv.retry("j") == [a]
        with pytest.raises(InvalidArgumentError, match="no job 'other job'"):
            await inv.retry("other job")
    statuses = await db.rows("SELECT id, status, max_attempts FROM {s}inventory ORDER BY id")
    assert [(r.id, r.status) for r in statuses] == [(a, "failed"), (b, "succeeded")]


# -- injected serialization failures and deadlocks (PostgreSQL) ---------------------------


async def inject_errors(db: Db, sqlstate: str, times: int) -> None:
    """Make the next ``times`` writes to the batches table raise ``sqlstate``.

    The count is a sequence: ``nextval`` is not rolled back with the refused statement,
    so every refusal counts, and the test can see how many writes were tried.
    """
    s = db.schema
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f"CREATE SEQUENCE {s}.injected"))
        await conn.execute(
            sa.text(
                f"""
                CREATE FUNCTION {s}.inject() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('{s}.injected') <= {int(times)} THEN
                        RAISE EXCEPTION 'injected conflict' USING ERRCODE = '{sqlstate}';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            sa.text(
                f"CREATE TRIGGER inject BEFORE INSERT OR UPDATE ON {s}.inventory "
                f"FOR EACH ROW EXECUTE FUNCTION {s}.inject()"
            )
        )


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.parametrize("sqlstate", ["40001", "40P01"])
async def test_injected_serialization_failures_and_deadlocks_are_retried(
    db: Db, sqlstate: str
) -> None:
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        await inject_errors(db, sqlstate, times=3)
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=4)
        assert batch is not None and (batch.range_start, batch.range_end, batch.attempt) == (
            1,
            4,
            1,
        )
        assert await db.scalar("SELECT last_value FROM {s}injected") == 4  # 3 refused, 1 passed

        async with db.engine.begin() as conn:  # three more for the finish
            await conn.execute(sa.text(f"ALTER SEQUENCE {db.schema}.injected RESTART"))
        await batch.success()
        assert await db.scalar("SELECT last_value FROM {s}injected") == 4

        nxt = await inv.acquire_batch(source_table=table, job_identifier="j", weight=4)
        assert nxt is not None and (nxt.range_start, nxt.range_end) == (5, 8)
        await nxt.success()
    rows = await db.rows(
        "SELECT range_start, range_end, attempt, status FROM {s}inventory ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [(1, 4, 1, "succeeded"), (5, 8, 1, "succeeded")]
    assert await db.scalar("SELECT count(*) FROM {s}inventory_logs") == 2
    assert await db.scalar("SELECT cursor FROM {s}inventory_jobs") == 8


async def test_release_hands_a_batch_back_without_using_an_attempt(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", max_attempts=1)
        assert batch is not None
        await batch.release()
        again = await inv.acquire_batch(source_table=table, job_identifier="j", max_attempts=1)
        assert again is not None
        assert (again.id, again.range_end, again.attempt) == (batch.id, 3, 2)
        await again.success()
    assert await db.scalar("SELECT status FROM {s}inventory") == "succeeded"
