"""Edge cases found in review: each test failed before its fix."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from pybatchintory import (
    ConfigurationError,
    Inventory,
    InventoryNotOpenError,
    SyncInventory,
    configure,
)
from pybatchintory.config import hide_password
from tests.conftest import Db

SECRET = "s3cret-in-query"


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_concurrent_downstream_acquisitions_do_not_starve_a_small_pool(db: Db) -> None:
    # A downstream job plans on the inventory engine. Planning on a second pooled
    # connection while waiters hold the others used to wait out the pool timeout.
    table = await db.create_meta(weights=[1] * 12)
    async with db.inventory(pool_size=1) as inv:
        while (up := await inv.acquire_batch(source_table=table, job_identifier="up", weight=1)):
            await up.success()

        async def take() -> int:
            batch = await inv.acquire_batch(source_job="up", job_identifier="down", weight=2)
            assert batch is not None
            await batch.success()
            return batch.item_count

        counts = await asyncio.wait_for(asyncio.gather(*(take() for _ in range(4))), 20)
    assert sum(counts) == 8


async def test_async_with_leaves_an_outcome_the_body_recorded_alone(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", max_items=1)
        assert batch is not None
        async with batch:
            await batch.success({"rows": 1})
        assert batch.status == "succeeded" and batch.result == {"rows": 1}

        failing = await inv.acquire_batch(source_table=table, job_identifier="j", max_items=1)
        assert failing is not None
        with pytest.raises(ValueError, match="the body's own error"):
            async with failing:
                await failing.error("recorded by hand")
                raise ValueError("the body's own error")
    logs = await db.rows("SELECT status, logging FROM {s}inventory_logs ORDER BY id")
    assert [(row.status, row.logging) for row in logs] == [
        ("succeeded", None),
        ("failed", "recorded by hand"),
    ]


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


def test_a_misspelled_setting_is_refused_not_ignored() -> None:
    with pytest.raises(ConfigurationError, match="unknown setting.*max_atempts"):
        Inventory("sqlite+aiosqlite:///x.sqlite3", max_atempts=7)
    with pytest.raises(ConfigurationError, match="inventroy_url"):
        configure(inventroy_url="sqlite+aiosqlite:///elsewhere.sqlite3")


def test_a_password_in_the_query_string_is_hidden() -> None:
    url = f"postgresql+asyncpg://etl@db.example.com/lake?password={SECRET}&ssl=require"
    assert SECRET not in hide_password(url) and "ssl=require" in hide_password(url)
    assert SECRET not in repr(Inventory(url))


async def test_inline_filters_do_not_grow_the_source_cache_without_bound(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        for i in range(80):
            batch = await inv.acquire_batch(
                source_table=table, job_identifier=f"j{i}", filter=lambda t: t.c.weight > 0
            )
            assert batch is not None
            await batch.success()
        assert len(inv.storage._sources) <= 64


async def test_a_closed_inventory_refuses_clearly_and_its_batches_cannot_reopen_it(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    inv = db.inventory()
    with pytest.raises(InventoryNotOpenError, match="async with Inventory"):
        await inv.acquire_batch(source_table=table, job_identifier="j")
    await inv.open()
    batch = await inv.acquire_batch(source_table=table, job_identifier="j", max_items=1)
    assert batch is not None
    await inv.close()
    with pytest.raises(InventoryNotOpenError, match="closed"):
        await batch.success()
    with pytest.raises(InventoryNotOpenError):
        await batch.heartbeat()


def test_a_sync_batch_of_a_closed_sync_inventory_raises_our_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'closed.sqlite3'}"
    with SyncInventory(url) as inv:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'closed.sqlite3'}")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE meta (id INTEGER PRIMARY KEY, weight REAL)"))
            conn.execute(sa.text("INSERT INTO meta (weight) VALUES (1)"))
        engine.dispose()
        batch = inv.acquire_batch(source_table="meta", job_identifier="j")
        assert batch is not None
    with pytest.raises(InventoryNotOpenError, match="SyncInventory was closed"):
        batch.success()
