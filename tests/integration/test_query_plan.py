"""Query plans on PostgreSQL: an acquisition reads the index range it hands out, not the table.

The statements are the ones the library really sends (captured from its engines while it
acquires), explained with their real parameters: ``EXPLAIN (ANALYZE, FORMAT JSON)``.
Nothing here is timed; the plans' shapes and row counts are what must hold.
"""

from __future__ import annotations

import json

import sqlalchemy as sa

from tests.conftest import Db
from tests.plans import Captured, pg_plan, scans_of, sqlite_plan

TABLE_ROWS = 200_000
BATCH = 100


async def _big_table(db: Db, name: str = "big") -> str:
    """A metadata table of 200k items of weight 1, built by SQL and analysed."""
    table = f'"{db.schema}".{name}'
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id bigserial PRIMARY KEY, uri text NOT NULL, "
                "weight double precision NOT NULL, category text)"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {table} SELECT g, 's3://b/' || g, 1, "
                "CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END "
                f"FROM generate_series(1, {TABLE_ROWS}) g"
            )
        )
        await conn.execute(sa.text(f"ANALYZE {table}"))
    return db.qualified(name)


async def test_planning_reads_the_id_index_in_proportion_to_the_batch(pg_only: Db) -> None:
    db = pg_only
    table = await _big_table(db)
    async with db.inventory() as inv:
        # Both URLs name one database, so planning runs on the acquisition's own (inventory)
        # connection; capture both engines.
        with Captured(inv.meta_engine) as meta, Captured(inv.inventory_engine) as own:
            # an incremental batch, a backfill window in the middle of the table, and a
            # run (whose upper bound adds `id <= :upper`), with a filter on the last
            first = await inv.acquire_batch(source_table=table, job_identifier="inc", weight=BATCH)
            middle = await inv.acquire_batch(
                source_table=table,
                job_identifier="bf",
                id_start=150_000,
                id_end=190_000,
                weight=BATCH,
            )
            runs = [
                b
                async for b in inv.acquire_batches(
                    source_table=table,
                    job_identifier="run",
                    weight=BATCH,
                    batch_count=2,
                    filter={"category": "even"},
                )
            ]
        for batch in (first, middle, *runs):
            assert batch is not None and batch.item_count == BATCH
            await batch.success()
        assert middle is not None and middle.range_start == 150_000

        planning = [
            *meta.matching("weight", "ORDER BY", "LIMIT", ".big"),
            *own.matching("weight", "ORDER BY", "LIMIT", ".big"),
        ]
        assert len(planning) >= 4
        for statement, parameters in planning:
            plan = await pg_plan(inv.meta_engine, statement, parameters)
            scans = scans_of(plan, "big")
            assert scans, json.dumps(plan)[:2000]
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), json.dumps(plan)[
                    :2000
                ]
                assert scan["Index Name"] == "big_pkey"
                # A page reads at most its LIMIT of matching rows (twice that when the
                # filter drops every other id); pages grow geometrically only until the
                # batch is full, so a LIMIT never exceeds twice the batch: proportional
                # to the batch, never to the table.
                limit = parameters[-1]
                assert limit <= 2 * (BATCH + 1), (limit, statement)
                assert scan["Actual Rows"] <= limit
                assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 2 * limit + 1


async def _long_history(db: Db, job: str) -> None:
    """PostgreSQL: a long succeeded history of ``job``, far beyond the table's ids
    (disjoint ranges), and batches that ran out of attempts (failed for good, never
    reclaimable); then ANALYZE, so that the planner's choice rests on real statistics."""
    async with db.engine.begin() as conn:
        for base, status, attempt, count in (
            (1_000_000_000, "succeeded", 1, 20_000),
            (2_000_000_000, "failed", 3, 5_000),
        ):
            await conn.execute(
                sa.text(
                    f'INSERT INTO "{db.schema}".inventory (job_identifier, generation, '
                    "processing_start, processing_end, range_start, range_end, weight, item_count, "
                    f"attempt, max_attempts, status) SELECT '{job}', 0, now(), now(), {base} + 2 * g, "
                    f"{base} + 2 * g + 1, 2, 2, {attempt}, 3, '{status}' "
                    f"FROM generate_series(1, {count}) g"
                )
            )
        await conn.execute(sa.text(f'ANALYZE "{db.schema}".inventory'))


