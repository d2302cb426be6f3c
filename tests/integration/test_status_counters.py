"""The batch counters of the jobs table (schema version 5) and the status built on them.

Every scenario compares the counters, and ``status``, with a brute-force recount of the
job's batch rows: acquisitions, retries and reclaims (which reuse their rows), released
and failed batches, and resets (full, partial keeping succeeded batches, dry, forced).
On PostgreSQL a plan test shows that status reads no more batch rows than the job's
unfinished ones, however long its succeeded history.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from pybatchintory import Inventory
from pybatchintory._status import status_counts
from tests.conftest import Db
from tests.plans import Captured, pg_plan, scans_of, sqlite_plan

# Dyadic weights: their sums are exact in double precision, in any order.
WEIGHTS = [1.5, 2.25, 0.5, 3.0, 1.0, 2.5, 0.75, 4.0, 1.25, 2.0, 0.25, 3.5]


async def counters(inv: Inventory, job: str) -> tuple[int, float, int]:
    jobs = inv.storage.tables.jobs
    query = sa.select(
        jobs.c.generation_batches, jobs.c.generation_weight, jobs.c.total_batches
    ).where(jobs.c.job_identifier == job)
    async with inv.inventory_engine.connect() as conn:
        row = (await conn.execute(query)).one()
    return int(row[0]), float(row[1]), int(row[2])


async def recount(inv: Inventory, job: str) -> dict[str, Any]:
    """The counters and the status figures, from every batch row of ``job``."""
    tables = inv.storage.tables
    b, jobs = tables.batches, tables.jobs
    async with inv.inventory_engine.connect() as conn:
        generation = await conn.scalar(
            sa.select(jobs.c.generation).where(jobs.c.job_identifier == job)
        )
        rows = (await conn.execute(sa.select(b).where(b.c.job_identifier == job))).all()
    cur = [r for r in rows if r.generation == generation]

    def of(status: str) -> list[Any]:
        return [r for r in cur if r.status == status]

    def earliest(values: list[datetime | None]) -> datetime | None:
        present = [v for v in values if v is not None]
        return min(present) if present else None

    failed = of("failed")
    waiting = [r for r in failed if r.attempt < r.max_attempts]
    ends = [r.processing_end for r in rows if r.status == "succeeded" and r.processing_end]
    return {
        "counters": (len(cur), sum(r.weight for r in cur), len(rows)),
        "running": len(of("running")),
        "running_weight": sum(r.weight for r in of("running")),
        "succeeded": len(of("succeeded")),
        "succeeded_weight": sum(r.weight for r in of("succeeded")),
        "failed": len(failed),
        "failed_weight": sum(r.weight for r in failed),
        "retryable": len(waiting),
        "out_of_attempts": len(failed) - len(waiting),
        "released": len(of("released")),
        "superseded": len(rows) - len(cur),
        "oldest_running_start": earliest([r.processing_start for r in of("running")]),
        "earliest_lease_expiry": earliest([r.lease_expires_at for r in of("running")]),
        "next_retry_at": earliest([r.retry_after for r in waiting]),
        "last_success_at": max(ends) if ends else None,
    }


async def check(inv: Inventory, job: str) -> dict[str, Any]:
    """Counters and status equal the recount; returns the recount."""
    expected = await recount(inv, job)
    assert await counters(inv, job) == expected["counters"]
    status = await inv.status(job)
    got = {k: getattr(status, k) for k in expected if k != "counters"}
    assert got == {k: v for k, v in expected.items() if k != "counters"}
    return expected


async def take(inv: Inventory, table: str, job: str = "j", **options: Any) -> Any:
    batch = await inv.acquire_batch(source_table=table, job_identifier=job, weight=4, **options)
    assert batch is not None
    return batch


async def test_counters_follow_new_batches_not_reclaims(db: Db) -> None:
    table = await db.create_meta(weights=WEIGHTS)
    async with db.inventory() as inv:
        opts = {**db.job_options, "max_attempts": 2, "retry_delay_seconds": 0}
        first = await take(inv, table, **opts)
        await first.success()
        second = await take(inv, table, **opts)
        await second.error("boom")
        before = (await check(inv, "j"))["counters"]
        assert before[0] == 2 and before[2] == 2
        # The failed batch comes back: its row is reused, the counters stay.
        again = await take(inv, table, **opts)
        assert (again.id, again.attempt) == (second.id, 2)
        assert await counters(inv, "j") == before
        await again.error("boom again")  # out of attempts now
        third = await take(inv, table, **opts)
        await third.release()
        await check(inv, "j")
        # A released batch is handed out again on its own row.
        back = await take(inv, table, **opts)
        assert back.id == third.id
        await check(inv, "j")
        # A running batch whose lease is ended by hand, then reclaimed.
        await inv.expire_batch("j", back.id)
        reclaimed = await take(inv, table, **opts)
        assert reclaimed.id == back.id
        await check(inv, "j")
        running = await take(inv, table, **opts)  # a new batch, left running
        assert running.id not in (first.id, second.id, third.id)
        figures = await check(inv, "j")
        assert figures["counters"][0] == 4 and figures["running"] == 2
        assert figures["out_of_attempts"] == 1 and figures["succeeded"] == 1
        await reclaimed.success()
        await running.success()
        await check(inv, "j")


@pytest.mark.parametrize("kind", ["full", "partial", "dry_run", "forced"])
async def test_counters_after_a_reset(db: Db, kind: str) -> None:
    table = await db.create_meta(weights=WEIGHTS)
    async with db.inventory() as inv:
        # A failed batch waits an hour: the next acquisition is a new batch.
        opts = {**db.job_options, "retry_delay_seconds": 3600}
        done = [await take(inv, table, **opts) for _ in range(3)]
        for batch in done[:2]:
            await batch.success()
        await done[2].error("boom")  # unfinished: carried or superseded
        late = await take(inv, table, **opts)  # running, after every other range
        await check(inv, "j")
        before = await counters(inv, "j")
        if kind == "full":
            await late.success()
            result = await inv.reset("j")
            assert result.kept == 0
        elif kind == "partial":
            await late.success()
            result = await inv.reset("j", done[1].range_end)
            assert result.kept == 2  # the two first succeeded batches stand
        elif kind == "dry_run":
            result = await inv.reset("j", done[1].range_end, force=True, dry_run=True)
            assert result.dry_run
            assert await counters(inv, "j") == before
        else:
            result = await inv.reset("j", done[2].range_end, force=True)
            assert result.carried == (done[2].id,) and result.superseded == (late.id,)
        figures = await check(inv, "j")
        if kind == "full":
            assert figures["counters"] == (0, 0.0, 4) and figures["superseded"] == 4
        elif kind == "partial":
            weight = done[0].weight + done[1].weight
            assert figures["counters"] == (2, weight, 4) and figures["succeeded"] == 2
        elif kind == "forced":
            assert figures["counters"][0] == 3 and figures["superseded"] == 1
        # Acquisitions go on counting in the new generation.
        if kind != "dry_run":
            again = await take(inv, table, **opts)
            await again.success()
            figures = await check(inv, "j")
            assert figures["counters"][2] == 5


async def test_status_reads_the_unfinished_batches_only(db: Db) -> None:
    """The status statement the code runs (captured, then explained) reads the batches
    through the partial indexes: on PostgreSQL the unfinished batches and one succeeded
    row, not the job's 20,000 succeeded ones; on SQLite the same two indexes."""
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        for _ in range(3):
            batch = await inv.acquire_batch(
                source_table=table, job_identifier="j", weight=1, **db.job_options
            )
            assert batch is not None
        await batch.success()
        prefix = f'"{db.schema}".' if db.schema else ""
        rows = (
            "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < 20000) "
            if db.kind == "sqlite"
            else ""
        )
        source = "s" if db.kind == "sqlite" else "generate_series(1, 20000) g"
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.text(
                    f"{rows}INSERT INTO {prefix}inventory (job_identifier, generation, "
                    "processing_start, processing_end, range_start, range_end, weight, "
                    "item_count, attempt, max_attempts, status) SELECT 'j', 0, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1000 + g, 1000 + g, 1, 1, 1, 3, "
                    f"'succeeded' FROM {source}"
                )
            )
            await conn.execute(sa.text(f"ANALYZE {prefix}inventory"))
        dialect = inv.inventory_engine.dialect.name
        expected = status_counts(inv.storage.tables, dialect, "j")
        with Captured(inv.inventory_engine) as captured:
            await inv.status("j")
        reads = captured.matching("total_batches", "'succeeded'")
        assert len(reads) == 1, captured.statements
        # The statement that status_counts builds, as the code sent it.
        assert reads[0][0] == str(expected.compile(dialect=inv.inventory_engine.dialect))
        if dialect == "sqlite":
            detail = await sqlite_plan(inv.inventory_engine, *reads[0])
            assert "USING INDEX ix_inventory_unfinished" in detail, detail
            assert "ix_inventory_succeeded_end" in detail, detail
            return
        plan = await pg_plan(inv.inventory_engine, *reads[0])
        scans = scans_of(plan, "inventory")
        indexes = sorted(s.get("Index Name", s["Node Type"]) for s in scans)
        assert indexes == ["ix_inventory_succeeded_end", "ix_inventory_unfinished"], plan
        for scan in scans:
            assert scan["Node Type"] in ("Index Scan", "Index Only Scan"), plan
            read = scan["Actual Rows"] + scan.get("Rows Removed by Filter", 0)
            assert read <= 2, json.dumps(plan)[:2000]  # 2 unfinished; 1 last success
