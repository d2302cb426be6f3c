"""A mapping filter binds a job the same whatever order it is written in (issue 13,
item 7): its stored text is canonical, and a text stored by an older version, in the
caller's key order, still matches."""

from __future__ import annotations

import pytest

from pybatchintory.exceptions import JobSourceMismatchError
from tests.conftest import Db


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


async def _table(db: Db) -> str:
    table = await db.create_meta(weights=[1] * 4, category="red")
    await db.add_items("meta", [2] * 4, category="blue")
    await db.add_items("meta", [1] * 4, category="red")
    return table


async def test_the_same_mapping_in_another_key_order_is_the_same_job(db: Db) -> None:
    table = await _table(db)
    one = {"category": "red", "weight": 1}
    other = {"weight": 1, "category": "red"}
    # Two inventories: as two processes, each with its own reflected source.
    async with db.inventory() as a, db.inventory() as b:
        first = await a.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", filter=one, max_items=3
        )
        second = await b.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", filter=other, max_items=3
        )
        assert first is not None and second is not None
        assert first.range_end < second.range_start
        await first.success()
        await second.success()
        status = await b.status("j", filter=other)
        assert status.backlog is not None and status.backlog.items == 2


async def test_an_in_list_in_another_order_is_the_same_job(db: Db) -> None:
    table = await _table(db)
    async with db.inventory() as a, db.inventory() as b:
        first = await a.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="j",
            filter={"category": ["red", "blue"]},
            max_items=2,
        )
        second = await b.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="j",
            filter={"category": ("blue", "red", "blue")},
            max_items=2,
        )
        assert first is not None and second is not None
        await first.success()
        await second.success()
        # Another filter is still another job.
        with pytest.raises(JobSourceMismatchError):
            await b.acquire_batch(
                source_table=table,
                **db.job_options,
                job_identifier="j",
                filter={"category": ["red"]},
            )


async def test_a_filter_text_stored_in_the_old_key_order_still_matches(db: Db) -> None:
    table = await _table(db)
    mapping = {"weight": 1, "category": "red"}
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", filter=mapping, max_items=2
        )
        assert batch is not None
        await batch.success()
    stored = await db.scalar("SELECT filter_text FROM {s}inventory_jobs")
    left, right = stored.split(" AND ")
    assert "category" in left  # canonical: keys sorted
    # What a version before the fix stored for {"weight": 1, "category": "red"}.
    async with db.engine.begin() as conn:
        from sqlalchemy import text

        await conn.execute(
            text(f"UPDATE {db.qualified('inventory_jobs')} SET filter_text = :t"),
            {"t": f"{right} AND {left}"},
        )
    async with db.inventory() as inv:
        for given in (mapping, {"category": "red", "weight": 1}):
            batch = await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="j", filter=given, max_items=2
            )
            assert batch is not None
            await batch.success()
        status = await inv.status("j", filter={"category": "red", "weight": 1})
        assert status.backlog is not None
        with pytest.raises(JobSourceMismatchError):
            await inv.acquire_batch(
                source_table=table,
                **db.job_options,
                job_identifier="j",
                filter={"weight": 1, "category": "blue"},
            )
        with pytest.raises(JobSourceMismatchError):
            await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="j", filter={"weight": 1}
            )
