"""Many worker processes, each with several asyncio tasks, drain jobs of one table.

Issue 3, tests 1, 2, 8 and 10: whatever the number of processes and the isolation level,
a job's ranges are pairwise disjoint, cover every matching id, end finished, and carry
one log row per attempt. Workers plant failures in some first attempts, so that
retries race with new ranges.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.acceptance._worker import check_job_invariants, run_workers
from tests.conftest import Db, meta_table_def

ITEMS = 1500
CATEGORIES = ("a", "b", "c")
RACE_FILTER = {"category": ["a", "b"]}


async def seed(db: Db, count: int = ITEMS) -> str:
    """A metadata table of ``count`` items with varied weights and three categories."""
    table = await db.create_meta()
    rows = [
        {"uri": f"s3://race/{i}", "weight": 1 + i % 9, "category": CATEGORIES[i % 3]}
        for i in range(count)
    ]
    async with db.engine.begin() as conn:
        await conn.execute(sa.insert(meta_table_def(sa.MetaData(schema=db.schema), "meta")), rows)
    return table


async def matching_ids(
    db: Db, categories: tuple[str, ...] = CATEGORIES, lo: int = 0, hi: int = 2**62
) -> list[int]:
    rows = await db.rows(
        "SELECT id FROM {s}meta WHERE category IN ('" + "','".join(categories) + "') "
        "AND id BETWEEN :lo AND :hi ORDER BY id",
        lo=lo,
        hi=hi,
    )
    return [r.id for r in rows]


def worker_args(db: Db, table: str, jobs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"url": db.url, "schema": db.schema, "table": table, "jobs": jobs, **extra}


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
@pytest.mark.parametrize("isolation_level", ["READ COMMITTED", "SERIALIZABLE"])
@pytest.mark.parametrize("workers", [1, 4, 16])
async def test_worker_processes_racing_on_one_job_keep_its_invariants(
    db: Db, workers: int, isolation_level: str
) -> None:
    table = await seed(db)
    job = {"name": "race", "weight": 40, "filter": RACE_FILTER}
    # Sixteen processes get two tasks each, to stay well inside the server's connections.
    tasks = 3 if workers <= 4 else 2
    args = worker_args(db, table, [job], tasks=tasks, fail_every=5, isolation_level=isolation_level)
    results = await run_workers("drain", [{**args, "name": f"w{i}"} for i in range(workers)])

    facts = await check_job_invariants(db, "race", await matching_ids(db, ("a", "b")))
    assert sum(r["succeeded"] for r in results) == facts["batches"]
    assert sum(r["failed"] for r in results) == facts["attempts"] - facts["batches"] > 0
    assert sum(r["lost"] for r in results) == 0
    print(
        f"\nrace {isolation_level} {workers} processes x {tasks} tasks: "
        f"{facts['batches']} batches, {facts['attempts']} attempts"
    )


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)
async def test_many_jobs_on_one_table_keep_their_invariants_independently(db: Db) -> None:
    table = await seed(db)
    jobs = [
        {"name": "everything", "weight": 60},
        {"name": "only_c", "weight": 25, "filter": {"category": "c"}},
        {"name": "backfill", "weight": 30, "id_start": 500, "id_end": 2200},
        {"name": "few_big", "weight": 400, "filter": {"category": ["a", "c"]}},
    ]
    results = await run_workers(
        "drain",
        [worker_args(db, table, jobs, tasks=2, fail_every=7, name=f"w{i}") for i in range(4)],
    )
    total = 0
    total += (await check_job_invariants(db, "everything", await matching_ids(db)))["batches"]
    total += (await check_job_invariants(db, "only_c", await matching_ids(db, ("c",))))["batches"]
    total += (await check_job_invariants(db, "backfill", await matching_ids(db, lo=500, hi=2200)))[
        "batches"
    ]
    total += (await check_job_invariants(db, "few_big", await matching_ids(db, ("a", "c"))))[
        "batches"
    ]
    assert sum(r["succeeded"] for r in results) == total


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["sqlite"], indirect=True)
async def test_sqlite_processes_on_one_file_wait_for_the_lock_and_keep_the_invariants(
    db: Db,
) -> None:
    # WAL and BEGIN IMMEDIATE: writers queue on the busy timeout instead of failing with
    # "database is locked"; a worker that got that error would exit non-zero.
    table = await seed(db, 1000)
    job = {"name": "race", "weight": 40, "filter": RACE_FILTER}
    args = worker_args(db, table, [job], tasks=2, fail_every=5)
    results = await run_workers("drain", [{**args, "name": f"w{i}"} for i in range(4)])
    facts = await check_job_invariants(db, "race", await matching_ids(db, ("a", "b")))
    assert sum(r["succeeded"] for r in results) == facts["batches"]
    assert sum(r["failed"] for r in results) == facts["attempts"] - facts["batches"] > 0
    print(f"\nrace sqlite 4 processes x 2 tasks: {facts['batches']} batches")


@pytest.mark.slow
@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"], indirect=True)
async def test_processes_opening_a_new_inventory_at_once_create_the_tables_once(
    db: Db, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    schema = f"{db.schema}_new" if db.schema else None  # a schema nobody created yet
    args = {"url": db.url, "schema": schema, "go_file": str(go)}
    runner = asyncio.ensure_future(run_workers("open", [args] * 8))
    await asyncio.sleep(2)  # let the interpreters start and wait on the signal
    go.touch()
    try:
        assert await runner == [{"opened": True}] * 8
        if db.kind == "postgresql":
            tables = await db.rows(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s "
                "ORDER BY table_name",
                s=schema,
            )
            constraints = await db.scalar(
                "SELECT count(*) FROM pg_constraint c JOIN pg_namespace n "
                "ON n.oid = c.connamespace WHERE n.nspname = :s AND c.contype = 'x'",
                s=schema,
            )
            assert constraints == 1
        else:
            tables = await db.rows(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        assert [t[0] for t in tables] == [
            "inventory",
            "inventory_jobs",
            "inventory_jobs_version",
            "inventory_logs",
        ]
    finally:
        if schema:
            async with db.engine.begin() as conn:
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
