"""Finishing batches on SQLite and PostgreSQL: success, error, process, ``async with``,
the rows they leave in ``inventory`` and ``inventory_logs``, ``iter_items``, and two
inventories acquiring the same job at once."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from pybatchintory import (
    Batch,
    BatchStateError,
    InvalidArgumentError,
    Inventory,
    InventoryNotOpenError,
)
from tests.conftest import Db, job_options_of


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


def _json(value: Any) -> Any:
    """A JSON column read through a plain text query: a str on both backends' drivers."""
    return json.loads(value) if isinstance(value, str) else value


async def _batch_row(db: Db, batch_id: int) -> Any:
    rows = await db.rows(
        "SELECT status, attempt, processing_start, processing_end, result "
        "FROM {s}inventory WHERE id = :id",
        id=batch_id,
    )
    assert len(rows) == 1
    return rows[0]


async def _log_rows(db: Db, batch_id: int) -> list[Any]:
    return list(
        await db.rows(
            "SELECT attempt, status, processing_start, processing_end, logging "
            "FROM {s}inventory_logs WHERE id = :id ORDER BY attempt",
            id=batch_id,
        )
    )


async def _take(inv: Inventory, table: str, job: str = "job", **kwargs: Any) -> Batch:
    batch = await inv.acquire_batch(
        source_table=table, **job_options_of(inv), job_identifier=job, **kwargs
    )
    assert batch is not None
    return batch


def _explode(message: str) -> None:
    raise ValueError(message)


# -- success and error ---------------------------------------------------------------


async def test_success_records_status_end_time_and_result_in_both_tables(db: Db) -> None:
    table = await db.create_meta(weights=[1, 2, 3])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        running = await _batch_row(db, batch.id)
        assert running.status == "running" and running.processing_end is None
        assert [(r.attempt, r.status, r.processing_end) for r in await _log_rows(db, batch.id)] == [
            (1, "running", None)
        ]

        await batch.success({"rows_written": 3, "files": ["a", "b"], "ratio": 0.5})

        assert batch.status == "succeeded"
        assert batch.result == {"rows_written": 3, "files": ["a", "b"], "ratio": 0.5}
    row = await _batch_row(db, batch.id)
    assert (row.status, row.attempt) == ("succeeded", 1)
    assert row.processing_start is not None and row.processing_end is not None
    assert _json(row.result) == {"rows_written": 3, "files": ["a", "b"], "ratio": 0.5}
    (log,) = await _log_rows(db, batch.id)
    assert (log.attempt, log.status, log.logging) == (1, "succeeded", None)
    assert log.processing_end is not None


