"""A job defined once: a Job on every entry point, its definition stored with the
inventory, so that status, backlog and the CLI need only its name."""

from __future__ import annotations

import dataclasses

import anyio
import pytest
import sqlalchemy as sa

from pybatchintory import Backlog, Job, JobSourceMismatchError, SyncInventory
from tests.conftest import Db
from tests.integration.test_cli import cli, ok_json


async def _sized_table(db: Db) -> str:
    """A metadata table whose weight column is ``size_bytes``, with two kinds of file."""
    md = sa.MetaData(schema=db.schema)
    files = sa.Table(
        "files",
        md,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("path", sa.String(100), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
    )
    async with db.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        await conn.execute(
            sa.insert(files),
            [
                {"path": f"/data/{i}", "kind": "json" if i % 2 else "csv", "size_bytes": 100 * i}
                for i in range(1, 11)
            ],
        )
    return db.qualified("files")


async def test_a_job_drives_acquisition_backlog_and_status(db: Db) -> None:
    table = await _sized_table(db)
    job = Job(
        "json_summary",
        source_table=table,
        weight_column="size_bytes",
        filter={"kind": "json"},
        weight=400,
    )
    async with db.inventory() as inv:
        assert await inv.backlog(job) == Backlog(5, 2500.0)  # json: ids 1, 3, 5, 7, 9
        batch = await inv.acquire_batch(job)
        # json rows are the odd ids 1, 3, 5, ...: 100 + 300 fit in 400
        assert batch is not None and (batch.range_start, batch.range_end, batch.weight) == (
            1,
            3,
            400,
        )
        await batch.success()

        # by name only: the stored definition brings the weight column and the filter
        status = await inv.status("json_summary")
        assert status.backlog is not None
        assert (status.backlog.items, status.backlog.weight) == (3, 2100.0)  # ids 5, 7, 9
        assert status.definition is not None and status.definition["weight_column"] == "size_bytes"
        assert await inv.backlog("json_summary") == status.backlog

        # a per-call budget is an override, not another job
        small = await inv.acquire_batch(job, weight=1)
        assert small is not None and (small.range_start, small.range_end) == (5, 5)
        await small.success()
        assert (await inv.status("json_summary")).definition["weight"] == 1.0  # type: ignore[index]
        taken = [b async for b in inv.acquire_batches(job, batch_count=5)]
        assert [(b.range_start, b.range_end) for b in taken] == [(7, 7), (9, 9)]
        for b in taken:
            await b.success()

        # another filter under the same name is refused, as before
        with pytest.raises(JobSourceMismatchError, match="use another job identifier"):
            await inv.acquire_batch(dataclasses.replace(job, filter={"kind": "csv"}))

    out = ok_json(await cli(db, "--meta-url", db.url, "status", "json_summary", "--json"))
    assert out["backlog"] == {"items": 0, "weight": 0.0}
    assert out["definition"]["filter"] == {"kind": "json"}


async def test_status_by_name_on_the_cli_reports_items_and_weight(db: Db) -> None:
    table = await _sized_table(db)
    job = Job("sizes", source_table=table, weight_column="size_bytes", filter={"kind": "csv"})
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(job, max_items=1)
        assert batch is not None and batch.range_start == 2
        await batch.success()
    shown = await cli(db, "--meta-url", db.url, "status", "sizes")
    assert shown.returncode == 0, shown.stderr
    # csv rows after id 2: 4, 6, 8, 10 -> 4 items, 2800 bytes
    assert "4 items, weight 2,800" in shown.stdout
    assert "weight column" in shown.stdout and "size_bytes" in shown.stdout


async def test_status_without_the_metadata_database_reports_the_inventorys_counts(db: Db) -> None:
    table = await _sized_table(db)
    job = Job("offline", source_table=table, weight_column="size_bytes", max_items=3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(job)
        assert batch is not None
        await batch.success()
    unreachable = "postgresql+asyncpg://nobody@127.0.0.1:1/nowhere"
    async with db.inventory(meta_url=unreachable) as inv:
        status = await inv.status("offline")
    assert (status.succeeded, status.cursor) == (1, 3)
    assert status.backlog is None
    assert status.backlog_note is not None and "could not be read" in status.backlog_note


async def test_sync_face_acquires_with_a_job_and_overrides(db: Db) -> None:
    table = await _sized_table(db)
    job = Job("sync_job", source_table=table, weight_column="size_bytes", weight=300)

    def body() -> list[tuple[int, int]]:
        with SyncInventory(**db.settings()) as inv:
            first = inv.acquire_batch(job)
            assert first is not None
            first.process(lambda items: len(items))
            taken = [(first.range_start, first.range_end)]
            for batch in inv.acquire_batches(job, batch_count=2, max_items=1):
                batch.success()
                taken.append((batch.range_start, batch.range_end))
            assert inv.status("sync_job").succeeded == 3
            return taken

    taken = await anyio.to_thread.run_sync(body)
    assert taken == [(1, 2), (3, 3), (4, 4)]  # 100 + 200 fit in 300; then one item each


async def test_one_connection_per_acquisition_when_both_urls_are_one_database(db: Db) -> None:
    table = await _sized_table(db)
    checkouts: list[int] = []
    async with db.inventory(pool_size=1) as inv:  # both URLs are the test database
        assert inv.storage.same_database
        # horizon=None: the exact horizon reads PostgreSQL's lock table on the metadata
        # engine (autocommit, a snapshot of its own) at the tail; planning is what counts
        job = Job(
            "one_conn", source_table=table, weight_column="size_bytes", max_items=2, horizon=None
        )
        first = await inv.acquire_batch(job, load_items=False)  # reflects the table once
        assert first is not None
        sa.event.listen(inv.meta_engine.sync_engine, "checkout", lambda *a: checkouts.append(1))
        for _ in range(3):
            batch = await inv.acquire_batch(job, load_items=False)
            assert batch is not None
            await batch.success()
    assert checkouts == [], "planning borrowed a second connection from the metadata engine"
