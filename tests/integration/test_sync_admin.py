"""The sync client's administration methods mirror the async ones."""

from __future__ import annotations

import anyio
import pytest

from pybatchintory import InvalidArgumentError, JobStatus, SyncInventory
from tests.conftest import Db


async def test_sync_status_jobs_trace_retry_and_reset(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)

    def scenario() -> None:
        with SyncInventory(**db.settings()) as inv:
            ok = inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
            assert ok is not None
            ok.success()
            bad = inv.acquire_batch(
                source_table=table, job_identifier="j", weight=3, max_attempts=1
            )
            assert bad is not None
            bad.error("broken file")

            status = inv.status("j")
            assert isinstance(status, JobStatus)
            assert (status.cursor, status.succeeded, status.failed) == (6, 1, 1)
            assert [job.job_identifier for job in inv.jobs()] == ["j"]
            traced = inv.trace(table, 5)
            assert [(t.batch_id, t.status) for t in traced] == [(bad.id, "failed")]
            assert inv.backlog(source_table=table, job_identifier="j").items == 0

            assert inv.retry("j") == [bad.id]
            again = inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
            assert again is not None and (again.id, again.attempt) == (bad.id, 2)
            again.success()

            inv.reset("j", to_id=3)
            redo = inv.acquire_batch(source_table=table, job_identifier="j", weight=3)
            assert redo is not None and (redo.range_start, redo.range_end) == (4, 6)
            redo.success()

    await anyio.to_thread.run_sync(scenario)


async def test_sync_downstream_batch_streams_the_rows_behind_it(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 5)

    def scenario() -> None:
        with SyncInventory(**db.settings()) as inv:
            for batch in inv.acquire_batches(source_table=table, job_identifier="up", weight=2):
                batch.success({"files": batch.item_count})
            down = inv.acquire_batch(source_job="up", job_identifier="down")
            assert down is not None
            assert [u["result"] for u in down.items] == [{"files": 2}, {"files": 2}, {"files": 1}]
            rows = list(inv.iter_source_items(down, chunk_size=2))
            assert [row["id"] for row in rows] == [1, 2, 3, 4, 5]
            down.success()

    await anyio.to_thread.run_sync(scenario)


async def test_a_source_job_refuses_table_only_arguments(db: Db) -> None:
    async with db.inventory() as inv:
        with pytest.raises(InvalidArgumentError, match="apply to a source table"):
            await inv.acquire_batch(source_job="up", job_identifier="down", item_columns=["id"])