async def test_success_without_result_leaves_result_sql_null(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        await batch.success()
    row = await _batch_row(db, batch.id)
    assert row.status == "succeeded" and row.result is None


async def test_a_result_that_is_not_json_able_is_refused_and_the_batch_stays_running(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        with pytest.raises(InvalidArgumentError, match="JSON"):
            await batch.success({"when": object()})
        assert (await _batch_row(db, batch.id)).status == "running"
        await batch.success({"ok": True})
    assert _json((await _batch_row(db, batch.id)).result) == {"ok": True}


async def test_a_second_outcome_raises_and_changes_nothing(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        await batch.success({"n": 1})
        with pytest.raises(BatchStateError, match="already succeeded"):
            await batch.success({"n": 2})
        with pytest.raises(BatchStateError, match="already succeeded"):
            await batch.error("too late")
    row = await _batch_row(db, batch.id)
    assert row.status == "succeeded" and _json(row.result) == {"n": 1}
    assert [(r.status, r.logging) for r in await _log_rows(db, batch.id)] == [("succeeded", None)]


async def test_error_with_an_exception_logs_its_message_and_traceback(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        try:
            _explode("corrupt file s3://bucket/meta/0")
        except ValueError as exc:
            await batch.error(exc)
        assert batch.status == "failed"
        with pytest.raises(BatchStateError, match="already failed"):
            await batch.success()
    row = await _batch_row(db, batch.id)
    assert row.status == "failed" and row.processing_end is not None
    assert _json(row.result) is None
    (log,) = await _log_rows(db, batch.id)
    assert log.status == "failed" and log.processing_end is not None
    assert "Traceback (most recent call last)" in log.logging
    assert "_explode" in log.logging  # the frame that raised
    assert "ValueError: corrupt file s3://bucket/meta/0" in log.logging


async def test_error_with_a_text_logs_the_text_verbatim(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        await batch.error("upstream bucket unreachable; will retry")
    (log,) = await _log_rows(db, batch.id)
    assert (log.status, log.logging) == ("failed", "upstream bucket unreachable; will retry")


async def test_a_failed_batch_comes_back_with_the_same_range_and_a_new_log_row(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 6)
    async with db.inventory() as inv:
        first = await _take(inv, table, weight=3)
        await first.error("first try failed")
        again = await _take(inv, table, weight=3)
        assert (again.id, again.attempt) == (first.id, 2)
        assert (again.range_start, again.range_end) == (first.range_start, first.range_end)
        await again.success()
    assert (await _batch_row(db, first.id)).status == "succeeded"
    logs = await _log_rows(db, first.id)
    assert [(r.attempt, r.status, r.logging) for r in logs] == [
        (1, "failed", "first try failed"),
        (2, "succeeded", None),
    ]


# -- the context manager ---------------------------------------------------------------


async def test_async_with_records_success_on_a_normal_exit(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        async with batch as entered:
            assert entered is batch
            assert len(batch.items) == 2
        assert batch.status == "succeeded"
    assert (await _batch_row(db, batch.id)).status == "succeeded"
    assert [r.status for r in await _log_rows(db, batch.id)] == ["succeeded"]


async def test_async_with_records_the_failure_and_reraises_the_bodys_exception(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        boom = KeyError("missing column 'uri'")
        with pytest.raises(KeyError) as raised:
            async with batch:
                raise boom
        assert raised.value is boom
        assert batch.status == "failed"
    row = await _batch_row(db, batch.id)
    assert row.status == "failed" and row.processing_end is not None
    (log,) = await _log_rows(db, batch.id)
    assert log.status == "failed"
    assert "KeyError" in log.logging and "missing column 'uri'" in log.logging
    assert "Traceback" in log.logging


async def test_async_with_cannot_enter_a_finished_batch(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        await batch.success()
        with pytest.raises(BatchStateError):
            async with batch:
                pass


async def test_async_with_leaves_an_outcome_the_body_recorded_alone(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", max_items=1
        )
        assert batch is not None
        async with batch:
            await batch.success({"rows": 1})
        assert batch.status == "succeeded" and batch.result == {"rows": 1}

        failing = await inv.acquire_batch(
            source_table=table, **db.job_options, job_identifier="j", max_items=1
        )
        assert failing is not None
        with pytest.raises(ValueError, match="the body's own error"):
            async with failing:
                await failing.error("recorded by hand")
                raise ValueError("the body's own error")
    logs = await db.rows("SELECT status, logging FROM {s}inventory_logs ORDER BY id")
    assert [(row.status, row.logging) for row in logs] == [
        ("succeeded", None),
        ("failed", "recorded by hand"),
    ]


# -- process -----------------------------------------------------------------------


async def test_process_runs_a_sync_function_off_the_event_loop_and_returns_its_value(
    db: Db,
) -> None:
    table = await db.create_meta(weights=[1, 2])
    loop_thread = threading.get_ident()
    seen: dict[str, Any] = {}

    def work(items: list[dict[str, Any]], factor: int, *, offset: int) -> int:
        seen["thread"] = threading.get_ident()
        return sum(int(i["weight"]) for i in items) * factor + offset

    async with db.inventory() as inv:
        batch = await _take(inv, table)
        value = await batch.process(work, (10,), {"offset": 1})
        assert value == 31
        assert batch.status == "succeeded"
    assert seen["thread"] != loop_thread
    assert (await _batch_row(db, batch.id)).status == "succeeded"
    assert [r.status for r in await _log_rows(db, batch.id)] == ["succeeded"]


async def test_process_awaits_an_async_function(db: Db) -> None:
    table = await db.create_meta(weights=[1, 2])

    async def work(items: list[dict[str, Any]], suffix: str = "") -> list[str]:
        await asyncio.sleep(0)
        return [str(i["uri"]) + suffix for i in items]

    async with db.inventory() as inv:
        batch = await _take(inv, table)
        value = await batch.process(work, kwargs={"suffix": "!"})
        assert value == ["s3://bucket/meta/0!", "s3://bucket/meta/1!"]
    assert (await _batch_row(db, batch.id)).status == "succeeded"


async def test_process_records_a_sync_functions_failure_and_reraises(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await _take(inv, table)
        with pytest.raises(ValueError, match="bad parquet"):
            await batch.process(lambda items, message: _explode(message), ("bad parquet",))
        assert batch.status == "failed"
    (log,) = await _log_rows(db, batch.id)
    assert log.status == "failed"
    assert "ValueError: bad parquet" in log.logging and "_explode" in log.logging
    assert batch.items, "process passed the batch's items first"
    assert (await _batch_row(db, batch.id)).status == "failed"


async def test_process_records_an_async_functions_failure_and_reraises(db: Db) -> None:
    table = await db.create_meta(weights=[1])

    async def broken(items: list[dict[str, Any]]) -> None:
        raise RuntimeError("spark job lost its executors")

    async with db.inventory() as inv:
        batch = await _take(inv, table)
        with pytest.raises(RuntimeError, match="lost its executors"):
            await batch.process(broken)
    (log,) = await _log_rows(db, batch.id)
    assert log.status == "failed" and "RuntimeError: spark job lost its executors" in log.logging


# -- iter_items --------------------------------------------------------------------


async def test_iter_items_streams_the_rows_of_the_range_in_id_order(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 30)
    async with db.inventory() as inv:
        batch = await _take(inv, table, weight=23, load_items=False)
        assert (batch.range_start, batch.range_end) == (1, 23)
        streamed = [item async for item in batch.iter_items(chunk_size=5)]
        assert [i["id"] for i in streamed] == list(range(1, 24))
        assert streamed[0] == {"id": 1, "uri": "s3://bucket/meta/0", "weight": 1, "category": None}

        sizes = [len(chunk) async for chunk in batch.iter_item_chunks(chunk_size=5)]
        assert sizes == [5, 5, 5, 5, 3]
        await batch.success()


async def test_iter_items_gives_the_same_rows_as_items(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 12)
    async with db.inventory() as inv:
        batch = await _take(inv, table, max_items=10)
        assert [item async for item in batch.iter_items(chunk_size=3)] == batch.items
        await batch.success()


async def test_iter_items_respects_the_filter(db: Db) -> None:
    table = await db.create_meta(weights=[1] * 3, category="a")
    await db.add_items("meta", [1] * 3, category="b")
    await db.add_items("meta", [1] * 3, category="a")
    async with db.inventory() as inv:
        batch = await _take(inv, table, filter={"category": "a"}, load_items=False)
        assert (batch.range_start, batch.range_end, batch.item_count) == (1, 9, 6)
        ids = [item["id"] async for item in batch.iter_items(chunk_size=2)]
        assert ids == [1, 2, 3, 7, 8, 9]
        await batch.success()


async def test_items_without_loading_raise_a_helpful_error(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    async with db.inventory() as inv:
        batch = await _take(inv, table, load_items=False)
        with pytest.raises(BatchStateError, match=r"load_items=False.*iter_items\(\)"):
            batch.items  # noqa: B018
        with pytest.raises(InvalidArgumentError, match="chunk_size"):
            [item async for item in batch.iter_items(chunk_size=0)]
        await batch.success()


# -- concurrency --------------------------------------------------------------------


async def test_two_inventories_with_many_tasks_never_get_overlapping_ranges(db: Db) -> None:
    items = 240
    table = await db.create_meta(weights=[1] * items)
    taken: list[tuple[int, int, str]] = []

    async def worker(inv: Inventory, name: str) -> None:
        while True:
            batch = await inv.acquire_batch(
                source_table=table, **db.job_options, job_identifier="shared", weight=3
            )
            if batch is None:
                return
            taken.append((batch.range_start, batch.range_end, name))
            await asyncio.sleep(0)  # let the others interleave between acquire and finish
            await batch.success()

    async with db.inventory() as first, db.inventory() as second:
        await asyncio.gather(
            *(
                worker(inv, f"{label}{n}")
                for label, inv in (("a", first), ("b", second))
                for n in range(6)
            )
        )

    ranges = sorted((start, end) for start, end, _ in taken)
    covered = [i for start, end in ranges for i in range(start, end + 1)]
    assert covered == list(range(1, items + 1)), "ranges overlap or leave a gap"
    assert {name[0] for _, _, name in taken} == {"a", "b"}, "both inventories took part"
    stored = await db.rows(
        "SELECT range_start, range_end, status FROM {s}inventory ORDER BY range_start"
    )
    assert [(r.range_start, r.range_end) for r in stored] == ranges
    assert {r.status for r in stored} == {"succeeded"}


# -- a closed inventory --------------------------------------------------------------


async def test_a_closed_inventory_refuses_clearly_and_its_batches_cannot_reopen_it(db: Db) -> None:
    table = await db.create_meta(weights=[1, 1])
    inv = db.inventory()
    with pytest.raises(InventoryNotOpenError, match="async with Inventory"):
        await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
    await inv.open()
    batch = await inv.acquire_batch(
        source_table=table, **db.job_options, job_identifier="j", max_items=1
    )
    assert batch is not None
    await inv.close()
    with pytest.raises(InventoryNotOpenError, match="closed"):
        await batch.success()
    with pytest.raises(InventoryNotOpenError):
        await batch.heartbeat()
