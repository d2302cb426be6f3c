"""Batch.iter_items() after Inventory.close() raises instead of reopening a connection
that then stays open (issue 13, item 11)."""

from __future__ import annotations

import pytest

from pybatchintory.exceptions import InventoryNotOpenError
from tests.conftest import Db


async def test_iterating_items_after_close_raises_and_opens_nothing(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 5)
    inv = db.inventory()
    await inv.open()
    batch = await inv.acquire_batch(source_table=table, job_identifier="j", load_items=False)
    assert batch is not None
    assert len([row async for row in batch.iter_items()]) == 5  # while open: fine
    meta = inv.meta_engine
    await inv.close()
    with pytest.raises(InventoryNotOpenError):
        async for _ in batch.iter_items():
            pass
    with pytest.raises(InventoryNotOpenError):
        async for _ in batch.iter_item_chunks(2):
            pass
    pool = meta.pool
    assert (pool.checkedin(), pool.checkedout()) == (0, 0)  # type: ignore[attr-defined]
