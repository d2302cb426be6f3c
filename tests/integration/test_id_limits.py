"""Ids are 64-bit end to end: a job over ids up to 2**63 - 1 finishes (issue 13, item 5).

PostgreSQL refused to record a batch ending at 2**63 - 1 ("bigint out of range" from
the exclusion constraint's int8range, which adds 1 to the inclusive end); SQLite
recorded it, and then every acquisition raised a raw OverflowError on cursor + 1.
"""

from __future__ import annotations

import sqlalchemy as sa

from tests.conftest import Db, meta_table_def

TOP = 2**63 - 1
BOTTOM = -(2**63)


async def _meta_with_ids(db: Db, ids: list[int]) -> str:
    md = sa.MetaData(schema=db.schema)
    table = meta_table_def(md, "meta")
    async with db.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        await conn.execute(
            sa.insert(table), [{"id": i, "uri": f"s3://b/{i}", "weight": 1} for i in ids]
        )
    return db.qualified("meta")


async def test_a_job_reaching_the_highest_id_finishes(db: Db) -> None:
    table = await _meta_with_ids(db, [TOP - 4, TOP - 2, TOP - 1, TOP])
    acquire = {"source_table": table, "job_identifier": "j", "weight": 2}
    async with db.inventory() as inv:
        ranges = []
        while (batch := await inv.acquire_batch(**acquire)) is not None:
            ranges.append((batch.range_start, batch.range_end, [r["id"] for r in batch.items]))
            await batch.success()
        assert ranges == [(TOP - 4, TOP - 2, [TOP - 4, TOP - 2]), (TOP - 1, TOP, [TOP - 1, TOP])]
        # Finished for good: no error on later calls either.
        assert await inv.acquire_batch(**acquire) is None
        assert [b async for b in inv.acquire_batches(**acquire)] == []
        status = await inv.status("j")
        assert status.cursor == TOP
        backlog = await inv.backlog(table, "j")
        assert backlog.items == 0


async def test_the_highest_id_alone_and_the_lowest_id(db: Db) -> None:
    table = await _meta_with_ids(db, [BOTTOM, BOTTOM + 1, 0, TOP])
    async with db.inventory() as inv:
        seen = []
        while (
            batch := await inv.acquire_batch(source_table=table, job_identifier="j", max_items=1)
        ) is not None:
            seen.append((batch.range_start, batch.range_end))
            await batch.success()
        assert seen == [(BOTTOM, BOTTOM), (BOTTOM + 1, BOTTOM + 1), (0, 0), (TOP, TOP)]
        assert await inv.acquire_batch(source_table=table, job_identifier="j") is None


async def test_a_failed_batch_at_the_highest_id_is_retried_then_the_job_ends(db: Db) -> None:
    table = await _meta_with_ids(db, [TOP])
    acquire = {"source_table": table, "job_identifier": "j"}
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(**acquire)
        assert batch is not None and batch.range_end == TOP
        await batch.error("first attempt fails")
        again = await inv.acquire_batch(**acquire)
        assert again is not None and (again.id, again.attempt) == (batch.id, 2)
        await again.success()
        assert await inv.acquire_batch(**acquire) is None
        # A downstream job over the upstream's batches reaches the end as well.
        down = await inv.acquire_batch(source_job="j", job_identifier="down")
        assert down is not None
        await down.success()
        assert await inv.acquire_batch(source_job="j", job_identifier="down") is None
