"""Status, backlog, the job list, trace and reset, against hand-counted fixtures."""

from __future__ import annotations

import logging

import anyio
import pytest
import sqlalchemy as sa

from pybatchintory import (
    BatchLostError,
    BatchStateError,
    InvalidArgumentError,
    JobSourceMismatchError,
    SyncInventory,
)
from tests.conftest import Db, job_options_of
from tests.plans import Captured, pg_plan, scans_of, sqlite_plan


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


async def test_status_counts_batches_by_outcome_and_the_backlog_ahead(db: Db) -> None:
    # 20 items of weight 2; batches of weight 6 are three items each.
    table = await db.create_meta(weights=[2] * 20)
    async with db.inventory() as inv:
        b1, b2, b3, b4 = [
            await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="j", weight=6, max_attempts=a
            )
            for a in (3, 1, 3, 3)
        ]
        assert b1 and b2 and b3 and b4
        await b1.success()
        await b2.error("out of memory")  # its only attempt: out of attempts
        await b3.error("timeout")  # two attempts left: retryable
        status = await inv.status("j")

    assert (status.source_kind, status.source, status.cursor, status.generation) == (
        "table",
        table,
        12,
        0,
    )
    assert (status.running, status.running_weight) == (1, 6)
    assert (status.succeeded, status.succeeded_weight) == (1, 6)
    assert (status.failed, status.failed_weight) == (2, 12)
    assert (status.retryable, status.out_of_attempts, status.superseded) == (1, 1, 0)
    assert status.expired_leases == 0
    assert status.oldest_running_start is not None and status.earliest_lease_expiry is not None
    assert status.last_success_at is not None and status.last_success_at.tzinfo is not None
    # ids 13..20 are ahead of the cursor: 8 items of weight 2.
    assert status.backlog is not None and (status.backlog.items, status.backlog.weight) == (8, 16)
    assert status.backlog_note is None
    as_dict = status.as_dict()
    assert as_dict["backlog"] == {"items": 8, "weight": 16.0}
    assert isinstance(as_dict["last_success_at"], str)


async def test_backlog_respects_the_window_and_counts_a_new_job_from_the_start(db: Db) -> None:
    table = await db.create_meta(weights=[1, 2, 3, 4, 5, 6])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        assert batch is not None and batch.range_end == 2
        await batch.success()
        windowed = await inv.status("j", id_end=4)
        assert windowed.backlog is not None and (
            windowed.backlog.items,
            windowed.backlog.weight,
        ) == (2, 7)
        fresh = await inv.backlog(
            source_table=table, **db.job_options, job_identifier="new", id_start=2
        )
        assert (fresh.items, fresh.weight) == (5, 20)
        counted = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="counted",
            weight_column=None,
            max_items=2,
        )
        assert counted is not None and counted.weight == 2  # every item weighs 1
        await counted.success()
        no_weight = await inv.status("counted")
        assert no_weight.backlog is not None and (
            no_weight.backlog.items,
            no_weight.backlog.weight,
        ) == (4, None)


async def test_backlog_of_a_mapping_filtered_job_comes_from_its_stored_definition(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 4, category="a")
    await db.add_items("meta", [5] * 3, category="b")
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="b",
            filter={"category": "b"},
            max_items=1,
        )
        assert batch is not None and batch.range_start == 5
        await batch.success()
        by_name = await inv.status("b")
        assert by_name.backlog is not None and (by_name.backlog.items, by_name.backlog.weight) == (
            2,
            10,
        )
        assert by_name.definition is not None and by_name.definition["filter"] == {"category": "b"}
        assert await inv.backlog("b") == by_name.backlog


async def test_backlog_of_an_expression_filtered_job_needs_its_filter_or_explicit_trust(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 4, category="a")
    await db.add_items("meta", [5] * 3, category="b")
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table,
            **db.job_options,
            job_identifier="b",
            filter=lambda t: t.c.category == "b",
            max_items=1,
        )
        assert batch is not None and batch.range_start == 5
        await batch.success()

        unknown = await inv.status("b")
        assert unknown.backlog is None and "filter" in (unknown.backlog_note or "")
        given = await inv.status("b", filter={"category": "b"})
        assert given.backlog is not None and (given.backlog.items, given.backlog.weight) == (2, 10)
        trusted = await inv.status("b", trust_stored_filter=True)
        assert trusted.backlog == given.backlog
        with pytest.raises(JobSourceMismatchError, match="was bound to filter"):
            await inv.status("b", filter={"category": "a"})


