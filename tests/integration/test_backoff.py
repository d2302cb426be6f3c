"""Retry with backoff (issue 9): a failed batch waits before it is handed out again,
exponentially with jitter; meanwhile other ranges proceed; status says when it is due."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from pybatchintory import InvalidArgumentError, Job
from pybatchintory.batch import backoff_seconds
from tests.conftest import Db


def test_the_backoff_doubles_with_each_attempt_with_jitter_and_a_ceiling() -> None:
    for attempt in range(1, 8):
        ceiling = min(2.0 * 2 ** (attempt - 1), 3600)
        delays = [backoff_seconds(2.0, attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jitter: failed together, not back together
    assert backoff_seconds(2.0, 40) <= 3600
    assert backoff_seconds(0, 5) == 0


async def test_a_failed_batch_waits_its_backoff_while_other_ranges_proceed(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    job = Job("convert", source_table=table, max_items=2, retry_delay_seconds=1.0)
    async with db.inventory() as inv:
        first = await inv.acquire_batch(job)
        assert first is not None
        failed_at = datetime.now(timezone.utc)
        await first.error(RuntimeError("disk full"))

        # Not handed out again at once: the next ranges come first.
        second = await inv.acquire_batch(job)
        assert second is not None and (second.range_start, second.range_end) == (3, 4)
        await second.success()

        status = await inv.status("convert")
        assert status.retryable == 1 and status.next_retry_at is not None
        # attempt 1 with a base of 1 s: due between 0.5 and 1 s after the failure
        slack = timedelta(seconds=0.5)
        assert failed_at - slack <= status.next_retry_at <= failed_at + timedelta(seconds=1) + slack
        [waiting] = await inv.batches("convert", status="retry_wait")
        assert waiting.id == first.id and waiting.retry_after == status.next_retry_at

        third = await inv.acquire_batch(job)
        assert third is not None and third.range_start == 5
        await third.success()
        assert await inv.acquire_batch(job) is None  # only the waiting batch is left
        assert f"failed batch {first.id} waits for its retry until" in inv.idle_reasons["convert"]

        await asyncio.sleep(
            max(0.0, (status.next_retry_at - datetime.now(timezone.utc)).total_seconds()) + 0.3
        )
        again = await inv.acquire_batch(job)
        assert again is not None and (again.id, again.attempt) == (first.id, 2)
        await again.success()
        assert (await inv.status("convert")).next_retry_at is None


async def test_the_setting_is_the_default_and_zero_retries_at_once(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    job = Job("convert", source_table=table, max_items=2)
    async with db.inventory(retry_delay_seconds=30) as inv:
        first = await inv.acquire_batch(job)
        assert first is not None
        await first.error("boom")
        [waiting] = await inv.batches("convert", status="retry_wait")
        assert waiting.retry_after is not None
        wait = (waiting.retry_after - datetime.now(timezone.utc)).total_seconds()
        assert 10 < wait <= 30
        other = await inv.acquire_batch(job)
        assert other is not None and other.id != first.id
        await other.success()
        assert await inv.acquire_batch(job) is None


@pytest.mark.parametrize("value", [-1, float("nan"), 3601, "2", True])
def test_a_wrong_retry_delay_is_refused(value: object) -> None:
    with pytest.raises(InvalidArgumentError, match="retry_delay_seconds"):
        Job("convert", source_table="t", retry_delay_seconds=value)  # type: ignore[arg-type]
