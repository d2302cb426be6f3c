"""Bad input never reaches the database (issue 13, item 10): one table of wrong inputs,
each answered by a PyBatchintoryError that names the argument, and nothing written."""

from __future__ import annotations

import math
from typing import Any

import pytest
import sqlalchemy as sa

from pybatchintory import Inventory, PyBatchintoryError
from tests.conftest import Db


@pytest.fixture
def db(meta_db: Db) -> Db:
    """Every test here reads a metadata table: it runs on MySQL/MariaDB too."""
    return meta_db


ACQUIRE: list[tuple[str, dict[str, Any], str]] = [
    ("zero weight", {"weight": 0}, "weight"),
    ("negative weight", {"weight": -1}, "weight"),
    ("NaN weight", {"weight": math.nan}, "weight"),
    ("text weight", {"weight": "10"}, "weight"),
    ("boolean weight", {"weight": True}, "weight"),
    ("weight beyond a float", {"weight": 10**400}, "weight"),
    ("zero max_items", {"max_items": 0}, "max_items"),
    ("fractional max_items", {"max_items": 3.5}, "max_items"),
    ("max_items beyond int64", {"max_items": 2**70}, "max_items"),
    ("fractional id_start", {"id_start": 1.5}, "id_start"),
    ("id_start beyond int64", {"id_start": 2**64}, "id_start"),
    ("id_end below int64", {"id_end": -(2**64)}, "id_end"),
    ("reversed window", {"id_start": 10, "id_end": 5}, "id_start"),
    ("plain string filter", {"filter": "category = 'a'"}, "filter"),
    ("unorderable filter set", {"filter": {"category": {1, "a"}}}, "filter values for 'category'"),
    ("mapping as filter value", {"filter": {"category": {"x": 1}}}, "filter value for 'category'"),
    ("unknown filter column", {"filter": {"nope": 1}}, "filter column 'nope'"),
    ("empty IN filter", {"filter": {"category": []}}, "filter values for 'category'"),
    ("unknown id column", {"id_column": "nope"}, "id column 'nope'"),
    ("unknown weight column", {"weight_column": "nope"}, "weight column 'nope'"),
    ("text id column", {"id_column": "uri"}, "id column 'uri'"),
    ("item_columns as a string", {"item_columns": "id"}, "item_columns"),
    ("empty item_columns", {"item_columns": []}, "item_columns"),
    ("unknown item column", {"item_columns": ["nope"]}, "item column 'nope'"),
    ("zero max_attempts", {"max_attempts": 0}, "max_attempts"),
    ("huge max_attempts", {"max_attempts": 2**40}, "max_attempts"),
    ("zero lease", {"lease_seconds": 0}, "lease_seconds"),
    ("infinite lease", {"lease_seconds": math.inf}, "lease_seconds"),
    ("lease of 30,000 years", {"lease_seconds": 1e12}, "lease_seconds"),
    ("negative lease", {"lease_seconds": -5}, "lease_seconds"),
    ("settle column alone", {"settle_column": "created"}, "settle_column"),
    ("settle seconds alone", {"settle_seconds": 5}, "settle_column"),
    (
        "unknown settle column",
        {"settle_column": "nope", "settle_seconds": 5},
        "settle column 'nope'",
    ),
    ("empty job name", {"job_identifier": ""}, "job_identifier"),
    ("long job name", {"job_identifier": "x" * 256}, "job_identifier"),
    ("job name with a newline", {"job_identifier": "a\nb"}, "job_identifier"),
    ("job name with a lone surrogate", {"job_identifier": "a\ud800"}, "job_identifier"),
    ("numeric job name", {"job_identifier": 12}, "job_identifier"),
    ("two names for the job", {"job_identifier": "a", "job_identifer": "b"}, "job_identifer"),
    ("no source", {"source_table": None}, "source"),
    ("unknown table", {"source_table": "no_such_table"}, "no_such_table"),
    ("table with two dots", {"source_table": "a.b.c"}, "source_table"),
    ("numeric table", {"source_table": 123}, "source table"),
    ("unknown upstream job", {"source_table": None, "source_job": "nojob"}, "nojob"),
    ("a job reading itself", {"source_table": None, "source_job": "j"}, "its own batches"),
    (
        "table columns for a source job",
        {"source_table": None, "source_job": "up", "weight_column": "w"},
        "weight_column",
    ),
    ("misspelled keyword", {"wieght": 10}, "wieght"),
    ("unknown horizon mode", {"horizon": "fast"}, "horizon"),
    ("unknown weight unit", {"weight_unit": "MB"}, "weight_unit"),
]