async def test_jobs_lists_every_job_with_a_one_line_status(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        assert await inv.jobs() == []
        ok = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="a_ok", max_items=2
        )
        busy = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="b_busy", max_items=2
        )
        bad = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="c_bad", max_attempts=1
        )
        assert ok and busy and bad
        await ok.success()
        await bad.error("boom")
        down = await inv.acquire_batch(source_job="a_ok", job_identifier="d_down")
        assert down is not None
        await down.success()
        jobs = {j.job_identifier: j for j in await inv.jobs()}
        await busy.success()

    assert list(jobs) == ["a_ok", "b_busy", "c_bad", "d_down"]
    assert jobs["a_ok"].summary == "cursor 2, idle"
    assert jobs["b_busy"].summary == "cursor 2, 1 running"
    assert jobs["c_bad"].summary == "cursor 6, 1 failed (1 out of attempts)"
    assert (jobs["d_down"].source_kind, jobs["d_down"].source) == ("job", "a_ok")


async def test_trace_shows_every_job_and_attempt_that_covered_an_item(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 10)
    async with db.inventory() as inv:
        first = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="convert", weight=4
        )
        assert first is not None and (first.range_start, first.range_end) == (1, 4)
        await first.error(ValueError("bad header in file 3"))
        again = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="convert", weight=4
        )
        assert again is not None and again.id == first.id and again.attempt == 2
        await again.success({"out": "converted/1-4"})
        other = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="index", weight=2
        )
        other2 = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="index", weight=2
        )
        assert other and other2 and other2.range_end == 4
        await other.success()
        await other2.success()
        down = await inv.acquire_batch(source_job="convert", job_identifier="aggregate")
        assert down is not None
        await down.success()

        entries = await inv.trace(table, 3)
        assert await inv.trace(table, 9) == []

    by_job = {e.job_identifier: e for e in entries}
    assert sorted(by_job) == ["aggregate", "convert", "index"]
    convert = by_job["convert"]
    assert (convert.batch_id, convert.range_start, convert.range_end) == (first.id, 1, 4)
    assert (convert.status, convert.attempt, convert.depth) == ("succeeded", 2, 0)
    assert convert.result == {"out": "converted/1-4"}
    assert [(a.attempt, a.status) for a in convert.attempts] == [(1, "failed"), (2, "succeeded")]
    assert "bad header in file 3" in (convert.attempts[0].logging or "")
    assert all(a.processing_end is not None for a in convert.attempts)
    index = by_job["index"]
    assert (index.batch_id, index.range_start, index.attempt) == (other2.id, 3, 1)
    aggregate = by_job["aggregate"]
    assert (aggregate.depth, aggregate.via_batch_id, aggregate.batch_id) == (1, first.id, down.id)


async def test_trace_lookup_uses_the_job_range_index(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3)
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
        assert batch is not None
        await batch.success()
        if db.kind == "postgresql":
            # A long history of other jobs, analysed: a three-row table is cheaper to scan,
            # so give the planner the statistics under which the index must win.
            async with db.engine.begin() as conn:
                await conn.execute(
                    sa.text(
                        f'INSERT INTO "{db.schema}".inventory (job_identifier, generation, '
                        "processing_start, processing_end, range_start, range_end, weight, "
                        "item_count, attempt, max_attempts, status) SELECT 'other' || (g % 50), 0, "
                        "now(), now(), g, g, 1, 1, 1, 3, 'succeeded' FROM generate_series(1, 20000) g"
                    )
                )
                await conn.execute(sa.text(f'ANALYZE "{db.schema}".inventory'))
        # The statement trace itself sends, captured, then explained with its parameters.
        with Captured(inv.inventory_engine) as backend:
            entries = await inv.trace(table, 2)
        assert [(e.job_identifier, e.batch_id) for e in entries] == [("j", batch.id)]
        lookups = backend.matching("range_start <=", "ORDER BY", "range_start DESC", "LIMIT")
        assert len(lookups) == 1, backend.statements
        if db.url.startswith("sqlite"):  # the inventory (SQLite in the MariaDB variant too)
            detail = await sqlite_plan(inv.inventory_engine, *lookups[0])
            assert "USING INDEX ix_inventory_job_range" in detail, detail
        else:
            plan = await pg_plan(inv.inventory_engine, *lookups[0])
            scans = scans_of(plan, "inventory")
            assert [s["Node Type"] for s in scans] == ["Index Scan"], plan
            assert scans[0]["Index Name"] == "ix_inventory_job_range", plan


