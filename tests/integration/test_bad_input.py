"""Bad input on SQLite and PostgreSQL: each case is a clear error from
pybatchintory.exceptions naming what is wrong, and nothing is written to the inventory.
Injection attempts in names and filter values are inert."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

from pybatchintory import (
    InvalidArgumentError,
    InvalidFilterError,
    Inventory,
    SourceDataError,
    UnknownColumnError,
    UnknownTableError,
)
from tests.conftest import Db

BACKEND_TABLES = ("inventory_jobs", "inventory", "inventory_logs")


async def _counts(db: Db) -> dict[str, int]:
    # the names are the constants above, never input
    return {t: int(await db.scalar(f"SELECT count(*) FROM {{s}}{t}")) for t in BACKEND_TABLES}


async def _assert_nothing_written(db: Db) -> None:
    assert await _counts(db) == {t: 0 for t in BACKEND_TABLES}


@pytest.fixture
async def inv(db: Db) -> AsyncIterator[Inventory]:
    async with db.inventory() as inventory:
        yield inventory


@pytest.fixture
async def meta(db: Db) -> str:
    return await db.create_meta(weights=[1, 2, 3, 4], category="a")


async def _table_exists(db: Db, name: str) -> bool:
    def check(sync_conn: sa.Connection) -> bool:
        return sa.inspect(sync_conn).has_table(name, schema=db.schema)

    async with db.engine.connect() as conn:
        return await conn.run_sync(check)


# -- unknown tables and columns --------------------------------------------------------


async def test_unknown_table_names_the_table(db: Db, inv: Inventory, meta: str) -> None:
    with pytest.raises(UnknownTableError, match="'no_such_table' does not exist"):
        await inv.acquire_batch(source_table="no_such_table", job_identifier="j")
    await _assert_nothing_written(db)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"id_column": "item_id"}, "id column 'item_id'"),
        ({"weight_column": "size_bytes"}, "weight column 'size_bytes'"),
        ({"item_columns": ["id", "path"]}, "item column 'path'"),
        ({"filter": {"kind": "a"}}, "filter column 'kind'"),
    ],
)
async def test_unknown_column_names_the_column(
    db: Db, inv: Inventory, meta: str, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(UnknownColumnError, match=named):
        await inv.acquire_batch(source_table=meta, job_identifier="j", **kwargs)
    await _assert_nothing_written(db)


async def test_a_non_integer_id_column_is_refused(db: Db, inv: Inventory, meta: str) -> None:
    with pytest.raises(UnknownColumnError, match="id column 'uri'.*must be an integer"):
        await inv.acquire_batch(source_table=meta, job_identifier="j", id_column="uri")
    await _assert_nothing_written(db)


async def test_a_text_weight_column_is_refused(db: Db, inv: Inventory, meta: str) -> None:
    with pytest.raises(UnknownColumnError, match="weight column 'category'.*must be a number"):
        await inv.acquire_batch(source_table=meta, job_identifier="j", weight_column="category")
    await _assert_nothing_written(db)


# -- bad rows in the source ------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1, 2, None, 4], "item id 3 has a NULL weight"),
        ([1, -5, 3], "item id 2 has weight -5"),
    ],
)
async def test_a_bad_weight_names_the_id_and_writes_nothing(
    db: Db, inv: Inventory, weights: list[float | None], message: str
) -> None:
    table = await db.create_meta(weights=weights)
    with pytest.raises(SourceDataError, match=message):
        await inv.acquire_batch(source_table=table, job_identifier="j", weight=100)
    await _assert_nothing_written(db)


async def test_a_filter_can_exclude_the_bad_rows(db: Db, inv: Inventory) -> None:
    table = await db.create_meta(weights=[1, None, 3])
    batch = await inv.acquire_batch(
        source_table=table, job_identifier="j", filter=sa.column("weight").is_not(None)
    )
    assert batch is not None and (batch.item_count, batch.weight) == (2, 4)
    await batch.success()


# -- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id_start": 10, "id_end": 5}, r"id_start \(10\) is greater than id_end \(5\)"),
        ({"weight": 0}, "weight must be > 0"),
        ({"weight": -1.5}, "weight must be > 0"),
        ({"weight": "10"}, "weight must be a number"),
        ({"max_items": 0}, "max_items must be > 0"),
        ({"max_items": -3}, "max_items must be > 0"),
        ({"max_items": 2.5}, "max_items must be an integer"),
        ({"id_start": "1"}, "id_start must be an integer"),
        ({"job_identifier": ""}, "job_identifier must be a non-empty string"),
        ({"job_identifier": None}, "job_identifier is required"),
        ({"item_columns": "id"}, "item_columns must be a list"),
    ],
)
async def test_bad_arguments_raise_before_anything_is_written(
    db: Db, inv: Inventory, meta: str, kwargs: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {"source_table": meta, "job_identifier": "j", **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        await inv.acquire_batch(**arguments)
    await _assert_nothing_written(db)


async def test_acquire_batches_checks_its_arguments_at_the_call(
    db: Db, inv: Inventory, meta: str
) -> None:
    with pytest.raises(InvalidArgumentError, match="batch_count must be > 0"):
        inv.acquire_batches(source_table=meta, job_identifier="j", batch_count=0)
    with pytest.raises(InvalidArgumentError, match="weight must be > 0"):
        inv.acquire_batches(source_table=meta, job_identifier="j", weight=0)
    await _assert_nothing_written(db)


async def test_a_plain_string_filter_is_refused(db: Db, inv: Inventory, meta: str) -> None:
    with pytest.raises(InvalidFilterError, match=r"sqlalchemy\.text"):
        await inv.acquire_batch(source_table=meta, job_identifier="j", filter="category = 'a'")
    await _assert_nothing_written(db)


async def test_a_filter_of_another_type_is_refused(db: Db, inv: Inventory, meta: str) -> None:
    with pytest.raises(InvalidFilterError, match="int"):
        await inv.acquire_batch(source_table=meta, job_identifier="j", filter=42)
    await _assert_nothing_written(db)


# -- injection attempts ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["meta; DROP TABLE victim", '"meta"--', "meta' OR '1'='1", "meta`; DROP TABLE victim"]
)
async def test_injection_in_the_table_name_is_an_unknown_table(
    db: Db, inv: Inventory, meta: str, name: str
) -> None:
    await db.create_meta("victim", weights=[1])
    with pytest.raises(UnknownTableError, match="does not exist"):
        await inv.acquire_batch(source_table=name, job_identifier="j")
    await _assert_nothing_written(db)
    assert await _table_exists(db, "victim")
    assert await db.scalar("SELECT count(*) FROM {s}victim") == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"id_column": "id; DROP TABLE victim"},
        {"weight_column": 'weight" FROM victim; --'},
        {"item_columns": ["id", "uri FROM victim; DROP TABLE victim; --"]},
        {"filter": {"category = 'a' OR 1=1 --": "x"}},
    ],
)
async def test_injection_in_a_column_name_is_an_unknown_column(
    db: Db, inv: Inventory, meta: str, kwargs: dict[str, Any]
) -> None:
    await db.create_meta("victim", weights=[1])
    with pytest.raises(UnknownColumnError, match="does not exist"):
        await inv.acquire_batch(source_table=meta, job_identifier="j", **kwargs)
    await _assert_nothing_written(db)
    assert await _table_exists(db, "victim")


@pytest.mark.parametrize(
    "job", ["x'); DROP TABLE inventory; --", 'x"; DELETE FROM inventory_jobs; --', "Robert'); --"]
)
async def test_a_job_name_with_sql_in_it_is_an_ordinary_job_name(
    db: Db, inv: Inventory, meta: str, job: str
) -> None:
    batch = await inv.acquire_batch(source_table=meta, job_identifier=job, weight=3)
    assert batch is not None and batch.job_identifier == job
    await batch.success()
    again = await inv.acquire_batch(source_table=meta, job_identifier=job, weight=3)
    assert again is not None and again.range_start == batch.range_end + 1
    await again.success()
    stored = await db.rows("SELECT job_identifier, status FROM {s}inventory ORDER BY id")
    assert [tuple(r) for r in stored] == [(job, "succeeded"), (job, "succeeded")]
    assert [r[0] for r in await db.rows("SELECT job_identifier FROM {s}inventory_jobs")] == [job]
    assert await db.scalar("SELECT count(*) FROM {s}inventory_logs") == 2


@pytest.mark.parametrize(
    "value", ["a' OR '1'='1", ["a' OR '1'='1", "x'; DROP TABLE victim; --"], 'a" OR "1"="1']
)
async def test_a_filter_value_with_sql_in_it_matches_nothing(
    db: Db, inv: Inventory, meta: str, value: Any
) -> None:
    await db.create_meta("victim", weights=[1])
    batch = await inv.acquire_batch(
        source_table=meta, job_identifier="j", filter={"category": value}
    )
    assert batch is None
    assert await db.scalar("SELECT count(*) FROM {s}inventory") == 0
    assert await db.scalar("SELECT count(*) FROM {s}inventory_logs") == 0
    assert await _table_exists(db, "victim")
    # The same filter with an honest value does match: the filter itself works.
    honest = await inv.acquire_batch(
        source_table=meta, job_identifier="k", filter={"category": "a"}
    )
    assert honest is not None and honest.item_count == 4
    await honest.success()