CLIENT: list[tuple[str, dict[str, Any], str]] = [
    ("worker name over 255 characters", {"worker": "w" * 300}, "worker"),
    ("empty pool", {"pool_size": 0}, "pool_size"),
    ("negative default lease", {"lease_seconds": -1}, "lease_seconds"),
    ("unknown isolation level", {"isolation_level": "DIRTY READ"}, "isolation_level"),
    ("unsupported database", {"inventory_url": "oracle://u@h/db"}, "oracle"),
    ("port beyond TCP", {"inventory_url": "postgresql://u@h:70000/db"}, "port 70000"),
    ("schema name with a dash", {"schema_name": "bad-name"}, "schema_name"),
    ("misspelled setting", {"lease_second": 5}, "lease_second"),
]


async def _nothing_written(db: Db) -> None:
    async with db.engine.connect() as conn:
        names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names(schema=db.schema))
    if "inventory_jobs" in names:
        assert await db.scalar("SELECT count(*) FROM {s}inventory_jobs") == 0
        assert await db.scalar("SELECT count(*) FROM {s}inventory") == 0


@pytest.mark.parametrize(("what", "arguments", "named"), ACQUIRE, ids=[c[0] for c in ACQUIRE])
async def test_a_bad_acquisition_argument_is_named_and_nothing_is_written(
    db: Db, what: str, arguments: dict[str, Any], named: str
) -> None:
    table = await db.create_meta(weights=[1] * 3)
    call = {"source_table": table, "job_identifier": "j", **arguments}
    async with db.inventory() as inv:
        with pytest.raises(PyBatchintoryError) as raised:
            await inv.acquire_batch(**call)
    assert named in str(raised.value), (what, str(raised.value))
    await _nothing_written(db)


async def test_a_zero_batch_count_is_named(db: Db) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        with pytest.raises(PyBatchintoryError, match="batch_count"):
            inv.acquire_batches(
                source_table=table, **db.job_options, job_identifier="j", batch_count=0
            )
    await _nothing_written(db)


@pytest.mark.parametrize(("what", "settings", "named"), CLIENT, ids=[c[0] for c in CLIENT])
def test_a_bad_setting_is_named_before_anything_opens(
    what: str, settings: dict[str, Any], named: str
) -> None:
    with pytest.raises(PyBatchintoryError) as raised:
        Inventory(**{"inventory_url": "sqlite:///never-created.sqlite3", **settings})
    assert named in str(raised.value), (what, str(raised.value))


@pytest.mark.parametrize(
    ("result", "named"),
    [
        ({"x": math.nan}, "not JSON-able"),
        ([1, 2], "result must be a mapping"),
        ({"x": object()}, "not JSON-able"),
    ],
)
async def test_a_bad_result_is_named_and_the_batch_stays_running(
    db: Db, result: Any, named: str
) -> None:
    table = await db.create_meta(weights=[1])
    async with db.inventory() as inv:
        batch = await inv.acquire_batch(source_table=table, **db.job_options, job_identifier="j")
        assert batch is not None
        with pytest.raises(PyBatchintoryError, match=named):
            await batch.success(result)
        assert batch.status == "running"
    assert await db.scalar("SELECT status FROM {s}inventory") == "running"