async def test_reset_rewinds_the_cursor_keeps_history_and_reruns(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 9)
    async with db.inventory() as inv:
        async for batch in inv.acquire_batches(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        ):
            await batch.success()
        result = await inv.reset("j", to_id=3)
        assert (result.old_cursor, result.new_cursor, result.generation) == (9, 3, 1)
        assert result.carried == () and result.superseded == ()
        assert result.kept == 1  # the succeeded batch 1..3 stands, in the new generation
        rerun = [(b.range_start, b.range_end) async for b in _succeed_all(inv, table, "j")]
        assert rerun == [(4, 6), (7, 9)]
        status = await inv.status("j")
        assert (status.cursor, status.generation, status.succeeded, status.superseded) == (
            9,
            1,
            3,
            2,
        )
        generations = [e.generation for e in await inv.trace(table, 5)]
        assert generations == [1, 0]

        await inv.reset("j")
        assert [(b.range_start, b.range_end) async for b in _succeed_all(inv, table, "j")] == [
            (1, 3),
            (4, 6),
            (7, 9),
        ]
    assert await db.scalar("SELECT count(*) FROM {s}inventory") == 8


async def _succeed_all(inv, table, job):  # type: ignore[no-untyped-def]
    async for batch in inv.acquire_batches(
        source_table=table, **job_options_of(inv), job_identifier=job, weight=3
    ):
        await batch.success()
        yield batch


async def test_reset_refuses_running_batches_unless_forced_and_the_worker_loses_them(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        running = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        assert running is not None
        with pytest.raises(BatchStateError, match="1 running batch"):
            await inv.reset("j")
        assert (await inv.status("j")).generation == 0

        result = await inv.reset("j", force=True)
        assert result.superseded == (running.id,)
        with pytest.raises(BatchLostError):
            await running.success()
        again = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        assert again is not None and (again.range_start, again.attempt) == (1, 1)
        assert again.id != running.id
        await again.success()
    log = await db.rows("SELECT status, logging FROM {s}inventory_logs WHERE id = :i", i=running.id)
    assert log[0][0] == "failed" and "superseded by a reset" in log[0][1]


async def test_reset_keeps_failed_batches_below_the_point_to_be_finished(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 9)
    async with db.inventory() as inv:
        failing = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        rest = [
            await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="j", weight=3
            )
            for _ in range(2)
        ]
        assert failing is not None and all(rest)
        await failing.error("disk full")
        for batch in rest:
            await batch.success()  # type: ignore[union-attr]

        with pytest.raises(InvalidArgumentError, match="falls inside unfinished batch"):
            await inv.reset("j", to_id=2)
        with pytest.raises(InvalidArgumentError, match="beyond"):
            await inv.reset("j", to_id=10)
        with pytest.raises(InvalidArgumentError, match="no job 'nope'"):
            await inv.reset("nope")

        result = await inv.reset("j", to_id=6)
        assert result.carried == (failing.id,)
        retried = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        assert retried is not None and (retried.id, retried.attempt) == (failing.id, 2)
        await retried.success()
        new = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=3
        )
        assert new is not None and (new.range_start, new.range_end) == (7, 9)
        await new.success()


async def test_retry_and_reset_log_structured_fields(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    caplog.set_level(logging.INFO, logger="pybatchintory")
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", weight=2, max_attempts=1
        )
        assert batch is not None
        later = await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
        assert later is not None
        await later.success()  # the cursor moves past 2, so a reset to 2 changes something
        await batch.error("boom")
        caplog.clear()
        assert await inv.retry("j", batch.id) == [batch.id]
        (requeued,) = [r for r in caplog.records if "re-queued" in r.getMessage()]
        fields = {
            k: getattr(requeued, k)
            for k in ("job", "batch_id", "range_start", "range_end", "attempt")
        }
        assert fields == {
            "job": "j",
            "batch_id": batch.id,
            "range_start": 1,
            "range_end": 2,
            "attempt": 1,
        }

        caplog.clear()
        await inv.reset("j", to_id=2)
        records = {r.getMessage().split(":")[0]: r for r in caplog.records}
        assert records["job reset"].job == "j" and records["job reset"].new_cursor == 2
        carried = [r for r in caplog.records if getattr(r, "batch_id", None) == batch.id]
        assert carried and carried[0].range_start == 1 and carried[0].attempt == 1


async def test_sync_acquire_batches_draws_a_progress_bar_sized_by_the_backlog(
    db: Db, capsys: pytest.CaptureFixture[str]
) -> None:
    table = await db.create_meta(weights=[5] * 8)

    def run() -> None:
        with SyncInventory(**db.settings()) as inv:
            first = inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="j", weight=10
            )
            assert first is not None
            first.success()
            for batch in inv.acquire_batches(
                source_table=table, **db.job_options, job_identifier="j", weight=10, progress=True
            ):
                batch.success()

    await anyio.to_thread.run_sync(run)
    drawn = capsys.readouterr().err.split("\r")
    # Sized up front by the 6 items (weight 30) left after the first batch.
    # Batches left and an ETA from the first batch's pace (weight 10 per batch).
    assert "0% 0/30 weight, 0 batches, ~3 left, ETA " in drawn[1]
    assert drawn[-1] == "j [##############################] 100% 30/30 weight, 3 batches\n"
