"""Query plans on PostgreSQL: an acquisition reads the index range it hands out, not the table.

The statements are the ones the library really sends (captured from its engines while it
acquires), explained with their real parameters: ``EXPLAIN (ANALYZE, FORMAT JSON)``.
Nothing here is timed; the plans' shapes and row counts are what must hold.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import Db

TABLE_ROWS = 200_000
BATCH = 100


async def _big_table(db: Db, name: str = "big") -> str:
    """A metadata table of 200k items of weight 1, built by SQL and analysed."""
    table = f'"{db.schema}".{name}'
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(
            f"CREATE TABLE {table} (id bigserial PRIMARY KEY, uri text NOT NULL, "
            "weight double precision NOT NULL, category text)"
        ))
        await conn.execute(sa.text(
            f"INSERT INTO {table} SELECT g, 's3://b/' || g, 1, "
            "CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END "
            f"FROM generate_series(1, {TABLE_ROWS}) g"
        ))
        await conn.execute(sa.text(f"ANALYZE {table}"))
    return db.qualified(name)


class Captured:
    """Every statement an engine sends, with its parameters, while attached."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine.sync_engine
        self.statements: list[tuple[str, Any]] = []

    def _record(self, conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.statements.append((statement, parameters))

    def __enter__(self) -> Captured:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: Any) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def matching(self, *fragments: str) -> list[tuple[str, Any]]:
        return [(s, p) for s, p in self.statements if all(f in s for f in fragments)]


async def _explain(engine: AsyncEngine, statement: str, parameters: Any) -> dict[str, Any]:
    async with engine.connect() as conn:
        raw = (
            await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
        ).scalar_one()
    plan = json.loads(raw) if isinstance(raw, str) else raw
    return plan[0]["Plan"]  # type: ignore[no-any-return]


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _scans_of(plan: dict[str, Any], relation: str) -> list[dict[str, Any]]:
    return [n for n in _nodes(plan) if n.get("Relation Name") == relation]


async def test_planning_reads_the_id_index_in_proportion_to_the_batch(pg_only: Db) -> None:
    db = pg_only
    table = await _big_table(db)
    async with db.inventory() as inv:
        with Captured(inv.meta_engine) as meta:
            # an incremental batch, a backfill window in the middle of the table, and a
            # run (whose upper bound adds `id <= :upper`), with a filter on the last
            first = await inv.acquire_batch(source_table=table, job_identifier="inc", weight=BATCH)
            middle = await inv.acquire_batch(
                source_table=table, job_identifier="bf", id_start=150_000, id_end=190_000,
                weight=BATCH,
            )
            runs = [b async for b in inv.acquire_batches(
                source_table=table, job_identifier="run", weight=BATCH, batch_count=2,
                filter={"category": "even"},
            )]
        for batch in (first, middle, *runs):
            assert batch is not None and batch.item_count == BATCH
            await batch.success()
        assert middle is not None and middle.range_start == 150_000

        planning = meta.matching("weight", "ORDER BY", "LIMIT", ".big")
        assert len(planning) >= 4
        for statement, parameters in planning:
            plan = await _explain(inv.meta_engine, statement, parameters)
            scans = _scans_of(plan, "big")
            assert scans, json.dumps(plan)[:2000]
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), json.dumps(plan)[:2000]
                assert scan["Index Name"] == "big_pkey"
                # A page reads at most its LIMIT of matching rows (twice that when the
                # filter drops every other id); pages grow geometrically only until the
                # batch is full, so a LIMIT never exceeds twice the batch: proportional
                # to the batch, never to the table.
                limit = parameters[-1]
                assert limit <= 2 * (BATCH + 1), (limit, statement)
                assert scan["Actual Rows"] <= limit
                assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 2 * limit + 1


