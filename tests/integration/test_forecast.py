"""Forecast (batches and ETA from the job's own recent pace) in status, the API and the
CLI, on SQLite and PostgreSQL; and its read stays bounded however long the history."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from pybatchintory import Forecast, Inventory, Job
from tests.conftest import Db
from tests.integration.test_cli import cli, ok_json
from tests.plans import Captured, pg_plan, scans_of, sqlite_plan

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


async def _history(inv: Inventory, table: str) -> Job:
    """Job 'j', one item of weight 10 a batch: four succeeded batches, two at a time in
    [0 s, 10 s] and two in [10 s, 20 s] (weight 40 in 20 s busy, 2 at once), one failed;
    16 items (weight 160) left."""
    job = Job("j", source_table=table, weight=10)
    batches = [await inv.acquire_batch(job, load_items=False) for _ in range(5)]
    assert all(batches)
    for batch in batches[:4]:
        assert batch is not None
        await batch.success()
    b = inv.storage.tables.batches
    async with inv.inventory_engine.begin() as conn:
        for i, batch in enumerate(batches[:4]):
            assert batch is not None
            start = T0 + timedelta(seconds=10 * (i // 2))
            await conn.execute(
                sa.update(b)
                .where(b.c.id == batch.id)
                .values(processing_start=start, processing_end=start + timedelta(seconds=10))
            )
    assert batches[4] is not None
    await batches[4].error("failed batches do not count")
    return job


async def test_status_forecasts_the_backlog_at_the_recent_pace(db: Db) -> None:
    table = await db.create_meta(weights=[10] * 21)
    async with db.inventory() as inv:
        job = await _history(inv, table)
        status = await inv.status("j")
        f = status.forecast
        assert isinstance(f, Forecast)
        assert (f.sample_batches, f.basis, f.batches) == (4, "history", 16)
        assert (f.weight_per_second, f.items_per_second, f.concurrency) == (2.0, 0.2, 2.0)
        assert (f.mean_batch_seconds, f.eta_seconds) == (10.0, 80.0)
        assert f.finishes_at is not None
        assert timedelta(0) < f.finishes_at - datetime.now(timezone.utc) <= timedelta(seconds=80)
        direct = await inv.forecast(job)
        assert direct.as_dict() | {"finishes_at": None} == f.as_dict() | {"finishes_at": None}
        assert (await inv.forecast("j", id_end=8)).batches == 3  # what if: ids 6..8 only
        # A job never run: the budget alone, no ETA.
        fresh = await inv.forecast(Job("fresh", source_table=table, weight=30))
        assert (fresh.basis, fresh.batches, fresh.eta_seconds) == ("budget", 7, None)

    result = ok_json(await cli(db, "status", "j", "--json"))
    assert result["forecast"]["batches"] == 16 and result["forecast"]["eta_seconds"] == 80.0
    text = await cli(db, "status", "j")
    assert text.returncode == 0, text.stderr
    line = next(li for li in text.stdout.splitlines() if li.startswith("forecast"))
    assert "~16 batches, ETA 1m 20s" in line and "2.0 at once (4 recent batches)" in line, line


async def test_the_forecast_reads_the_last_batches_only(db: Db) -> None:
    """20,000 succeeded batches of history: the forecast reads 100 of them, on the
    (job_identifier, range_start) index."""
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=10)
        assert batch is not None
        await batch.success()
        prefix = f'"{db.schema}".' if db.schema else ""
        columns = (
            f"INSERT INTO {prefix}inventory (job_identifier, generation, processing_start, "
            "processing_end, range_start, range_end, weight, item_count, attempt, "
            "max_attempts, status) "
        )
        async with db.engine.begin() as conn:
            if db.kind == "sqlite":
                await conn.execute(
                    sa.text(
                        "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g "
                        f"WHERE n < 20000) {columns} SELECT 'j', 0, '2024-03-01 00:00:00.000000', "
                        "'2024-03-01 00:00:10.000000', 10 * n + 1, 10 * n + 10, 10, 10, 1, 3, "
                        "'succeeded' FROM g"
                    )
                )
            else:
                await conn.execute(
                    sa.text(
                        f"{columns} SELECT 'j', 0, now() - interval '10 seconds', now(), "
                        "10 * g + 1, 10 * g + 10, 10, 10, 1, 3, 'succeeded' "
                        "FROM generate_series(1, 20000) g"
                    )
                )
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
        with Captured(inv.inventory_engine) as captured:
            forecast = await inv.forecast("j")
        assert forecast.sample_batches == 100
        reads = captured.matching("processing_start", "ORDER BY", "range_start")
        assert len(reads) == 1, reads
        statement, parameters = reads[0]
        if db.kind == "sqlite":
            detail = await sqlite_plan(inv.inventory_engine, statement, parameters)
            assert "USING INDEX ix_inventory_job_range (job_identifier=?)" in detail, detail
            assert "TEMP B-TREE" not in detail, detail  # no sort: the index's order
            return
        plan = await pg_plan(inv.inventory_engine, statement, parameters)
        scans = scans_of(plan, "inventory")
        assert [s["Node Type"] for s in scans] == ["Index Scan"], json.dumps(plan)[:2000]
        assert scans[0]["Index Name"] == "ix_inventory_job_range"
        assert scans[0]["Actual Rows"] <= 100, json.dumps(plan)[:2000]


async def test_backlog_and_forecast_for_a_progress_bar(db: Db) -> None:
    table = await db.create_meta(weights=[5] * 8)
    async with db.inventory() as inv:
        job = Job("j", source_table=table, weight=10)
        first = await inv.acquire_batch(job, load_items=False)
        assert first is not None
        await first.success()
        b = inv.storage.tables.batches
        async with inv.inventory_engine.begin() as conn:
            await conn.execute(
                sa.update(b).values(processing_start=T0, processing_end=T0 + timedelta(seconds=5))
            )
        backlog, forecast = await inv.backlog_and_forecast(job)
    # weight 10 in 5 s: the 30 left take 3 batches and 15 s
    assert (backlog.weight, forecast.batches, forecast.eta_seconds) == (30.0, 3, 15.0)