async def test_reclaim_and_planning_use_indexes_not_scans(db: Db) -> None:
    """The reclaim lookup uses a partial index and a planning page the id index, on both
    backends, or their cost grows with the job's history and the table. SQLite's planner
    (without ANALYZE) matches partial indexes more narrowly than PostgreSQL's."""
    table = await db.create_meta(weights=[1] * 20)
    if db.kind == "postgresql":
        # Enough rows, analysed, that an index is the planner's choice and not a whim.
        await db.add_items("meta", [1] * 20_000)
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(f'ANALYZE "{db.schema}".meta'))
    async with db.inventory() as inv:
        first = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
        assert first is not None
        await first.success()
        if db.kind == "postgresql":
            await _long_history(db, "j")
        with Captured(inv.inventory_engine) as backend, Captured(inv.meta_engine) as meta:
            again = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
            assert again is not None and (again.range_start, again.range_end) == (6, 10)
            await again.success()

        reclaims = backend.matching("'running'", "lease_expires_at <", "ORDER BY", "LIMIT")
        assert len(reclaims) == 1, backend.statements
        # planning runs on the acquisition's own connection (both URLs name one database)
        pages = [
            *meta.matching("meta.id, ", "meta.weight", "ORDER BY", "LIMIT"),
            *backend.matching("meta.id, ", "meta.weight", "ORDER BY", "LIMIT"),
        ]
        assert pages, (meta.statements, backend.statements)
        if db.kind == "sqlite":
            detail = await sqlite_plan(inv.inventory_engine, *reclaims[0])
            assert "USING INDEX ix_inventory_unfinished" in detail, detail
            for page in pages:
                detail = await sqlite_plan(inv.meta_engine, *page)
                assert "USING INTEGER PRIMARY KEY" in detail or "USING INDEX" in detail, detail
            return
        plan = await pg_plan(inv.inventory_engine, *reclaims[0])
        scans = scans_of(plan, "inventory")
        assert [s["Node Type"] for s in scans] in (["Index Scan"], ["Index Only Scan"]), plan
        assert scans[0]["Index Name"] == "ix_inventory_reclaimable"
        # Only reclaimable batches are read: none here, whatever the history's length,
        # succeeded or failed for good.
        assert scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0) == 0
        for page in pages:
            plan = await pg_plan(inv.meta_engine, *page)
            scans = scans_of(plan, "meta")
            assert scans, json.dumps(plan)[:2000]
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), json.dumps(plan)[
                    :2000
                ]
                assert scan["Index Name"] == "meta_pkey"


async def test_coverage_reads_the_batches_in_its_window_only(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=10)
        assert batch is not None
        await batch.success()
        # 20,000 succeeded batches of ten ids each after the table's ids, and as many of
        # an earlier generation over the same ids (a reset's history).
        prefix = f'"{db.schema}".' if db.schema else ""
        async with db.engine.begin() as conn:
            for generation in (0, 1):
                await conn.execute(
                    sa.text(
                        f"WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) "
                        f"INSERT INTO {prefix}inventory (job_identifier, generation, "
                        "processing_start, processing_end, range_start, range_end, weight, "
                        "item_count, attempt, max_attempts, status) SELECT 'j', :gen, "
                        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 10 * n + 1, 10 * n + 10, 10, 10, 1, 3, "
                        "'succeeded' FROM g"
                    )
                    if db.kind == "sqlite"
                    else sa.text(
                        f"INSERT INTO {prefix}inventory (job_identifier, generation, "
                        "processing_start, processing_end, range_start, range_end, weight, "
                        "item_count, attempt, max_attempts, status) SELECT 'j', :gen, now(), now(), "
                        "10 * g + 1, 10 * g + 10, 10, 10, 1, 3, 'succeeded' "
                        "FROM generate_series(1, 20000) g"
                    ),
                    {"gen": generation},
                )
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
        with Captured(inv.inventory_engine) as captured:
            coverage = await inv.coverage("j", id_start=100_005, id_end=100_104)
        assert [(s.state, s.range_start, s.range_end, s.batches) for s in coverage.segments] == [
            ("succeeded", 100_005, 100_104, 11)
        ]
        reads = captured.matching("range_start", "ORDER BY")
        assert len(reads) == 2  # the batch reaching into the window, and those inside it
        for statement, parameters in reads:
            if db.kind == "sqlite":
                detail = await sqlite_plan(inv.inventory_engine, statement, parameters)
                assert (
                    "USING INDEX ix_inventory_job_range (job_identifier=? AND range_start" in detail
                ), detail
                continue
            plan = await pg_plan(inv.inventory_engine, statement, parameters)
            scans = scans_of(plan, "inventory")
            assert scans, json.dumps(plan)[:2000]
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), json.dumps(plan)[
                    :2000
                ]
                # both generations' batches in the window, not the job's 40,000
                assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 30, (
                    json.dumps(plan)[:2000]
                )
