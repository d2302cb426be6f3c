"""The sync face on SQLite and PostgreSQL (asyncpg): the specification's calls verbatim,
``with batch``, ``process``, and one SyncInventory shared by several threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

import pybatchintory
from pybatchintory import (
    BatchStateError,
    InvalidArgumentError,
    InventoryNotOpenError,
    SyncBatch,
    SyncInventory,
    acquire_batch,
    acquire_batches,
    configure,
)
from tests.conftest import Db


async def _batches(db: Db, job: str) -> list[tuple[int, int, int, str]]:
    rows = await db.rows(
        "SELECT range_start, range_end, attempt, status FROM {s}inventory "
        "WHERE job_identifier = :job ORDER BY range_start",
        job=job,
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
async def spec_url(db: Db) -> AsyncIterator[str]:
    """A URL on which the specification's unqualified ``meta_data_raw_data`` resolves.

    SQLite: the test's file. PostgreSQL: a login role named like the test's schema, so
    that the default search path ("$user", public) finds that schema first, for the
    metadata table and the backend tables alike.
    """
    await db.create_meta("meta_data_raw_data", weights=[2] * 100)
    if db.schema is None:
        yield db.url
        return
    role = f"r_{uuid.uuid4().hex[:12]}"
    async with db.engine.begin() as conn:
        await conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        await conn.execute(sa.text(f'ALTER SCHEMA "{db.schema}" RENAME TO "{role}"'))
        await conn.execute(sa.text(f'GRANT USAGE, CREATE ON SCHEMA "{role}" TO "{role}"'))
        await conn.execute(sa.text(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{role}" TO "{role}"'))
    db.schema = role  # the fixture drops it by this name
    url = sa.make_url(db.url).set(username=role).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        configure()  # closes the default inventory's pool before the role goes
        engine = create_async_engine(db.url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f'DROP OWNED BY "{role}" CASCADE'))
                await conn.execute(sa.text(f'DROP ROLE "{role}"'))
        finally:
            await engine.dispose()


@pytest.fixture(autouse=True)
def reset_default_inventory() -> Iterator[None]:
    yield
    configure()


def _run(target: Any, *args: Any) -> None:
    """Run ``target`` in a thread of its own and re-raise what it raised."""
    errors: list[BaseException] = []

    def body() -> None:
        try:
            target(*args)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


# -- the specification, verbatim ---------------------------------------------------------


async def test_the_specifications_calls_run_verbatim(db: Db, spec_url: str) -> None:
    processed: list[list[int]] = []

    def process_func(items: list[dict[str, Any]]) -> None:
        processed.append([int(i["id"]) for i in items])

    def body() -> None:
        configure(inventory_url=spec_url)

        batch = acquire_batch(
            source_table="meta_data_raw_data", job_identifer="incremental_job", weight=10
        )
        process_func(batch.items)
        batch.success()

        batch = acquire_batch(
            source_table="meta_data_raw_data",
            job_identifer="backfill_job",
            id_start=10,
            id_end=50,
            weight=10,
        )
        assert (batch.range_start, batch.range_end) == (10, 14)
        batch.success()

        batches = acquire_batches(
            source_table="meta_data_raw_data",
            job_identifer="incremental_job",
            weight=10,
            batch_count=5,
        )
        for batch in batches:
            process_func(batch.items)
            batch.success()

        batch = acquire_batch(
            source_table="meta_data_raw_data", job_identifer="incremental_job", weight=10
        )
        try:
            process_func(batch.items)
            batch.success()
        except Exception as e:
            batch.error(e)
            raise

        batch = acquire_batch(
            source_table="meta_data_raw_data", job_identifer="incremental_job", weight=10
        )
        # "version 2": process_func(batch.items), success or error recorded
        assert batch.process(process_func) is None

    _run(body)  # in a thread of its own, as a plain script would: no event loop around

    assert processed == [list(range(start, start + 5)) for start in range(1, 40, 5)]
    incremental = await _batches(db, "incremental_job")
    assert incremental == [(s, s + 4, 1, "succeeded") for s in range(1, 40, 5)]
    assert await _batches(db, "backfill_job") == [(10, 14, 1, "succeeded")]


async def test_the_specifications_error_pattern_records_the_failure_and_reraises(
    db: Db, spec_url: str
) -> None:
    def process_func(items: list[dict[str, Any]]) -> None:
        raise RuntimeError(f"cannot read {items[0]['uri']}")

    def body() -> None:
        configure(inventory_url=spec_url)
        batch = acquire_batch(
            source_table="meta_data_raw_data", job_identifer="fragile_job", weight=10
        )
        try:
            process_func(batch.items)
            batch.success()
        except Exception as e:
            batch.error(e)
            raise

    with pytest.raises(RuntimeError, match="cannot read s3://bucket/meta_data_raw_data/0"):
        _run(body)
    assert await _batches(db, "fragile_job") == [(1, 5, 1, "failed")]
    log = await db.scalar("SELECT logging FROM {s}inventory_logs")
    assert (
        "Traceback" in log and "RuntimeError: cannot read s3://bucket/meta_data_raw_data/0" in log
    )


async def test_the_default_inventory_follows_configure(db: Db, spec_url: str) -> None:
    def body() -> None:
        configure(inventory_url=spec_url)
        first = pybatchintory.default_inventory()
        assert first is pybatchintory.default_inventory()
        batch = acquire_batch(source_table="meta_data_raw_data", job_identifier="j", max_items=1)
        batch.success()
        configure(inventory_url=spec_url)
        assert pybatchintory.default_inventory() is not first
        # the new default sees what the old one recorded
        batch = acquire_batch(source_table="meta_data_raw_data", job_identifier="j", max_items=1)
        assert batch.range_start == 2
        batch.success()

    _run(body)


# -- SyncInventory, SyncBatch ----------------------------------------------------------------


@pytest.fixture
async def sync_inventory(db: Db) -> AsyncIterator[SyncInventory]:
    inventory = SyncInventory(**db.settings())
    try:
        yield inventory
    finally:
        inventory.close()


async def test_sync_with_batch_records_success_or_failure_and_reraises(
    db: Db, sync_inventory: SyncInventory
) -> None:
    table = await db.create_meta(weights=[1] * 4)

    def body() -> None:
        ok = sync_inventory.acquire_batch(source_table=table, job_identifier="j", max_items=2)
        assert ok is not None
        with ok as entered:
            assert entered is ok and len(ok.items) == 2
        assert ok.status == "succeeded"
        bad = sync_inventory.acquire_batch(source_table=table, job_identifier="j", max_items=2)
        assert bad is not None
        with pytest.raises(ZeroDivisionError):
            with bad:
                1 / 0  # noqa: B018
        assert bad.status == "failed"
        with pytest.raises(BatchStateError):
            bad.success()

    _run(body)
    assert await _batches(db, "j") == [(1, 2, 1, "succeeded"), (3, 4, 1, "failed")]
    logs = await db.rows("SELECT attempt, status, logging FROM {s}inventory_logs ORDER BY id")
    assert [(r.attempt, r.status) for r in logs] == [(1, "succeeded"), (1, "failed")]
    assert "ZeroDivisionError" in logs[1].logging


async def test_sync_process_runs_sync_and_async_functions(
    db: Db, sync_inventory: SyncInventory
) -> None:
    table = await db.create_meta(weights=[1] * 6)
    threads: list[int] = []

    def total(items: list[dict[str, Any]], scale: int, *, plus: int) -> int:
        threads.append(threading.get_ident())
        return sum(int(i["weight"]) for i in items) * scale + plus

    async def count(items: list[dict[str, Any]]) -> int:
        return len(items)

    def failing(items: list[dict[str, Any]]) -> None:
        raise OSError("disk full")

    def body() -> None:
        threads.append(threading.get_ident())
        first = sync_inventory.acquire_batch(source_table=table, job_identifier="j", max_items=2)
        assert first is not None and first.process(total, [10], {"plus": 3}) == 23
        second = sync_inventory.acquire_batch(source_table=table, job_identifier="j", max_items=2)
        assert second is not None and second.process(count) == 2
        third = sync_inventory.acquire_batch(source_table=table, job_identifier="j", max_items=2)
        assert third is not None
        with pytest.raises(OSError, match="disk full"):
            third.process(failing)

    _run(body)
    assert threads[0] == threads[1], "a sync func runs in the caller's thread"
    assert [b[3] for b in await _batches(db, "j")] == ["succeeded", "succeeded", "failed"]
    assert "OSError: disk full" in await db.scalar(
        "SELECT logging FROM {s}inventory_logs WHERE status = 'failed'"
    )


async def test_sync_iter_items_and_items_without_loading(
    db: Db, sync_inventory: SyncInventory
) -> None:
    table = await db.create_meta(weights=[1] * 9)

    def body() -> None:
        batch = sync_inventory.acquire_batch(
            source_table=table, job_identifier="j", load_items=False
        )
        assert batch is not None
        with pytest.raises(BatchStateError, match="iter_items"):
            batch.items  # noqa: B018
        assert [i["id"] for i in batch.iter_items(chunk_size=4)] == list(range(1, 10))
        # an iteration abandoned half way closes its cursor and leaves the batch usable
        partial = batch.iter_items(chunk_size=2)
        assert next(partial)["id"] == 1
        partial.close()
        batch.success()

    _run(body)
    assert await _batches(db, "j") == [(1, 9, 1, "succeeded")]


async def test_sync_bad_input_raises_at_the_call(db: Db, sync_inventory: SyncInventory) -> None:
    table = await db.create_meta(weights=[1])

    def body() -> None:
        with pytest.raises(InvalidArgumentError, match="weight must be > 0"):
            sync_inventory.acquire_batch(source_table=table, job_identifier="j", weight=0)
        with pytest.raises(InvalidArgumentError, match="batch_count"):
            sync_inventory.acquire_batches(source_table=table, job_identifier="j", batch_count=-1)

    _run(body)
    assert await db.scalar("SELECT count(*) FROM {s}inventory_jobs") == 0


async def test_a_batch_can_be_finished_from_another_thread(
    db: Db, sync_inventory: SyncInventory
) -> None:
    table = await db.create_meta(weights=[1] * 4)
    handed_over: list[SyncBatch] = []

    def acquire() -> None:
        for _ in range(2):
            batch = sync_inventory.acquire_batch(
                source_table=table, job_identifier="j", max_items=2
            )
            assert batch is not None
            handed_over.append(batch)

    _run(acquire)
    _run(lambda: handed_over[0].success({"finished_by": "another thread"}))
    _run(lambda: handed_over[1].error("failed in another thread"))
    assert handed_over[0].status == "succeeded" and handed_over[1].status == "failed"
    assert await _batches(db, "j") == [(1, 2, 1, "succeeded"), (3, 4, 1, "failed")]


async def test_one_sync_inventory_shared_by_many_threads_hands_out_disjoint_ranges(
    db: Db, sync_inventory: SyncInventory
) -> None:
    items = 180
    table = await db.create_meta(weights=[1] * items)
    taken: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def worker() -> None:
        while (
            batch := sync_inventory.acquire_batch(
                source_table=table, job_identifier="shared", weight=3
            )
        ) is not None:
            with lock:
                taken.append((batch.range_start, batch.range_end, threading.get_ident()))
            if batch.range_start % 2:
                batch.success()
            else:
                with batch:
                    assert len(batch.items) == batch.item_count

    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    ranges = sorted((start, end) for start, end, _ in taken)
    assert [i for start, end in ranges for i in range(start, end + 1)] == list(range(1, items + 1))
    assert len({ident for _, _, ident in taken}) > 1, "several threads took batches"
    stored = await _batches(db, "shared")
    assert [(s, e) for s, e, _, _ in stored] == ranges
    assert {status for *_, status in stored} == {"succeeded"}


def test_a_sync_batch_of_a_closed_sync_inventory_raises_our_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'closed.sqlite3'}"
    with SyncInventory(url) as inv:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'closed.sqlite3'}")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE meta (id INTEGER PRIMARY KEY, weight REAL)"))
            conn.execute(sa.text("INSERT INTO meta (weight) VALUES (1)"))
        engine.dispose()
        batch = inv.acquire_batch(source_table="meta", job_identifier="j")
        assert batch is not None
    with pytest.raises(InventoryNotOpenError, match="SyncInventory was closed"):
        batch.success()
