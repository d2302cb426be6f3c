"""Recursive jobs: a downstream job consumes an upstream job's succeeded batches, never
moving past one that is still running or failed (the frontier), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from pybatchintory import Inventory
from tests.conftest import Db


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


async def _drain(inv: Inventory, upstream: str, job: str, weight: float) -> list[list[int]]:
    """Acquire and succeed every batch the job can take now; return each batch's item ids."""
    taken = []
    while batch := await inv.acquire_batch(source_job=upstream, job_identifier=job, weight=weight):
        taken.append([item["id"] for item in batch.items])
        await batch.success({"rows": len(batch.items)})
    return taken


async def test_a_three_job_chain_waits_for_a_failed_upstream_batch_then_takes_it_once(
    db: Db,
) -> None:
    raw = await db.create_meta("raw", weights=[1] * 12)
    async with db.inventory() as inv:
        # convert: four batches of three files; the second fails on its only attempt.
        convert = []
        for _ in range(4):
            batch = await inv.acquire_batch(
                source_table=raw,
                **db.job_options,
                job_identifier="convert",
                weight=3,
                max_attempts=1,
            )
            assert batch is not None
            convert.append(batch)
        c1, c2, c3, c4 = convert
        await c1.success({"converted": "part-1"})
        await c2.error(RuntimeError("corrupt file"))
        await c3.success()
        await c4.success()

        # aggregate stops at the frontier: c3 and c4 succeeded, but c2 lies before them.
        assert await _drain(inv, "convert", "aggregate", weight=100) == [[c1.id]]
        status = await inv.status("aggregate")
        assert status.frontier_batch_id == c2.id
        assert status.backlog is not None and status.backlog.items == 0
        first_agg = (
            await db.rows("SELECT id FROM {s}inventory WHERE job_identifier = 'aggregate'")
        )[0][0]
        assert await _drain(inv, "aggregate", "report", weight=100) == [[first_agg]]

        # The failed upstream batch succeeds on retry: same range, second attempt.
        assert await inv.retry("convert") == [c2.id]
        again = await inv.acquire_batch(
            source_table=raw, **db.job_options, job_identifier="convert", weight=3
        )
        assert again is not None
        assert (again.id, again.attempt, again.range_start, again.range_end) == (c2.id, 2, 4, 6)
        await again.success()
        assert (await inv.status("aggregate")).backlog is not None

        later = await _drain(inv, "convert", "aggregate", weight=6)
        assert later == [[c2.id, c3.id], [c4.id]]
        assert await _drain(inv, "aggregate", "report", weight=1) != []

        # Neither skipped nor duplicated, at every level of the chain.
        aggregated = Counter(i for ids in [[c1.id], *later] for i in ids)
        assert aggregated == Counter({c.id: 1 for c in convert})
        report_items = await db.rows(
            "SELECT range_start, range_end FROM {s}inventory WHERE job_identifier = 'report' ORDER BY id"
        )
        agg_ids = [
            r[0]
            for r in await db.rows(
                "SELECT id FROM {s}inventory WHERE job_identifier = 'aggregate' ORDER BY id"
            )
        ]
        covered = [i for start, end in report_items for i in agg_ids if start <= i <= end]
        assert sorted(covered) == agg_ids

        # The metadata rows behind the report's batches: every raw file exactly once.
        report = await db.rows("SELECT id FROM {s}inventory WHERE job_identifier = 'report'")
        files: Counter[int] = Counter()
        for (report_id,) in report:
            batch_row = (
                await db.rows(
                    "SELECT range_start, range_end FROM {s}inventory WHERE id = :i", i=report_id
                )
            )[0]
            fake = _BatchRef("report", batch_row[0], batch_row[1])
            async for row in inv.iter_source_items(fake):  # type: ignore[arg-type]
                files[row["id"]] += 1
        assert files == Counter({i: 1 for i in range(1, 13)})


class _BatchRef:
    """The three attributes iter_source_items reads from a batch."""

    def __init__(self, job: str, start: int, end: int) -> None:
        self.job_identifier, self.range_start, self.range_end = job, start, end


async def test_a_running_upstream_batch_holds_the_downstream_until_it_succeeds(db: Db) -> None:
    raw = await db.create_meta("raw", weights=[1] * 6)
    async with db.inventory() as inv:
        slow = await inv.acquire_batch(
            source_table=raw, **db.job_options, job_identifier="up", weight=2
        )
        fast = await inv.acquire_batch(
            source_table=raw, **db.job_options, job_identifier="up", weight=2
        )
        assert slow is not None and fast is not None
        await fast.success()
        assert await inv.acquire_batch(source_job="up", job_identifier="down") is None

        await slow.success()
        batch = await inv.acquire_batch(source_job="up", job_identifier="down")
        assert batch is not None
        assert [item["id"] for item in batch.items] == [slow.id, fast.id]
        # The downstream's items are the upstream batch rows, with what the upstream produced.
        assert [item["range_start"] for item in batch.items] == [1, 3]
        assert batch.weight == 4
        rows = [row["id"] async for row in inv.iter_source_items(batch)]
        assert rows == [1, 2, 3, 4]
        await batch.success()


async def test_a_downstream_batch_with_a_filtered_root_needs_the_root_filter(db: Db) -> None:
    raw = await db.create_meta("raw", weights=[1] * 3, category="a")
    await db.add_items("raw", [1] * 3, category="b")
    async with db.inventory() as inv:
        up = await inv.acquire_batch(
            source_table=raw, **db.job_options, job_identifier="up", filter={"category": "b"}
        )
        assert up is not None and up.item_count == 3
        await up.success()
        down = await inv.acquire_batch(source_job="up", job_identifier="down")
        assert down is not None
        rows = [r["id"] async for r in inv.iter_source_items(down, filter={"category": "b"})]
        assert rows == [4, 5, 6]
        trusted = [r["id"] async for r in inv.iter_source_items(down, trust_stored_filter=True)]
        assert trusted == [4, 5, 6]
        await down.success()


@pytest.mark.parametrize("meta_db", ["postgresql"], indirect=True)
async def test_concurrent_downstream_acquisitions_do_not_starve_a_small_pool(db: Db) -> None:
    # A downstream job plans on the inventory engine. Planning on a second pooled
    # connection while waiters hold the others used to wait out the pool timeout.
    table = await db.create_meta(weights=[1] * 12)
    async with db.inventory(pool_size=1) as inv:
        while up := await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="up", weight=1
        ):
            await up.success()

        async def take() -> int:
            batch = await inv.acquire_batch(source_job="up", job_identifier="down", weight=2)
            assert batch is not None
            await batch.success()
            return batch.item_count

        counts = await asyncio.wait_for(asyncio.gather(*(take() for _ in range(4))), 20)
    assert sum(counts) == 8
