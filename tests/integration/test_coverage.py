"""Coverage map, coverage diff and plan (dry run), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from pybatchintory import (
    Coverage,
    CoverageDiff,
    InvalidArgumentError,
    Inventory,
    Job,
    SyncInventory,
)
from tests.conftest import Db, job_options_of
from tests.integration.test_cli import cli, ok_json


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


def _segments(coverage: Any) -> list[tuple[str, int, int, int]]:
    return [(s.state, s.range_start, s.range_end, s.batches) for s in coverage.segments]


async def _mixed_job(inv: Inventory, table: str) -> Job:
    """Job 'convert' over ids 1..20, two ids per batch: 1..2 succeeded, 3..4 failed with
    attempts left, 5..6 out of attempts, 7..8 running, 9..10 never taken (a gap the
    window 11.. skipped), 11..14 succeeded (two batches), 15..20 after the cursor."""
    job = Job("convert", source_table=table, **job_options_of(inv), weight=2, max_attempts=2)
    a = await inv.acquire_batch(job, load_items=False)
    b = await inv.acquire_batch(job, load_items=False)
    c = await inv.acquire_batch(job, max_attempts=1, load_items=False)
    d = await inv.acquire_batch(job, load_items=False)
    e = await inv.acquire_batch(job, id_start=11, load_items=False)
    f = await inv.acquire_batch(job, load_items=False)  # stores the plain definition again
    assert a and b and c and d and e and f
    assert [(x.range_start, x.range_end) for x in (a, b, c, d, e, f)] == [
        (1, 2),
        (3, 4),
        (5, 6),
        (7, 8),
        (11, 12),
        (13, 14),
    ]
    await a.success()
    await b.error("flaky")
    await c.error("corrupt")
    await e.success()
    await f.success()
    return job


MIXED = [
    ("succeeded", 1, 2, 1),
    ("retry_wait", 3, 4, 1),
    ("out_of_attempts", 5, 6, 1),
    ("running", 7, 8, 1),
    ("not_taken", 9, 10, 0),
    ("succeeded", 11, 14, 2),
    ("not_taken", 15, 20, 0),
]


async def test_coverage_segments(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 20)
    async with db.inventory() as inv:
        job = await _mixed_job(inv, table)
        by_name = await inv.coverage("convert")
        assert _segments(by_name) == MIXED
        assert (by_name.id_start, by_name.id_end, by_name.cursor, by_name.generation) == (
            1,
            20,
            14,
            0,
        )
        assert _segments(await inv.coverage(job)) == MIXED
        succeeded = [s for s in by_name.segments if s.state == "succeeded"]
        assert [(s.items, s.weight) for s in succeeded] == [(2, 2.0), (4, 4.0)]

        # Window clipping: a batch cut by the window keeps the ids inside it.
        clipped = await inv.coverage("convert", id_start=4, id_end=12)
        assert _segments(clipped) == [
            ("retry_wait", 4, 4, 1),
            ("out_of_attempts", 5, 6, 1),
            ("running", 7, 8, 1),
            ("not_taken", 9, 10, 0),
            ("succeeded", 11, 12, 1),
        ]
        assert _segments(await inv.coverage("convert", id_start=13, id_end=30)) == [
            ("succeeded", 13, 14, 1),
            ("not_taken", 15, 30, 0),
        ]
        # Another generation (none yet): nothing taken there.
        assert _segments(await inv.coverage("convert", generation=1)) == [("not_taken", 1, 20, 0)]
        # The job's own window is the default.
        windowed = Job(
            "convert", source_table=table, **db.job_options, weight=2, id_start=3, id_end=9
        )
        assert [s.state for s in (await inv.coverage(windowed)).segments] == [
            "retry_wait",
            "out_of_attempts",
            "running",
            "not_taken",
        ]

        with pytest.raises(InvalidArgumentError, match="no job 'nope'"):
            await inv.coverage("nope")
        with pytest.raises(InvalidArgumentError, match="greater than"):
            await inv.coverage("convert", id_start=5, id_end=4)


async def test_coverage_after_reset_and_of_an_empty_job(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        job = Job("j", source_table=table, **db.job_options, weight=3)
        first = await inv.acquire_batch(job, load_items=False)
        assert first is not None
        await first.success()
        await inv.reset("j", to_id=0)
        assert _segments(await inv.coverage("j")) == [("not_taken", 1, 6, 0)]
        assert _segments(await inv.coverage("j", generation=0)) == [
            ("succeeded", 1, 3, 1),
            ("not_taken", 4, 6, 0),
        ]
        # A Job never acquired: all of its source is still to take.
        fresh = await inv.coverage(Job("fresh", source_table=table, **db.job_options))
        assert (_segments(fresh), fresh.cursor) == ([("not_taken", 1, 6, 0)], None)
        # A window past the source's highest id: nothing to map, not an error.
        beyond = await inv.coverage(
            Job("fresh", source_table=table, **db.job_options, id_start=100)
        )
        assert (beyond.id_start, beyond.id_end, beyond.segments) == (100, 6, ())


async def test_coverage_diff(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 20)
    async with db.inventory() as inv:
        await _mixed_job(inv, table)
        other = Job("other", source_table=table, **db.job_options, weight=4)
        one = await inv.acquire_batch(other, load_items=False)
        two = await inv.acquire_batch(other, load_items=False)
        assert one and two and (two.range_start, two.range_end) == (5, 8)
        await one.success()
        await two.error("flaky")

        diff = await inv.coverage_diff("convert", "other")
        assert (diff.a, diff.b, diff.id_start, diff.id_end) == ("convert", "other", 1, 20)
        assert [(s.range_start, s.range_end, s.other_state) for s in diff.only_a] == [
            (11, 14, "not_taken")
        ]
        assert [(s.range_start, s.range_end, s.other_state) for s in diff.only_b] == [
            (3, 4, "retry_wait")
        ]
        reverse = await inv.coverage_diff("other", "convert", id_start=1, id_end=12)
        assert [(s.range_start, s.range_end) for s in reverse.only_a] == [(3, 4)]
        assert [(s.range_start, s.range_end, s.other_state) for s in reverse.only_b] == [
            (11, 12, "not_taken")
        ]

        elsewhere = await db.create_meta("elsewhere", weights=[1] * 3)
        await inv.acquire_batch(
            Job("far", source_table=elsewhere, **db.job_options), load_items=False
        )
        with pytest.raises(InvalidArgumentError, match="different sources"):
            await inv.coverage_diff("convert", "far")


async def test_coverage_cli_json(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 20)
    async with db.inventory() as inv:
        await _mixed_job(inv, table)
        other = await inv.acquire_batch(
            Job("other", source_table=table, **db.job_options, weight=4), load_items=False
        )
        assert other is not None
        await other.success()

    coverage, diff, text, bad = await asyncio.gather(
        cli(db, "coverage", "convert", "--json"),
        cli(db, "coverage", "convert", "--versus", "other", "--id-end", "12", "--json"),
        cli(db, "coverage", "convert", "--id-start", "3", "--id-end", "9"),
        cli(db, "coverage", "convert", "--id-start", "9", "--id-end", "3"),
    )
    value = ok_json(coverage)
    assert sorted(value) == [
        "cursor",
        "generation",
        "id_end",
        "id_start",
        "job_identifier",
        "segments",
    ]
    assert value["segments"][0] == {
        "state": "succeeded",
        "range_start": 1,
        "range_end": 2,
        "batches": 1,
        "items": 2,
        "weight": 2.0,
    }
    assert [(s["state"], s["range_start"], s["range_end"]) for s in value["segments"]] == [
        (state, start, end) for state, start, end, _ in MIXED
    ]
    assert ok_json(diff) == {
        "a": "convert",
        "b": "other",
        "id_start": 1,
        "id_end": 12,
        "only_a": [{"range_start": 11, "range_end": 12, "other_state": "not_taken"}],
        "only_b": [{"range_start": 3, "range_end": 4, "other_state": "retry_wait"}],
    }
    assert text.returncode == 0, text.stderr
    assert "3..4" in text.stdout and "out_of_attempts" in text.stdout
    assert bad.returncode == 2 and "greater than" in bad.stderr


# -- plan --------------------------------------------------------------------------------


async def _inventory_rows(db: Db) -> list[Any]:
    batches = await db.rows("SELECT * FROM {s}inventory ORDER BY id")
    jobs = await db.rows("SELECT * FROM {s}inventory_jobs ORDER BY job_identifier")
    logs = await db.rows("SELECT * FROM {s}inventory_logs ORDER BY id, attempt")
    return [list(batches), list(jobs), list(logs)]


async def test_plan_takes_nothing_and_matches_the_next_acquisitions(db: Db) -> None:
    table = await db.create_meta(weights=[1, 2, 1, 1, 3, 1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1])
    async with db.inventory() as inv:
        job = Job("plan_job", source_table=table, **db.job_options, weight=3, max_attempts=3)
        failed = await inv.acquire_batch(job, load_items=False)
        done = await inv.acquire_batch(job, load_items=False)
        # taken last: an acquisition after its lease ran out would take it again
        expiring = await inv.acquire_batch(job, lease_seconds=0.05, load_items=False)
        assert failed and expiring and done
        assert (failed.range_end + 1, done.range_end + 1) == (
            done.range_start,
            expiring.range_start,
        )
        await failed.error("flaky")
        await done.success()
        await asyncio.sleep(0.3)  # the second batch's lease runs out

        before = await _inventory_rows(db)
        planned = await inv.plan("plan_job", next=5)
        assert await _inventory_rows(db) == before  # nothing taken, nothing written
        assert [p.kind for p in planned] == ["retry", "expired", "new", "new", "new"]
        assert [p.batch_id for p in planned[:2]] == [failed.id, expiring.id]
        assert (await inv.plan(job, next=5)) == planned
        assert (await inv.plan("plan_job", next=1)) == planned[:1]

        taken = []
        for _ in range(5):
            batch = await inv.acquire_batch(job, load_items=False)
            assert batch is not None
            taken.append(batch)
        assert [
            (p.range_start, p.range_end, p.item_count, p.weight, p.attempt) for p in planned
        ] == [(b.range_start, b.range_end, b.item_count, b.weight, b.attempt) for b in taken]
        assert [p.batch_id for p in planned[:2]] == [b.id for b in taken[:2]]


async def test_plan_next_5_on_the_cli_takes_nothing_and_matches_the_next_5_acquisitions(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[2, 1, 1, 3, 1, 1, 2, 2, 1, 1, 1, 1, 3, 1, 1, 1])
    async with db.inventory() as inv:
        job = Job("plan_cli", source_table=table, **db.job_options, weight=3, max_attempts=2)
        failed = await inv.acquire_batch(job, load_items=False)
        done = await inv.acquire_batch(job, load_items=False)
        assert failed and done
        await failed.error("flaky")
        await done.success()

    before = await _inventory_rows(db)
    planned = ok_json(await cli(db, "plan", "plan_cli", "--next", "5", "--json"))
    assert await _inventory_rows(db) == before  # nothing taken, nothing written
    assert [p["kind"] for p in planned] == ["retry", "new", "new", "new", "new"]
    async with db.inventory() as inv:
        taken = []
        for _ in range(5):
            batch = await inv.acquire_batch(job, load_items=False)
            assert batch is not None
            taken.append(batch)
    assert [
        (p["batch_id"], p["range_start"], p["range_end"], p["item_count"], p["weight"])
        for p in planned
    ] == [
        (failed.id, failed.range_start, failed.range_end, failed.item_count, failed.weight),
        *((None, b.range_start, b.range_end, b.item_count, b.weight) for b in taken[1:]),
    ]
    assert taken[0].id == failed.id and [p["attempt"] for p in planned] == [2, 1, 1, 1, 1]
    assert [b.attempt for b in taken] == [2, 1, 1, 1, 1]


async def test_plan_cli_and_edges(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 5)
    async with db.inventory() as inv:
        # A Job never acquired plans from its window's start.
        fresh = await inv.plan(
            Job("fresh", source_table=table, **db.job_options, weight=2, id_start=2), next=10
        )
        assert [(p.kind, p.range_start, p.range_end) for p in fresh] == [
            ("new", 2, 3),
            ("new", 4, 5),
        ]
        with pytest.raises(InvalidArgumentError, match="no job 'nope'"):
            await inv.plan("nope")
        with pytest.raises(InvalidArgumentError, match="next"):
            await inv.plan(Job("fresh", source_table=table, **db.job_options), next=0)
        batch = await inv.acquire_batch(
            Job("convert", source_table=table, **db.job_options, weight=2), load_items=False
        )
        assert batch is not None
        await batch.success()

    before = await _inventory_rows(db)
    result = await cli(db, "plan", "convert", "--next", "3", "--json")
    assert ok_json(result) == [
        {
            "kind": "new",
            "batch_id": None,
            "range_start": 3,
            "range_end": 4,
            "item_count": 2,
            "weight": 2.0,
            "attempt": 1,
        },
        {
            "kind": "new",
            "batch_id": None,
            "range_start": 5,
            "range_end": 5,
            "item_count": 1,
            "weight": 1.0,
            "attempt": 1,
        },
    ]
    assert await _inventory_rows(db) == before
    text = await cli(db, "plan", "convert")
    assert text.returncode == 0 and "3..4" in text.stdout, text.stderr


async def test_sync_face(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)

    def scenario() -> None:
        with SyncInventory(**db.settings()) as inv:
            job = Job("j", source_table=table, **db.job_options, weight=2)
            batch = inv.acquire_batch(job, load_items=False)
            assert batch is not None
            batch.success()
            assert isinstance(inv.coverage("j"), Coverage)
            assert [(s.state, s.range_start, s.range_end) for s in inv.coverage("j").segments] == [
                ("succeeded", 1, 2),
                ("not_taken", 3, 6),
            ]
            assert [(p.range_start, p.range_end) for p in inv.plan("j", next=2)] == [(3, 4), (5, 6)]
            other = inv.acquire_batch(
                Job("k", source_table=table, **db.job_options, weight=4), load_items=False
            )
            assert other is not None
            other.success()
            diff = inv.coverage_diff("j", "k")
            assert isinstance(diff, CoverageDiff) and not diff.only_a
            assert [(s.range_start, s.range_end) for s in diff.only_b] == [(3, 4)]

    await anyio.to_thread.run_sync(scenario)


async def test_coverage_and_plan_of_a_downstream_job(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        up = Job("up", source_table=table, **db.job_options, weight=2)
        ups = [b async for b in inv.acquire_batches(up, load_items=False)]
        for batch in ups:
            await batch.success()
        down = Job("down", source_job="up", weight=4)  # two upstream batches of weight 2
        first = await inv.acquire_batch(down, load_items=False)
        assert first is not None
        await first.success()
        # The downstream's ids are the upstream's batch ids.
        ids = [b.id for b in ups]
        assert _segments(await inv.coverage("down")) == [
            ("succeeded", ids[0], ids[1], 1),
            ("not_taken", ids[2], ids[2], 0),
        ]
        planned = await inv.plan("down")
        assert [(p.kind, p.range_start, p.range_end, p.item_count) for p in planned] == [
            ("new", ids[2], ids[2], 1)
        ]
