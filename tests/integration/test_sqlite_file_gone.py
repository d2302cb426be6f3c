"""A SQLite inventory whose file is deleted or replaced while open raises instead of
recording into a file that no longer exists (issue 13, item 8)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pybatchintory.exceptions import BackendError, InventoryFileGoneError
from tests.conftest import Db


def _path(db: Db) -> Path:
    return Path(db.url.split("///", 1)[1])


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


@pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
async def test_a_deleted_file_fails_every_write_clearly(db: Db, tmp_path: Path) -> None:
    meta_url = f"sqlite+aiosqlite:///{tmp_path / 'meta.sqlite3'}"
    meta = Db("sqlite", meta_url, None, db.engine)
    # The metadata table on a file of its own, so that only the inventory's goes.
    from sqlalchemy.ext.asyncio import create_async_engine

    meta.engine = create_async_engine(meta_url)
    try:
        table = await meta.create_meta(weights=[1] * 6)
    finally:
        await meta.engine.dispose()
    async with db.inventory(meta_url=meta_url) as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        assert batch is not None
        _delete(_path(db))
        with pytest.raises(InventoryFileGoneError, match="deleted"):
            await batch.success()
        assert batch.status == "running"  # nothing was recorded
        with pytest.raises(BackendError, match="deleted"):
            await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        with pytest.raises(BackendError, match="deleted"):
            await batch.heartbeat()


@pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
async def test_a_replaced_file_fails_every_write_clearly(db: Db, tmp_path: Path) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        assert batch is not None
        await batch.success()
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
        assert batch is not None
        path = _path(db)
        copy = tmp_path / "copy.sqlite3"
        shutil.copy(path, copy)
        os.replace(copy, path)  # another file now has the name
        with pytest.raises(InventoryFileGoneError, match="replaced"):
            await batch.success()
        with pytest.raises(InventoryFileGoneError, match="replaced"):
            await inv.acquire_batch(source_table=table, job_identifier="j", weight=2)