async def test_reclaim_uses_the_partial_index_of_reclaimable_batches(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 50)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
        assert batch is not None
        await batch.success()
        # A long succeeded history of the job, far beyond the table's ids (disjoint ranges).
        async with db.engine.begin() as conn:
            await conn.execute(sa.text(
                f'INSERT INTO "{db.schema}".inventory (job_identifier, generation, '
                "processing_start, processing_end, range_start, range_end, weight, item_count, "
                "attempt, max_attempts, status) SELECT 'j', 0, now(), now(), 1000000000 + 2 * g, "
                "1000000000 + 2 * g + 1, 2, 2, 1, 3, 'succeeded' FROM generate_series(1, 20000) g"
            ))
            # ...and batches that ran out of attempts: failed for good, never reclaimable.
            await conn.execute(sa.text(
                f'INSERT INTO "{db.schema}".inventory (job_identifier, generation, '
                "processing_start, processing_end, range_start, range_end, weight, item_count, "
                "attempt, max_attempts, status) SELECT 'j', 0, now(), now(), 2000000000 + 2 * g, "
                "2000000000 + 2 * g + 1, 2, 2, 3, 3, 'failed' FROM generate_series(1, 5000) g"
            ))
            await conn.execute(sa.text(f'ANALYZE "{db.schema}".inventory'))
        with Captured(inv.inventory_engine) as backend:
            again = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
            assert again is not None
            await again.success()

        reclaims = backend.matching("'running'", "lease_expires_at <", "ORDER BY", "LIMIT")
        assert len(reclaims) == 1, backend.statements
        plan = await _explain(inv.inventory_engine, *reclaims[0])
        scans = _scans_of(plan, "inventory")
        assert [s["Node Type"] for s in scans] in (["Index Scan"], ["Index Only Scan"]), plan
        assert scans[0]["Index Name"] == "ix_inventory_reclaimable"
        # Only reclaimable batches are read: none here, whatever the history's length,
        # succeeded or failed for good.
        assert scans[0]["Actual Rows"] + scans[0].get("Rows Removed by Filter", 0) == 0


async def test_sqlite_reclaim_and_planning_use_indexes_not_scans(db: Db) -> None:
    """SQLite's planner matches partial indexes more narrowly than PostgreSQL's: the
    reclaim lookup must still use one, or its cost grows with the job's history."""
    if db.kind != "sqlite":
        return  # PostgreSQL: the EXPLAIN ANALYZE tests above
    table = await db.create_meta(weights=[1] * 20)
    async with db.inventory() as inv:
        first = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
        assert first is not None
        await first.success()
        with Captured(inv.inventory_engine) as backend, Captured(inv.meta_engine) as meta:
            again = await inv.acquire_batch(source_table=table, job_identifier="j", weight=5)
            assert again is not None
            await again.success()
        (reclaim,) = backend.matching("'running'", "lease_expires_at <", "ORDER BY", "LIMIT")
        pages = meta.matching("SELECT meta.id, meta.weight", "ORDER BY", "LIMIT")
        assert pages, meta.statements
        async with inv.inventory_engine.connect() as conn:
            steps = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {reclaim[0]}", reclaim[1])).all()
        detail = " ".join(str(step[-1]) for step in steps)
        assert "USING INDEX ix_inventory_unfinished" in detail, detail
        async with inv.meta_engine.connect() as conn:
            steps = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {pages[0][0]}", pages[0][1])).all()
        detail = " ".join(str(step[-1]) for step in steps)
        assert "USING INTEGER PRIMARY KEY" in detail or "USING INDEX" in detail, detail


async def test_coverage_reads_the_batches_in_its_window_only(pg_only: Db) -> None:
    db = pg_only
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, job_identifier="j", weight=10)
        assert batch is not None
        await batch.success()
        # 20,000 succeeded batches of ten ids each after the table's ids, and as many of
        # an earlier generation over the same ids (a reset's history).
        async with db.engine.begin() as conn:
            for generation in (0, 1):
                await conn.execute(sa.text(
                    f'INSERT INTO "{db.schema}".inventory (job_identifier, generation, '
                    "processing_start, processing_end, range_start, range_end, weight, "
                    "item_count, attempt, max_attempts, status) SELECT 'j', :gen, now(), now(), "
                    "10 * g + 1, 10 * g + 10, 10, 10, 1, 3, 'succeeded' "
                    "FROM generate_series(1, 20000) g"
                ), {"gen": generation})
            await conn.execute(sa.text(f'ANALYZE "{db.schema}".inventory'))
        with Captured(inv.inventory_engine) as captured:
            coverage = await inv.coverage("j", id_start=100_005, id_end=100_104)
        assert [(s.state, s.range_start, s.range_end, s.batches) for s in coverage.segments] == [
            ("succeeded", 100_005, 100_104, 11)
        ]
        reads = captured.matching("range_start", "ORDER BY")
        assert len(reads) == 2  # the batch reaching into the window, and those inside it
        for statement, parameters in reads:
            plan = await _explain(inv.inventory_engine, statement, parameters)
            scans = _scans_of(plan, "inventory")
            assert scans, json.dumps(plan)[:2000]
            for scan in scans:
                assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), json.dumps(plan)[:2000]
                # both generations' batches in the window, not the job's 40,000
                assert scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0) <= 30, json.dumps(plan)[:2000]
