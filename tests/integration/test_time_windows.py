"""Time windows (since/until by a time column), on SQLite and PostgreSQL, with rows whose
times are not in id order: a backfill processes exactly the rows of its window."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from pybatchintory import (
    InvalidArgumentError,
    Inventory,
    Job,
    JobSourceMismatchError,
    SyncInventory,
    UnknownColumnError,
)
from tests.conftest import Db
from tests.integration.test_cli import cli, ok_json
from tests.plans import Captured, pg_plan, scans_of

UTC = timezone.utc
MARCH = datetime(2024, 3, 1, tzinfo=UTC)
APRIL = datetime(2024, 4, 1, tzinfo=UTC)
START = datetime(2024, 2, 20, 12, tzinfo=UTC)
ROWS = 40


def _time_of(item_id: int) -> datetime:
    """Times jump back and forth with the id: (id * 17) mod 41 days after Feb 20."""
    return START + timedelta(days=(item_id * 17) % 41, minutes=item_id)


def _weight_of(item_id: int) -> float:
    return float(1 + item_id % 3)


IN_MARCH = [i for i in range(1, ROWS + 1) if MARCH <= _time_of(i) < APRIL]


async def _events(db: Db) -> str:
    """``events``: id, weight, ``created_at`` (with time zone on PostgreSQL; SQLite has
    none) and ``created_naive`` (without: read as UTC), ``label`` (text)."""
    md = sa.MetaData(schema=db.schema)
    table = sa.Table(
        "events",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_naive", sa.DateTime(timezone=False), nullable=True),
        sa.Column("label", sa.String(20), nullable=True),
    )
    rows = [
        {
            "id": i,
            "weight": _weight_of(i),
            "created_at": _time_of(i),
            "created_naive": _time_of(i).replace(tzinfo=None),
            "label": "x",
        }
        for i in range(1, ROWS + 1)
    ]
    async with db.engine.begin() as conn:
        await conn.run_sync(md.create_all)
        await conn.execute(sa.insert(table), rows)
    return db.qualified("events")


def test_the_rows_of_march_are_not_in_id_order() -> None:
    # The scenario's premise: March rows are interleaved with rows of other times.
    assert len(IN_MARCH) >= 10
    outside = [i for i in range(IN_MARCH[0], IN_MARCH[-1] + 1) if i not in IN_MARCH]
    assert len(outside) >= 5
    assert sorted(IN_MARCH, key=_time_of) != IN_MARCH


async def _drain(inv: Inventory, job: Job) -> list[Any]:
    batches = []
    async for batch in inv.acquire_batches(job):
        batches.append(batch)
        await batch.success()
    return batches


@pytest.mark.parametrize("column", ["created_at", "created_naive"])
async def test_a_backfill_processes_exactly_the_rows_of_its_time_window(
    db: Db, column: str
) -> None:
    table = await _events(db)
    job = Job(
        "march",
        source_table=table,
        weight=4,
        time_column=column,
        since=MARCH,
        until=APRIL,
    )
    async with db.inventory() as inv:
        backlog = await inv.backlog(job)
        assert (backlog.items, backlog.weight) == (
            len(IN_MARCH),
            sum(_weight_of(i) for i in IN_MARCH),
        )
        planned = await inv.plan(job, next=100)
        batches = await _drain(inv, job)
        ids = [item["id"] for batch in batches for item in batch.items]
        assert ids == IN_MARCH  # each row of March once, in id order, no other row
        assert all(MARCH <= _time_of(i) < APRIL for i in ids)
        # The id window is [lowest, highest] id of March's rows.
        assert batches[0].range_start == IN_MARCH[0]
        assert batches[-1].range_end == IN_MARCH[-1]
        assert all(b.weight <= 4 for b in batches)
        assert [(p.range_start, p.range_end, p.item_count) for p in planned] == [
            (b.range_start, b.range_end, b.item_count) for b in batches
        ]
        assert await inv.acquire_batch(job) is None
        assert "window done" in (inv.idle_reasons["march"])
        assert await inv.plan("march") == []  # by name: the stored window, bound alike

        # By name: the stored definition carries the window, so the backlog is March's.
        status = await inv.status("march")
        assert status.backlog is not None and status.backlog.items == 0
        assert status.definition is not None
        assert (status.definition["since"], status.definition["until"]) == (
            MARCH.isoformat(),
            APRIL.isoformat(),
        )
        coverage = await inv.coverage("march")
        assert (coverage.id_start, coverage.id_end) == (IN_MARCH[0], IN_MARCH[-1])
        assert {s.state for s in coverage.segments} <= {"succeeded", "not_taken"}
        assert sum(s.items for s in coverage.segments) == len(IN_MARCH)
        # trace: a row of another time inside March's ids was not part of the batch
        other = next(i for i in range(IN_MARCH[0], IN_MARCH[-1]) if i not in IN_MARCH)
        assert [e.job_identifier for e in await inv.trace(table, other)] == []
        traced = await inv.trace(table, IN_MARCH[1])
        assert [(e.job_identifier, e.verified) for e in traced] == [("march", True)]


async def test_rows_that_arrive_late_in_the_window_are_taken_by_the_next_run(db: Db) -> None:
    table = await _events(db)
    job = Job("march", source_table=table, time_column="created_at", since=MARCH, until=APRIL)
    async with db.inventory() as inv:
        first = await _drain(inv, job)
        assert [i["id"] for b in first for i in b.items] == IN_MARCH
        # Two late rows: one of March (a new, higher id) and one of April.
        late = sa.table(
            "events",
            sa.column("id"),
            sa.column("weight"),
            sa.column("created_at", sa.DateTime(timezone=True)),  # typed: SQLite compares text
            schema=db.schema,
        )
        async with db.engine.begin() as conn:
            await conn.execute(
                sa.insert(late),
                [
                    {"id": 101, "weight": 1.0, "created_at": MARCH + timedelta(hours=5)},
                    {"id": 102, "weight": 1.0, "created_at": APRIL},  # until is excluded
                ],
            )
        assert (await inv.backlog(job)).items == 1
        second = await _drain(inv, job)
        assert [i["id"] for b in second for i in b.items] == [101]


async def test_a_job_is_bound_to_its_time_window(db: Db) -> None:
    table = await _events(db)
    plain = Job("daily", source_table=table, weight=100, time_column="created_at")
    async with db.inventory() as inv:
        # Per call, the first acquisition binds the job to its window ...
        batch = await inv.acquire_batch(plain, since=MARCH, until=APRIL)
        assert batch is not None
        assert [i["id"] for i in batch.items] == IN_MARCH
        await batch.success()
        # ... and another window is another job: its ranges would hold other rows.
        with pytest.raises(JobSourceMismatchError, match="created_at"):
            await inv.acquire_batch(plain, since=APRIL)
        with pytest.raises(JobSourceMismatchError):
            await inv.acquire_batch(plain)
        # The same window written in another time zone is the same job.
        paris = timezone(timedelta(hours=1))
        again = await inv.acquire_batch(
            plain, since=MARCH.astimezone(paris), until=APRIL.astimezone(paris)
        )
        assert again is None


async def test_status_and_coverage_of_an_incremental_job_through_a_time_window(db: Db) -> None:
    table = await _events(db)
    job = Job("all", source_table=table, weight=6, time_column="created_at")
    async with db.inventory() as inv:
        first = await inv.acquire_batch(job)
        assert first is not None
        await first.success()
        whole = await inv.status("all")
        march = await inv.status("all", since=MARCH, until=APRIL)
        assert whole.backlog is not None and march.backlog is not None
        ahead = [i for i in IN_MARCH if i > first.range_end]
        assert march.backlog.items == len(ahead) < whole.backlog.items
        cov = await inv.coverage("all", since=MARCH, until=APRIL)
        assert (cov.id_start, cov.id_end) == (IN_MARCH[0], IN_MARCH[-1])
        # a time column given per call, for a job that has none
        other = Job("other", source_table=table)
        assert (await inv.coverage(other, time_column="created_naive", since=MARCH)).id_start
        empty = await inv.coverage("all", since=datetime(2030, 1, 1, tzinfo=UTC))
        assert (empty.id_start, empty.id_end, empty.segments) == (None, None, ())


async def test_an_empty_time_window_hands_out_nothing_and_says_why(db: Db) -> None:
    table = await _events(db)
    later = datetime(2030, 1, 1, tzinfo=UTC)
    job = Job("future", source_table=table, time_column="created_at", since=later)
    async with db.inventory() as inv:
        assert await inv.acquire_batch(job) is None
        assert "nothing in the time window" in inv.idle_reasons["future"]
        assert [b async for b in inv.acquire_batches(job)] == []
        assert await inv.plan(job) == []
        assert (await inv.backlog(job)).items == 0


async def test_bad_time_windows_are_refused(db: Db) -> None:
    table = await _events(db)
    naive = datetime(2024, 3, 1)
    with pytest.raises(InvalidArgumentError, match="naive datetime"):
        Job("j", source_table=table, time_column="created_at", since=naive)
    with pytest.raises(InvalidArgumentError, match="must be before until"):
        Job("j", source_table=table, time_column="created_at", since=APRIL, until=MARCH)
    with pytest.raises(InvalidArgumentError, match="must be before until"):
        Job("j", source_table=table, time_column="created_at", since=MARCH, until=MARCH)
    with pytest.raises(InvalidArgumentError, match="need time_column"):
        Job("j", source_table=table, since=MARCH)
    with pytest.raises(InvalidArgumentError, match="timezone-aware datetime"):
        Job("j", source_table=table, time_column="created_at", since="2024-03-01")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="source table"):
        Job("j", source_job="up", time_column="created_at")
    async with db.inventory() as inv:
        with pytest.raises(UnknownColumnError, match="'created' does not exist"):
            await inv.acquire_batch(
                Job("j", source_table=table, time_column="created", since=MARCH)
            )
        with pytest.raises(UnknownColumnError, match="must be a timestamp"):
            await inv.acquire_batch(Job("j", source_table=table, time_column="label", since=MARCH))
        with pytest.raises(InvalidArgumentError, match="naive datetime"):
            await inv.status("j", since=naive)
        with pytest.raises(InvalidArgumentError, match="naive datetime"):
            await inv.acquire_batch(
                Job("k", source_table=table, time_column="created_at"), since=naive
            )
        first = await inv.acquire_batch(Job("k", source_table=table))
        assert first is not None
        with pytest.raises(InvalidArgumentError, match="need time_column"):
            await inv.status("k", since=MARCH)


async def test_the_cli_takes_since_and_until(db: Db) -> None:
    table = await _events(db)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            Job("all", source_table=table, weight=6, time_column="created_at")
        )
        assert batch is not None
        await batch.success()
    status = ok_json(
        await cli(db, "status", "all", "--since", "2024-03-01", "--until", "2024-04-01", "--json")
    )
    ahead = [i for i in IN_MARCH if i > batch.range_end]
    assert status["backlog"]["items"] == len(ahead)
    cov = ok_json(
        await cli(db, "coverage", "all", "--since", "2024-03-01T00:00:00+00:00", "--json")
    )
    assert cov["id_start"] == min(i for i in range(1, ROWS + 1) if _time_of(i) >= MARCH)
    bad = await cli(db, "status", "all", "--since", "2024-04-01", "--until", "2024-03-01")
    assert bad.returncode == 2 and "must be before until" in bad.stderr
    versus = await cli(db, "coverage", "all", "--versus", "all", "--since", "2024-03-01")
    assert versus.returncode == 2 and "cannot be combined" in versus.stderr
    garbled = await cli(db, "status", "all", "--since", "March")
    assert garbled.returncode == 2 and "not a date" in garbled.stderr


async def test_the_time_windows_ids_are_an_index_only_scan_of_the_window(pg_only: Db) -> None:
    """With an index on (time_column, id), the run's id bounds read the window's index
    entries only (not the table, not the other rows): the cost docs/observability.md
    states. 100,000 rows, times scattered over 100 days; a window of one day."""
    db = pg_only
    table = f'"{db.schema}".timed'
    async with db.engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"CREATE TABLE {table} (id bigserial PRIMARY KEY, weight double precision "
                "NOT NULL, created_at timestamptz NOT NULL)"
            )
        )
        await conn.execute(
            sa.text(
                f"INSERT INTO {table} SELECT g, 1, timestamptz '2024-01-01 00:00+00' "
                "+ ((g * 7919) % 100) * interval '1 day' + (g % 1000) * interval '1 second' "
                "FROM generate_series(1, 100000) g"
            )
        )
        await conn.execute(sa.text(f"CREATE INDEX timed_created_id ON {table} (created_at, id)"))
    async with db.engine.connect() as conn:  # VACUUM: the visibility map, for index-only
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
    day = datetime(2024, 2, 10, tzinfo=UTC)
    job = Job(
        "day",
        source_table=db.qualified("timed"),
        time_column="created_at",
        since=day,
        until=day + timedelta(days=1),
    )
    async with db.inventory() as inv:
        with Captured(inv.meta_engine) as captured, Captured(inv.inventory_engine) as own:
            planned = await inv.plan(job, next=1)
        assert planned and planned[0].range_start < 1000  # day 40's rows spread over all ids
        reads = [*captured.matching("min(", "max("), *own.matching("min(", "max(")]
        assert len(reads) == 1, reads
        plan = await pg_plan(inv.meta_engine, *reads[0])
    scans = scans_of(plan, "timed")
    assert [s["Node Type"] for s in scans] == ["Index Only Scan"], json.dumps(plan)[:2000]
    assert scans[0]["Index Name"] == "timed_created_id"
    assert scans[0]["Actual Rows"] == 1000  # the day's rows: 1 in 100


async def test_the_sync_face_takes_time_windows(db: Db) -> None:
    table = await _events(db)

    def scenario() -> None:
        with SyncInventory(**db.settings()) as inv:
            job = Job("all", source_table=table, weight=6, time_column="created_at")
            cov = inv.coverage(job, since=MARCH, until=APRIL)
            assert (cov.id_start, cov.id_end) == (IN_MARCH[0], IN_MARCH[-1])
            forecast = inv.forecast(job, since=MARCH, until=APRIL)
            assert (forecast.basis, forecast.eta_seconds) == ("budget", None)
            assert forecast.batches == math.ceil(sum(_weight_of(i) for i in IN_MARCH) / 6)
            first = inv.acquire_batch(job)
            assert first is not None
            first.success()
            march = inv.status(job, since=MARCH, until=APRIL)
            ahead = [i for i in IN_MARCH if i > first.range_end]
            assert march.backlog is not None and march.backlog.items == len(ahead)

    await anyio.to_thread.run_sync(scenario)
