"""Admin commands (issue 9): list a job's batches, release or expire one now, pause and
resume a job, and resets that can be tried (--dry-run), that change nothing when there
is nothing to change, and after which status still counts the batches kept."""

from __future__ import annotations

import pytest

from pybatchintory import BatchLostError, BatchStateError, InvalidArgumentError, Job
from tests.conftest import Db
from tests.integration.test_cli import cli, ok_json


def convert(table: str) -> Job:
    return Job("convert", source_table=table, max_items=2, max_attempts=2)


async def test_batches_lists_by_status_with_the_last_error(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 8)
    async with db.inventory() as inv:
        done = await inv.acquire_batch(convert(table))
        bad = await inv.acquire_batch(convert(table))
        running = await inv.acquire_batch(convert(table))
        assert done and bad and running
        await done.success()
        await bad.error(ValueError("corrupt parquet footer"))

        listed = await inv.batches("convert")
        assert [b.id for b in listed] == [running.id, bad.id, done.id]  # newest first
        [failed] = await inv.batches("convert", status="retry_wait")
        assert failed.id == bad.id and "ValueError: corrupt parquet footer" in (
            failed.last_log or ""
        )
        assert [b.id for b in await inv.batches("convert", status="running")] == [running.id]
        assert await inv.batches("convert", status="out_of_attempts") == []
        assert len(await inv.batches("convert", limit=1)) == 1

        with pytest.raises(InvalidArgumentError, match="status must be one of"):
            await inv.batches("convert", status="broken")
        with pytest.raises(InvalidArgumentError, match="no job 'nojob'"):
            await inv.batches("nojob")

    shown = await cli(db, "batches", "convert", "--status", "failed")
    assert shown.returncode == 0, shown.stderr
    assert "corrupt parquet footer" in shown.stdout and "retry" in shown.stdout
    assert [b["id"] for b in ok_json(await cli(db, "--json", "batches", "convert"))] == [
        running.id,
        bad.id,
        done.id,
    ]


async def test_release_takes_a_batch_from_its_worker_without_using_an_attempt(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(convert(table))
        assert batch is not None
        info = await inv.release_batch("convert", batch.id, reason="worker host died")
        assert info.status == "released" and "worker host died" in (info.last_log or "")
        with pytest.raises(BatchLostError):
            await batch.heartbeat()
        with pytest.raises(BatchLostError):
            await batch.success()

        again = await inv.acquire_batch(convert(table))
        assert again is not None and again.id == batch.id and again.attempt == 2
        assert again.max_attempts == 3  # the released attempt was given back
        await again.success()
        with pytest.raises(BatchStateError, match="succeeded, not running"):
            await inv.release_batch("convert", again.id)


async def test_release_and_expire_refuse_unknown_batches_and_jobs(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(convert(table))
        assert batch is not None
        with pytest.raises(InvalidArgumentError, match="has no batch 999"):
            await inv.expire_batch("convert", 999)
        with pytest.raises(InvalidArgumentError, match="no job 'nojob'"):
            await inv.release_batch("nojob", batch.id)
        with pytest.raises(InvalidArgumentError, match="batch_id must be"):
            await inv.release_batch("convert", 0)
    result = await cli(db, "release", "convert", "999")
    assert result.returncode == 2 and "has no batch 999" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_expire_counts_the_attempt_and_hands_the_batch_out_at_once(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4)
    async with db.inventory(retry_delay_seconds=600) as inv:
        batch = await inv.acquire_batch(convert(table))
        assert batch is not None
        expired = await cli(db, "expire", "convert", str(batch.id), "--reason", "hung")
        assert expired.returncode == 0, expired.stderr
        assert "failed" in expired.stdout and "BatchLostError" in expired.stdout
        with pytest.raises(BatchLostError):
            await batch.heartbeat()
        # The lease is over now, not in 600 s: no backoff for an operator's expiry.
        again = await inv.acquire_batch(convert(table))
        assert again is not None and (again.id, again.attempt, again.max_attempts) == (
            batch.id,
            2,
            2,
        )
        await again.success()
    logs = await db.rows("SELECT status, logging FROM {s}inventory_logs ORDER BY attempt")
    assert [r.status for r in logs] == ["failed", "succeeded"]
    assert "lease expired by an operator: hung" in logs[0].logging


async def test_a_paused_job_hands_out_nothing_and_says_why_until_resumed(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        in_flight = await inv.acquire_batch(convert(table))
        assert in_flight is not None
        assert await inv.pause("convert", reason="upstream bucket migrating") is True
        assert await inv.pause("convert") is False  # already paused

        assert await inv.acquire_batch(convert(table)) is None
        reason = inv.idle_reasons["convert"]
        assert "paused since" in reason and "upstream bucket migrating" in reason
        assert "resume" in reason
        status = await inv.status("convert")
        assert (
            status.paused_at is not None and status.idle_reason and "paused" in status.idle_reason
        )
        [summary] = await inv.jobs()
        assert "paused" in summary.summary

        await in_flight.success()  # a batch in flight finishes normally

        shown = await cli(db, "status", "convert")
        assert shown.returncode == 0 and "paused since" in shown.stdout, shown.stderr
        resumed = await cli(db, "resume", "convert")
        assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
        assert (await inv.status("convert")).paused_at is None
        batch = await inv.acquire_batch(convert(table))
        assert batch is not None and batch.range_start == 3
        await batch.success()
        assert await inv.resume("convert") is False

    paused = await cli(db, "pause", "nojob")
    assert paused.returncode == 2 and "no job 'nojob'" in paused.stderr


async def test_reset_dry_run_no_op_and_kept_batches(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 8)
    async with db.inventory() as inv:
        for _ in range(4):
            batch = await inv.acquire_batch(convert(table))
            assert batch is not None
            await batch.success()
        assert (await inv.status("convert")).succeeded == 4

        # A reset to where the cursor is changes nothing, the generation included.
        same = await inv.reset("convert", 8)
        assert (same.changed, same.generation) == (False, 0)
        assert (await inv.status("convert")).generation == 0

        dry = await inv.reset("convert", 4, dry_run=True)
        assert (dry.dry_run, dry.kept, dry.generation, dry.new_cursor) == (True, 2, 1, 4)
        status = await inv.status("convert")
        assert (status.generation, status.cursor, status.succeeded) == (0, 8, 4)

        done = await inv.reset("convert", 4)
        assert (done.changed, done.kept, done.generation) == (True, 2, 1)
        status = await inv.status("convert")
        # the batches up to 4 stand: counted, and their ids not handed out again
        assert (status.cursor, status.succeeded, status.superseded) == (4, 2, 2)
        batch = await inv.acquire_batch(convert(table))
        assert batch is not None and batch.range_start == 5

    text = await cli(db, "reset", "convert", "--to", "2", "--dry-run", "--force")
    assert text.returncode == 0, text.stderr
    assert "would reset" in text.stdout and "nothing was changed" in text.stdout
    noop = await cli(db, "reset", "convert", "--to", "6", "--force")
    assert noop.returncode == 0 and "nothing changed" in noop.stdout, noop.stderr
