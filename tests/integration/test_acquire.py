"""Acquisition semantics on SQLite, PostgreSQL and (metadata) MariaDB: incremental, backfill, budgets, filters."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from pybatchintory import JobSourceMismatchError
from tests.conftest import Db


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


async def test_incremental_continues_after_the_highest_id_taken_and_sees_new_rows(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        first = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="inc", weight=4
        )
        assert first is not None
        assert (first.range_start, first.range_end, first.item_count, first.weight) == (1, 4, 4, 4)
        assert [item["id"] for item in first.items] == [1, 2, 3, 4]
        # a floating-point column gives floats everywhere (MySQL's DOUBLE included)
        assert [type(item["weight"]) for item in first.items] == [float] * 4
        await first.success()

        second = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="inc", weight=4
        )
        assert second is not None and (second.range_start, second.range_end) == (5, 8)
        await second.success()
        third = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="inc", weight=4
        )
        assert third is not None and (third.range_start, third.range_end) == (9, 10)
        await third.success()
        assert (
            await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="inc", weight=4
            )
            is None
        )

        await db.add_items("meta", [1, 1, 1])
        later = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="inc", weight=4
        )
        assert later is not None and (later.range_start, later.range_end) == (11, 13)
        await later.success()


async def test_backfill_walks_its_window_in_chunks_then_returns_none(db: Db) -> None:
    table = await db.create_meta(weights=[2] * 100)
    async with db.inventory() as inv:
        ranges = []
        while (
            batch := await inv.acquire_batch(
                source_table=table,
                **db.job_options,
                job_identifier="bf",
                id_start=10,
                id_end=50,
                weight=10,
            )
        ) is not None:
            ranges.append((batch.range_start, batch.range_end))
            assert batch.weight <= 10
            await batch.success()
    assert ranges[0] == (10, 14)
    assert ranges[-1][1] == 50
    covered = [i for start, end in ranges for i in range(start, end + 1)]
    assert covered == list(range(10, 51))


async def test_an_item_heavier_than_the_budget_forms_a_batch_alone(db: Db) -> None:
    table = await db.create_meta(weights=[3, 3, 50, 3, 3])
    async with db.inventory() as inv:
        got = []
        while batch := await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=7
        ):
            got.append((batch.range_start, batch.range_end, batch.weight))
            await batch.success()
    assert got == [(1, 2, 6), (3, 3, 50), (4, 5, 6)]


async def test_max_items_bounds_the_count_and_unbounded_weight_takes_the_rest(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 7)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", max_items=3
        )
        assert batch is not None and batch.item_count == 3 and len(batch.items) == 3
        await batch.success()
        rest = await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
        assert rest is not None and (rest.range_start, rest.range_end, rest.item_count) == (4, 7, 4)
        await rest.success()


async def test_weight_and_max_items_together_stop_at_whichever_comes_first(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 20)
    async with db.inventory() as inv:
        by_count = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=10, max_items=3
        )
        assert by_count is not None and by_count.item_count == 3
        await by_count.success()
        by_weight = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=2, max_items=5
        )
        assert by_weight is not None and by_weight.item_count == 2
        await by_weight.success()


async def test_batches_larger_than_one_page_are_planned_across_pages(db: Db) -> None:
    table = await db.create_meta(weights=[0.5] * 3000)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="big", weight=1000
        )
        assert batch is not None
        assert (batch.range_start, batch.range_end, batch.item_count) == (1, 2000, 2000)
        assert len(batch.items) == 2000
        await batch.success()


async def test_mapping_filter_restricts_items_and_accepts_lists(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4, category="a")
    await db.add_items("meta", [1] * 4, category="b")
    await db.add_items("meta", [1] * 4, category="c")
    async with db.inventory() as inv:
        only_b = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="b", filter={"category": "b"}
        )
        assert only_b is not None
        assert {i["category"] for i in only_b.items} == {"b"} and only_b.item_count == 4
        assert (only_b.range_start, only_b.range_end) == (5, 8)
        await only_b.success()
        a_or_c = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="ac",
            filter={"category": ["a", "c"]},
        )
        assert a_or_c is not None
        assert [i["id"] for i in a_or_c.items] == [1, 2, 3, 4, 9, 10, 11, 12]
        assert a_or_c.item_count == 8
        await a_or_c.success()


async def test_expression_and_callable_filters(db: Db) -> None:
    table = await db.create_meta(weights=[1, 5, 1, 5, 1])
    async with db.inventory() as inv:
        light = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="light",
            filter=lambda t: t.c.weight < 2,
        )
        assert light is not None and [i["id"] for i in light.items] == [1, 3, 5]
        await light.success()
        heavy = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="heavy",
            filter=sa.column("weight") > 2,
        )
        assert heavy is not None and [i["id"] for i in heavy.items] == [2, 4]
        await heavy.success()
        texty = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="texty",
            filter=sa.text("weight = 5"),
        )
        assert texty is not None and texty.item_count == 2
        await texty.success()


async def test_item_columns_choose_what_items_carry(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", item_columns=["id", "uri"]
        )
        assert batch is not None
        assert batch.items[0] == {"id": 1, "uri": "s3://bucket/meta/0"}
        await batch.success()


async def test_a_job_reused_with_another_source_or_filter_raises_and_writes_nothing(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    other = await db.create_meta("other", weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="job", max_items=1
        )
        assert batch is not None
        await batch.success()
        with pytest.raises(JobSourceMismatchError, match="job 'job' is bound to table"):
            await inv.acquire_batch(source_table=other, **db.job_options, job_identifier="job")
        with pytest.raises(JobSourceMismatchError):
            await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="job", filter={"category": "x"}
            )
    assert await db.scalar("SELECT count(*) FROM {s}inventory") == 1


async def test_acquire_batches_is_lazy_bounded_and_ends_on_a_growing_table(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        taken = []
        async for batch in inv.acquire_batches(
            source_table=table, **db.job_options, job_identifier="j", weight=2, batch_count=3
        ):
            taken.append(batch.range_start)
            await batch.success()
        assert taken == [1, 3, 5]
        # The run's upper bound is fixed at its start: rows added meanwhile wait for the next run.
        seen = []
        async for batch in inv.acquire_batches(
            source_table=table, **db.job_options, job_identifier="j", weight=2
        ):
            seen.append(batch.range_end)
            await db.add_items("meta", [1, 1])
            await batch.success()
        assert seen == [8, 10]


async def test_job_identifer_alias_is_accepted(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifer="alias_job"
        )
        assert batch is not None and batch.job_identifier == "alias_job"
        await batch.success()


async def test_backend_tables_hold_the_specified_columns(db: Db) -> None:
    table = await db.create_meta(weights=[1, 2])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
        assert batch is not None
        await batch.success({"rows_written": 2})
    row = (
        await db.rows(
            "SELECT job_identifier, range_start, range_end, weight, attempt, status, "
            "processing_start, processing_end FROM {s}inventory"
        )
    )[0]
    assert tuple(row[:6]) == ("j", 1, 2, 3, 1, "succeeded")
    assert row.processing_start is not None and row.processing_end is not None
    log = (await db.rows("SELECT id, attempt, status, processing_end FROM {s}inventory_logs"))[0]
    assert tuple(log[:3]) == (batch.id, 1, "succeeded") and log.processing_end is not None


async def test_inline_filters_do_not_grow_the_source_cache_without_bound(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        for i in range(80):
            batch = await inv.acquire_batch(
                source_table=table,
                **db.job_options,
                job_identifier=f"j{i}",
                filter=lambda t: t.c.weight > 0,
            )
            assert batch is not None
            await batch.success()
        assert len(inv.storage._sources) <= 64
